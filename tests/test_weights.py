"""`xdream weights` and resolve_weights, against a local HTTP server on 127.0.0.1.

Every test passes its own registry: nothing here touches the real hosts."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from server.generators import weights as W
from xdream.cli.weights import run as cli_weights
from xdream.errors import ConfigError, GeneratorError

REPO = Path(__file__).resolve().parents[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):   # keep pytest output clean
        pass


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port():
    """A 127.0.0.1 port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port


def entry(name="fc6", data=b"", url="", sha="auto", size=None) -> W.WeightsEntry:
    sha = hashlib.sha256(data).hexdigest() if sha == "auto" else sha
    return W.WeightsEntry(name, f"upconvGAN_{name}.pt", sha, size, "tiny", (url,), "upconvgan",
                          pages=("https://example.invalid/page",),
                          by_hand=("https://example.invalid/by-hand",))


def publish(root: Path, name: str, data: bytes) -> None:
    (root / f"upconvGAN_{name}.pt").write_bytes(data)


def args(folder, download=None, as_json=False):
    return argparse.Namespace(dir=str(folder), download=download, json=as_json)


PAYLOAD = os.urandom(3 * W.CHUNK + 12345)   # several chunks, not a whole number of them


# ------------------------------------------------------------------ registry

def test_registry_covers_the_eight_generators_with_sane_rows():
    assert list(W.REGISTRY) == ["norm1", "norm2", "conv3", "conv4", "pool5", "fc6", "fc7", "fc8"]
    for name, e in W.REGISTRY.items():
        assert e.filename == f"upconvGAN_{name}.pt" and e.convention in W.CONVENTIONS
        assert e.urls and all(u.startswith("https://") for u in e.urls)
        assert e.sha256 is None or (len(e.sha256) == 64 and int(e.sha256, 16) >= 0)
    assert W.REGISTRY["pool5"].expected == W.NOT_PUBLISHED


def test_weights_module_does_not_import_torch():
    code = "import sys, server.generators.weights; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# -------------------------------------------------------------------- folder

def test_folder_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(W.ENV_FOLDER, raising=False)
    assert W.weights_folder(None) == tmp_path / "xdg" / "xdream" / "weights"
    monkeypatch.setenv(W.ENV_FOLDER, str(tmp_path / "env"))
    assert W.weights_folder(None) == tmp_path / "env"
    assert W.weights_folder(str(tmp_path / "dir")) == tmp_path / "dir"
    assert W.default_folder({"HOME": "/x"}) == Path.home() / ".cache" / "xdream" / "weights"


# ------------------------------------------------------------------ download

def test_download_verifies_checksum_and_places_the_file(served, tmp_path, capsys):
    root, base = served
    publish(root, "fc6", PAYLOAD)
    reg = {"fc6": entry(data=PAYLOAD, url=f"{base}/upconvGAN_fc6.pt", size=len(PAYLOAD))}
    folder = tmp_path / "weights"          # does not exist yet: download makes it
    assert cli_weights(args(folder, ["fc6"]), registry=reg) == 0
    assert (folder / "upconvGAN_fc6.pt").read_bytes() == PAYLOAD
    assert not (folder / "upconvGAN_fc6.pt.part").exists()
    out = capsys.readouterr().out
    assert "downloaded" in out and "sha256 verified" in out
    assert "verified" in out.splitlines()[-1]
    # a second run finds it and downloads nothing
    assert cli_weights(args(folder, ["all"]), registry=reg) == 0
    assert "already present" in capsys.readouterr().out


def test_checksum_mismatch_removes_the_part_file_and_fails(served, tmp_path, capsys):
    root, base = served
    publish(root, "fc6", PAYLOAD)
    wrong = hashlib.sha256(b"something else").hexdigest()
    reg = {"fc6": entry(url=f"{base}/upconvGAN_fc6.pt", sha=wrong)}
    assert cli_weights(args(tmp_path, ["fc6"]), registry=reg) == 1
    assert not (tmp_path / "upconvGAN_fc6.pt").exists()
    assert not (tmp_path / "upconvGAN_fc6.pt.part").exists()
    out = capsys.readouterr().out
    assert "FAILED (checksum-mismatch)" in out
    assert wrong in out and hashlib.sha256(PAYLOAD).hexdigest() in out   # both checksums


