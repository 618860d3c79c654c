"""Published DeePSiM generator weights: where they live, how to check and fetch them.

`xdream weights` lists the known generators, says which files are in the
weights folder and whether their SHA-256 matches the published one, and
downloads missing files (`--download NAME... | all`).  `resolve_weights`
turns a config's `generator.weights` ("fc6", or a path) into a file.

The weights folder is `--dir`, else $XDREAM_WEIGHTS, else
$XDG_CACHE_HOME/xdream/weights (~/.cache/xdream/weights).

Hashing and HTTP only: this module never imports torch, so a PC without it
can still fetch and check the files.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from xdream.errors import ConfigError, GeneratorError
from xdream.files import publish, sha256_file, write_atomic

log = logging.getLogger(__name__)

ENV_FOLDER = "XDREAM_WEIGHTS"
CHUNK = 1 << 20              # 1 MiB: hashing and download chunks
TIMEOUT_S = 30.0             # per connect and per read, not for the whole file
NOT_PUBLISHED = "sha256 not published: recorded on first download"
USER_AGENT = "xdream-lab (urllib)"

# State-dict key conventions.  The same DeePSiM nets circulate under
# different key names; a file is only useful with a loader for its convention.
CONVENTIONS = {
    # Ponce lab's port (Binxu Wang), GAN_utils.upconvGAN(name).G: an
    # nn.Sequential keyed by the caffe prototxt layer names -- defc7, defc6,
    # defc5, deconv5, conv5_1, ..., deconv0 for fc6/fc7/fc8 (every deconv with
    # a bias), Rconv6/Rconv7/Rconv8 + deconv*/conv*_1 for pool5, conv3, conv4,
    # norm1, norm2.  Its loader also maps legacy ".1." keys to "." (source:
    # Animadversio/Neuro-ActMax-GAN-comparison core/utils/GAN_utils.py).
    # server/generators/deepsim.py's DeePSiMFc6 uses the fc6 names as is.
    "upconvgan": "caffe layer names (defc7 ... deconv0; Rconv6 ... for conv nets), "
                 "as in Ponce-lab GAN_utils.upconvGAN",
    # willwx/XDream xdream/torch_nets/deepsim.py: fc7, fc6, fc5, tconv5_0,
    # tconv5_1, ..., tconv0, deconvs without bias.  Files deepsim/<layer>.pt
    # in a Google Drive *folder* (README), so there is no per-file URL to
    # fetch and no published checksum; listed as a by-hand source only.
    "xdream-willwx": "XDream torch_nets names (fc7, fc6, fc5, tconv5_0 ... tconv0)",
}

_HF = "https://huggingface.co/binxu/DeePSim_DosovitskiyBrox2016"
# Dosovitskiy & Brox's original caffe release: a zip with
# <layer>/generator.caffemodel per layer (URL as used by e.g. Anh Nguyen's
# synthesizing download script and Kamitani lab's READMEs).  Not a state
# dict: convert with `xdream convert-caffe` (its own checksum).
CAFFE_ZIP = ("https://lmb.informatik.uni-freiburg.de/resources/binaries/"
             "arxiv2016_alexnet_inversion_with_gans/release_deepsim_v0.zip")
WILLWX_DRIVE = "https://drive.google.com/open?id=1sV54kv5VXvtx4om1c9kBPbdlNuurkGFi"


@dataclass(frozen=True)
class WeightsEntry:
    """One published weights file."""
    name: str
    filename: str
    sha256: str | None          # None: not published anywhere we found
    size: int | None            # exact bytes where published, else None
    approx_size: str            # as the host's page shows it
    urls: tuple[str, ...]       # direct downloads, tried in order
    convention: str             # a key of CONVENTIONS
    pages: tuple[str, ...] = ()     # web pages to download this very file by hand
    by_hand: tuple[str, ...] = ()   # other sources, not this exact file

    @property
    def expected(self) -> str:
        return self.sha256 or NOT_PUBLISHED


def _hf_entry(name: str, sha256: str | None, size: int | None, approx: str) -> WeightsEntry:
    filename = f"upconvGAN_{name}.pt"
    return WeightsEntry(name, filename, sha256, size, approx,
                        urls=(f"{_HF}/resolve/main/{filename}",), convention="upconvgan",
                        pages=(f"{_HF}/blob/main/{filename}",),
                        by_hand=(f"{CAFFE_ZIP} ({name}/generator.caffemodel; then `xdream convert-caffe "
                                 f"generator.caffemodel --layer {name} --out {name}.pt` and point "
                                 f"generator.weights at that file)",
                                 f"{WILLWX_DRIVE} (deepsim/{name}.pt, xdream-willwx keys)"))


# File names and URLs: model_urls in Animadversio/Neuro-ActMax-GAN-comparison
# core/utils/GAN_utils.py (the Ponce lab's current loader; older copies, e.g.
# PonceLab/circuit_toolkit, point at OneDrive links for pool5/fc6/fc7/fc8).
# SHA-256 and sizes: the Git LFS details on each file's Hugging Face page,
# huggingface.co/binxu/DeePSim_DosovitskiyBrox2016/blob/<rev>/upconvGAN_<layer>.pt,
# exact byte sizes from the LFS pointers in the upload commits
# (.../commit/<rev>); where only the page's rounded size was found, size is None.
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in (
    # commit a815407 (pointer: size 4144419)
    _hf_entry("norm1", "c221ea2e0fd370dbd9942f13a606822269f34f176f841b1e89ee52c90c393d95",
              4144419, "4.14 MB"),
    # commit f8c8f96 (pointer: size 6651683)
    _hf_entry("norm2", "02f595f8980224f4fddb25bb359e3988141b6868ecddbb73604cba90305fa469",
              6651683, "6.65 MB"),
    # blob page at a815407 (commit 1cae907); exact size not found
    _hf_entry("conv3", "c99f69897e4911df63fbb353904f0039faef5eec5af671d6249bb4fcf8be850f",
              None, "32.3 MB"),
    # commit e98a3c2 (pointer: size 32304279)
    _hf_entry("conv4", "6650b46fb82f3c6d4b1cdbd25a211ca45696be6f7e1a33f95fbc5790c46250df",
              32304279, "32.3 MB"),
    # uploaded in commit bace46d; no page with its SHA-256 or size was found
    _hf_entry("pool5", None, None, "unknown"),
    # commit 74eb894 (pointer: size 224398749)
    _hf_entry("fc6", "d92b0897c56bf8d8d082dc9ea9f0a806490d3da064a7929e4ff813fa95623875",
              224398749, "224 MB"),
    # blob page at e98a3c2 (commit db8eea9); exact size not found
    _hf_entry("fc7", "b2c70c0ebfd060e13594556eb37d76c288a4c37431e3ec5307316758cf2b1ec2",
              None, "224 MB"),
    # blob page at main (commit 923c123); exact size not found
    _hf_entry("fc8", "b49d115d8252bdb2a20605e1491f380c3d6c4f1dd24113f2a9f6353069a40421",
              None, "174 MB"),
)}


# ---------------------------------------------------------------- the folder

def default_folder(env: Mapping[str, str] | None = None) -> Path:
    """$XDREAM_WEIGHTS, else the user's cache dir + xdream/weights."""
    env = os.environ if env is None else env
    if env.get(ENV_FOLDER):
        return Path(env[ENV_FOLDER]).expanduser()
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "xdream" / "weights"


