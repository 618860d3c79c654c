"""The shared file helpers (xdream.files): atomic writes, durable renames, new names."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from xdream import files


def test_write_atomic_replaces_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_bytes(b"old")
    with mock.patch("os.fsync", wraps=os.fsync) as fsync:
        files.write_atomic(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and fsync.call_count == 2      # the file, then its folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path):
    path = tmp_path / "codes.npz"
    path.write_bytes(b"old")

    def half(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.write_atomic(path, half)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["codes.npz"]


def test_the_temp_file_is_hidden_and_per_process(tmp_path):
    tmp = files.temp_path(tmp_path / "block001.bmp")
    assert tmp.parent == tmp_path and tmp.name.startswith(".block001.bmp.") and str(os.getpid()) in tmp.name


def test_not_durable_skips_fsync(tmp_path):
    with mock.patch("os.fsync") as fsync:
        files.write_atomic(tmp_path / "a", lambda f: f.write(b"x"), durable=False)
    assert fsync.call_count == 0 and (tmp_path / "a").read_bytes() == b"x"


def test_publish_moves_a_finished_file_into_place(tmp_path):
    part, final = tmp_path / "w.pt.part", tmp_path / "w.pt"
    part.write_bytes(b"weights")
    with mock.patch("os.fsync", wraps=os.fsync) as fsync:
        files.publish(part, final)
    assert final.read_bytes() == b"weights" and not part.exists() and fsync.call_count == 2


def test_unused_path_adds_a_number_when_taken(tmp_path):
    assert files.unused_path(tmp_path, "run-20250101-120000") == tmp_path / "run-20250101-120000"
    (tmp_path / "run-20250101-120000").mkdir()
    assert files.unused_path(tmp_path, "run-20250101-120000") == tmp_path / "run-20250101-120000-2"
    (tmp_path / "log.jsonl").touch()
    (tmp_path / "log-2.jsonl").touch()
    assert files.unused_path(tmp_path, "log", ".jsonl") == tmp_path / "log-3.jsonl"


def test_time_stamp_is_sortable_local_time():
    import time
    t = time.mktime((2025, 1, 31, 14, 25, 2, 0, 0, -1))
    assert files.time_stamp(t) == "20250131-142502"