def test_unreachable_host_says_which_file_goes_where(closed_port, tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port}/upconvGAN_fc6.pt"
    reg = {"fc6": entry(data=PAYLOAD, url=url)}
    assert cli_weights(args(tmp_path, ["fc6"]), registry=reg) == 1
    out = capsys.readouterr().out
    assert "FAILED (unreachable)" in out and "cannot reach 127.0.0.1" in out
    assert f"put the file here:  {tmp_path / 'upconvGAN_fc6.pt'}" in out
    assert f"fetch it by hand from:  {url}" in out
    assert hashlib.sha256(PAYLOAD).hexdigest() in out
    assert not list(tmp_path.glob("*.part"))


def test_a_host_that_never_answers_times_out(tmp_path):
    with socket.socket() as listener:       # accepts connections (backlog), never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/upconvGAN_fc6.pt"
        result = W.download(entry(data=PAYLOAD, url=url), tmp_path, timeout=0.3)
    assert result["status"] == "unreachable" and not result["ok"]
    assert result["fetch_by_hand"]["put"] == str(tmp_path / "upconvGAN_fc6.pt")
    assert not list(tmp_path.glob("*.part"))


def test_http_404_fails_with_the_status_and_the_way_out(served, tmp_path):
    _, base = served
    result = W.download(entry(data=PAYLOAD, url=f"{base}/nothing.pt"), tmp_path)
    assert result["status"] == "failed" and "HTTP 404" in result["errors"][0]
    assert result["fetch_by_hand"]["from"] == [f"{base}/nothing.pt", "https://example.invalid/page"]


def test_falls_back_to_the_next_url(served, tmp_path, closed_port):
    root, base = served
    publish(root, "fc6", PAYLOAD)
    e = entry(data=PAYLOAD)
    e = W.WeightsEntry(e.name, e.filename, e.sha256, None, "", (f"http://127.0.0.1:{closed_port}/x.pt",
                                                                 f"{base}/upconvGAN_fc6.pt"), "upconvgan")
    result = W.download(e, tmp_path)
    assert result["status"] == "downloaded" and result["url"].startswith(base)


def test_size_mismatch_is_caught_when_the_size_is_known(served, tmp_path):
    root, base = served
    publish(root, "fc6", PAYLOAD)
    e = entry(url=f"{base}/upconvGAN_fc6.pt", sha=None, size=len(PAYLOAD) + 1)
    assert W.download(e, tmp_path)["status"] == "size-mismatch"
    assert not list(tmp_path.glob("upconvGAN_fc6.pt*"))


def test_unpublished_checksum_is_recorded_on_first_download(served, tmp_path, capsys):
    root, base = served
    publish(root, "pool5", PAYLOAD)
    reg = {"pool5": entry("pool5", url=f"{base}/upconvGAN_pool5.pt", sha=None)}
    cli_weights(args(tmp_path), registry=reg)
    assert W.NOT_PUBLISHED in capsys.readouterr().out
    assert cli_weights(args(tmp_path, ["pool5"]), registry=reg) == 0
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert W.recorded_sha256(tmp_path, reg["pool5"]) == sha
    assert "recorded (none published)" in capsys.readouterr().out
    # later corruption is caught against the recorded checksum
    (tmp_path / "upconvGAN_pool5.pt").write_bytes(PAYLOAD[:-1] + b"\0")
    assert cli_weights(args(tmp_path), registry=reg) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_unknown_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown generator"):
        W.download_many(["fc9"], tmp_path, {"fc6": entry()})


# ------------------------------------------------------------------- listing