def weights_folder(dir_arg: str | os.PathLike | None = None) -> Path:
    return Path(dir_arg).expanduser() if dir_arg else default_folder()


# ----------------------------------------------------------------- checksums

def _record_path(folder: Path, entry: WeightsEntry) -> Path:
    # sha256sum format, so `sha256sum -c` can check it too
    return folder / f"{entry.filename}.sha256"


def recorded_sha256(folder: Path, entry: WeightsEntry) -> str | None:
    """The checksum recorded at first download, for files with none published."""
    try:
        text = _record_path(folder, entry).read_text().split()
    except OSError:
        return None
    return text[0].lower() if text and len(text[0]) == 64 else None


def _record_sha256(folder: Path, entry: WeightsEntry, sha: str) -> None:
    line = f"{sha}  {entry.filename}\n".encode()
    write_atomic(_record_path(folder, entry), lambda f: f.write(line))   # a torn checksum would fail later
    log.info("recorded sha256 %s for %s (none published)", sha, entry.filename)


def _expected(folder: Path, entry: WeightsEntry) -> tuple[str | None, str | None]:
    """(checksum to compare against, where it comes from)."""
    if entry.sha256:
        return entry.sha256, "published"
    recorded = recorded_sha256(folder, entry)
    return (recorded, "recorded") if recorded else (None, None)


