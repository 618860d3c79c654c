"""The journal reader: whole records in order, a torn tail recovered, corruption refused."""

import json
import logging

import pytest

from server.journal import read_journal, read_records
from xdream.errors import SessionError


def lines(n, start=0):
    return b"".join(json.dumps({"seq": i, "t": 0.0, "kind": "block"}).encode() + b"\n"
                    for i in range(start, start + n))


def write(folder, data: bytes):
    (folder / "journal.jsonl").write_bytes(data)
    return folder


def test_whole_journal_reads_back(tmp_path):
    records = read_records(write(tmp_path, lines(5)))
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]


def test_torn_last_record_is_dropped_with_a_message(tmp_path, caplog):
    whole = lines(4)
    with caplog.at_level(logging.WARNING):
        read = read_journal(write(tmp_path, whole + b'{"seq": 4, "t": 0.0, "ki'))
    assert [r["seq"] for r in read.records] == [0, 1, 2, 3]
    assert read.good_bytes == len(whole) and read.dropped_bytes == 24
    assert "torn" in caplog.text and "24 bytes" in caplog.text


def test_torn_tail_of_nul_bytes_is_dropped(tmp_path):
    read = read_journal(write(tmp_path, lines(2) + b"\x00" * 300))
    assert len(read.records) == 2 and read.dropped_bytes == 300


def test_last_record_whole_but_without_its_newline_is_kept(tmp_path):
    data = lines(3)[:-1]
    read = read_journal(write(tmp_path, data))
    assert len(read.records) == 3 and read.dropped_bytes == 0 and read.needs_newline


def test_bad_record_in_the_middle_is_corruption(tmp_path):
    with pytest.raises(SessionError, match="line 3.*corrupt in the middle"):
        read_records(write(tmp_path, lines(2) + b"not json\n" + lines(1, start=2)))


def test_a_gap_in_seq_is_refused(tmp_path):
    with pytest.raises(SessionError, match="seq 3, expected 2"):
        read_records(write(tmp_path, lines(2) + lines(1, start=3)))


def test_no_journal_is_a_clear_error(tmp_path):
    with pytest.raises(SessionError, match="no journal"):
        read_records(tmp_path)