def test_listing_shows_present_verified_and_mismatch(tmp_path, capsys):
    good, bad = b"good weights", b"bad weights"
    reg = {"fc6": entry("fc6", data=good), "fc7": entry("fc7", data=good), "fc8": entry("fc8", data=good)}
    (tmp_path / "upconvGAN_fc6.pt").write_bytes(good)
    (tmp_path / "upconvGAN_fc7.pt").write_bytes(bad)
    assert cli_weights(args(tmp_path, as_json=True), registry=reg) == 1   # a mismatch fails
    doc = json.loads(capsys.readouterr().out)
    assert doc["folder"] == str(tmp_path)
    rows = {r["name"]: r for r in doc["generators"]}
    assert rows["fc6"]["present"] and rows["fc6"]["verified"] is True
    assert rows["fc7"]["present"] and rows["fc7"]["verified"] is False
    assert rows["fc7"]["sha256"] == hashlib.sha256(bad).hexdigest()
    assert not rows["fc8"]["present"] and rows["fc8"]["verified"] is None
    cli_weights(args(tmp_path), registry=reg)
    text = capsys.readouterr().out
    assert "verified" in text and "MISMATCH" in text and "missing" in text


def test_cli_json_listing_in_a_subprocess(tmp_path):
    (tmp_path / "upconvGAN_fc6.pt").write_bytes(b"not the real file")
    proc = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "xdream.cli", "weights",
                           "--dir", str(tmp_path), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout)
    rows = {r["name"]: r for r in doc["generators"]}
    assert list(rows) == list(W.REGISTRY) and doc["folder"] == str(tmp_path)
    assert rows["fc6"]["present"] and rows["fc6"]["verified"] is False
    assert proc.returncode == 1          # the planted fc6 fails its checksum
    assert rows["pool5"]["expected_sha256"] == W.NOT_PUBLISHED
    assert not rows["norm1"]["present"]


# ------------------------------------------------------------ resolve_weights

def test_resolve_by_path_and_by_name(tmp_path):
    reg = {"fc6": entry()}
    own = tmp_path / "elsewhere.pt"
    own.write_bytes(b"x")
    assert W.resolve_weights(str(own), tmp_path, reg) == own
    (tmp_path / "upconvGAN_fc6.pt").write_bytes(b"x")
    assert W.resolve_weights("fc6", tmp_path, reg) == tmp_path / "upconvGAN_fc6.pt"
    assert W.resolve_weights("deepsim-fc6", tmp_path, reg) == tmp_path / "upconvGAN_fc6.pt"


def test_resolve_uses_the_env_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(W.ENV_FOLDER, str(tmp_path))
    (tmp_path / "upconvGAN_fc6.pt").write_bytes(b"x")
    assert W.resolve_weights("fc6", registry={"fc6": entry()}) == tmp_path / "upconvGAN_fc6.pt"


def test_resolve_missing_name_says_what_where_and_how(tmp_path):
    with pytest.raises(GeneratorError) as err:
        W.resolve_weights("fc6", tmp_path, {"fc6": entry()})
    msg = str(err.value)
    assert "upconvGAN_fc6.pt" in msg and str(tmp_path) in msg
    assert "xdream weights --download fc6" in msg


def test_resolve_neither_file_nor_name(tmp_path):
    with pytest.raises(GeneratorError, match="no such file, and not a known generator"):
        W.resolve_weights(str(tmp_path / "missing.pt"), tmp_path, {"fc6": entry()})


def test_a_wrong_file_at_one_mirror_falls_through_to_the_next(served, tmp_path):
    root, base = served
    publish(root, "fc6", PAYLOAD)
    (root / "stale.pt").write_bytes(b"an old upload")
    e = entry(data=PAYLOAD)
    e = W.WeightsEntry(e.name, e.filename, e.sha256, None, "", (f"{base}/stale.pt", f"{base}/upconvGAN_fc6.pt"),
                       "upconvgan")
    result = W.download(e, tmp_path / "w")
    assert result["status"] == "downloaded" and result["url"].endswith("upconvGAN_fc6.pt")
    assert (tmp_path / "w" / "upconvGAN_fc6.pt").read_bytes() == PAYLOAD