def inspect_entry(entry: WeightsEntry, folder: Path) -> dict:
    """One generator's row: is its file here, and does its SHA-256 match?"""
    path = folder / entry.filename
    expected, source = _expected(folder, entry)
    row = {"name": entry.name, "file": entry.filename, "path": str(path),
           "expected_sha256": entry.expected, "recorded_sha256": recorded_sha256(folder, entry),
           "size": entry.size, "approx_size": entry.approx_size, "convention": entry.convention,
           "urls": list(entry.urls), "present": path.is_file(), "sha256": None, "verified": None,
           "status": "missing"}
    if not row["present"]:
        return row
    row["sha256"] = actual = sha256_file(path)
    if expected is None:
        row["status"] = "present, unverified (sha256 not published, none recorded)"
    else:
        row["verified"] = actual == expected
        row["status"] = ("verified" if row["verified"] else "MISMATCH") + \
            ("" if source == "published" else " (against the checksum recorded at first download)")
    return row


def listing(folder: Path, registry: Mapping[str, WeightsEntry] | None = None) -> list[dict]:
    return [inspect_entry(e, folder) for e in (REGISTRY if registry is None else registry).values()]


# ------------------------------------------------------------------ download

class _Unreachable(Exception):
    """The host could not be reached or stopped answering (offline, timeout)."""


def _fetch(url: str, part: Path, timeout: float) -> tuple[str, int]:
    """Stream url into part, hashing as it goes; return (sha256, bytes)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    digest, done = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, open(part, "wb") as out:
            length = resp.headers.get("Content-Length")
            while chunk := resp.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
    except urllib.error.HTTPError as exc:
        raise GeneratorError(f"HTTP {exc.code} {exc.reason} from {url}") from None
    except urllib.error.URLError as exc:
        raise _Unreachable(f"cannot reach {urlsplit(url).netloc}: {exc.reason}") from None
    except (TimeoutError, ConnectionError) as exc:
        raise _Unreachable(f"{urlsplit(url).netloc} stopped answering: {exc or type(exc).__name__}") from None
    except http.client.HTTPException as exc:    # e.g. IncompleteRead: not an OSError
        raise GeneratorError(f"broken HTTP response from {url}: {exc!r}") from None
    if length is not None and int(length) != done:
        raise GeneratorError(f"truncated download from {url}: {done} of {length} bytes")
    return digest.hexdigest(), done


def _result(entry: WeightsEntry, folder: Path, status: str, **extra) -> dict:
    ok = status in ("downloaded", "present")
    result = {"name": entry.name, "file": entry.filename, "path": str(folder / entry.filename),
              "status": status, "ok": ok, **extra}
    if not ok:      # every failure says how a person gets the file instead
        result["fetch_by_hand"] = _by_hand(entry, folder)
    return result


def download(entry: WeightsEntry, folder: Path, timeout: float = TIMEOUT_S) -> dict:
    """Fetch one file unless it is here; return what happened (never raises for
    network trouble: the caller reports every file, then decides the exit code)."""
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / entry.filename, folder / (entry.filename + ".part")
    if final.is_file():
        return _already_here(entry, folder)
    errors, unreachable, rejected = [], True, None
    for url in entry.urls:
        log.info("downloading %s from %s", entry.filename, url)
        try:
            actual, size = _fetch(url, part, timeout)
        except (_Unreachable, GeneratorError, OSError) as exc:
            part.unlink(missing_ok=True)
            unreachable &= isinstance(exc, _Unreachable)
            errors.append(str(exc))
            log.info("%s: %s", entry.filename, exc)   # the caller reports the outcome
            continue
        result = _verify_and_place(entry, folder, part, final, url, actual, size)
        if result["ok"]:
            return result
        rejected, unreachable = result, False     # a wrong file: another mirror may have the right one
        errors += result["errors"]
    if rejected is not None:
        return {**rejected, "errors": errors}
    return _result(entry, folder, "unreachable" if unreachable else "failed", errors=errors)


def _already_here(entry: WeightsEntry, folder: Path) -> dict:
    row = inspect_entry(entry, folder)
    if row["verified"] is False:
        return _result(entry, folder, "checksum-mismatch", expected_sha256=_expected(folder, entry)[0],
                       actual_sha256=row["sha256"],
                       errors=[f"{row['path']} is here but its SHA-256 differs; delete it to download again"])
    if row["verified"] is None:      # hand-placed, none published: trust on first use
        _record_sha256(folder, entry, row["sha256"])
    return _result(entry, folder, "present", sha256=row["sha256"])


def _verify_and_place(entry: WeightsEntry, folder: Path, part: Path, final: Path,
                      url: str, actual: str, size: int) -> dict:
    if entry.sha256 and actual != entry.sha256:
        part.unlink(missing_ok=True)
        return _result(entry, folder, "checksum-mismatch", url=url, expected_sha256=entry.sha256,
                       actual_sha256=actual, errors=[f"SHA-256 of the file from {url} is {actual}, "
                                                     f"expected {entry.sha256}; the .part file was deleted"])
    if entry.size is not None and size != entry.size:
        part.unlink(missing_ok=True)
        return _result(entry, folder, "size-mismatch", url=url, errors=[
            f"{url} sent {size} bytes, expected {entry.size}; the .part file was deleted"])
    publish(part, final)             # fsynced, then renamed: never a half-written file under its name
    if not entry.sha256:
        _record_sha256(folder, entry, actual)
    log.info("placed %s (sha256 %s)", final, actual)
    return _result(entry, folder, "downloaded", url=url, sha256=actual, bytes=size,
                   verified=bool(entry.sha256))


def _by_hand(entry: WeightsEntry, folder: Path) -> dict:
    return {"put": str(folder / entry.filename), "from": list(entry.urls) + list(entry.pages),
            "sha256": entry.expected, "other_sources": list(entry.by_hand)}


def download_many(names: list[str], folder: Path, registry: Mapping[str, WeightsEntry] | None = None,
                  timeout: float = TIMEOUT_S) -> list[dict]:
    registry = REGISTRY if registry is None else registry
    wanted = list(registry) if names == ["all"] or "all" in names else names
    unknown = [n for n in wanted if n not in registry]
    if unknown:
        raise ConfigError(f"unknown generator(s) {unknown}; known: {', '.join(registry)} (or 'all')")
    return [download(registry[n], folder, timeout) for n in dict.fromkeys(wanted)]


# ----------------------------------------------------------------- for the server

def resolve_weights(spec: str, folder: Path | None = None,
                    registry: Mapping[str, WeightsEntry] | None = None) -> Path:
    """A path to an existing file, or a known generator name ("fc6", also
    "deepsim-fc6") found in the weights folder."""
    registry = REGISTRY if registry is None else registry
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    name = spec.removeprefix("deepsim-")
    if name not in registry:
        raise GeneratorError(f"generator weights {spec!r}: no such file, and not a known generator "
                             f"name (known: {', '.join(registry)})")
    folder = weights_folder(folder)
    found = folder / registry[name].filename
    if found.is_file():
        return found
    raise GeneratorError(f"weights for generator {name} not found: expected {registry[name].filename} "
                         f"in {folder}. Run `xdream weights --download {name}` (or `xdream weights` "
                         f"to see where to fetch it by hand), or set {ENV_FOLDER} / generator.weights "
                         f"to where the file is")
