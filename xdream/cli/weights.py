"""`xdream weights`: list, check and download the generators' weights."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING
from pathlib import Path

if TYPE_CHECKING:
    from server.generators.weights import WeightsEntry


def add_parser(sub) -> None:
    w = sub.add_parser("weights", help="list the known generator weights, check them, download missing ones")
    w.add_argument("--dir", help="the weights folder (default: $XDREAM_WEIGHTS, else ~/.cache/xdream/weights)")
    w.add_argument("--download", nargs="+", metavar="NAME",
                   help="download these generators' weights ('all' for every one) and verify the SHA-256")
    w.add_argument("--json", action="store_true", help="print the listing as JSON")
    w.set_defaults(func=run)


def run(args, registry: Mapping[str, WeightsEntry] | None = None, timeout: float | None = None) -> int:
    """`xdream weights [--dir D] [--download NAME...|all] [--json]`.

    Exit 0 when every requested download worked and no present file fails its
    checksum, else 1."""
    # imported here, not at the top: `xdream present` imports this package and must not import torch
    from server.generators.weights import TIMEOUT_S, REGISTRY, download_many, listing, weights_folder

    timeout = TIMEOUT_S if timeout is None else timeout
    registry = REGISTRY if registry is None else registry
    folder = weights_folder(getattr(args, "dir", None))
    downloads = download_many(args.download, folder, registry, timeout) if args.download else []
    rows = listing(folder, registry)
    if args.json:
        print(json.dumps({"folder": str(folder), "generators": rows, "downloads": downloads}, indent=2))
        for d in downloads:
            if not d["ok"]:     # a person running with --json still needs the way out
                print(_failure_text(d), file=sys.stderr)
    else:
        for d in downloads:
            print(_download_text(d))
        print(_listing_text(folder, rows))
    bad = [d for d in downloads if not d["ok"]] + [r for r in rows if r["verified"] is False]
    return 1 if bad else 0


def _listing_text(folder: Path, rows: list[dict]) -> str:
    from server.generators.weights import NOT_PUBLISHED

    lines = [f"weights folder: {folder}", f"{'name':6} {'file':20} {'status':10} expected sha256"]
    for r in rows:
        status = {True: "verified", False: "MISMATCH", None: "unverified"}[r["verified"]] \
            if r["present"] else "missing"
        expected = r["expected_sha256"]
        if expected == NOT_PUBLISHED and r["recorded_sha256"]:
            expected = f"{r['recorded_sha256']} (recorded at first download; none published)"
        lines.append(f"{r['name']:6} {r['file']:20} {status:10} {expected}")
        if r["verified"] is False:
            lines.append(f"{'':6} {'':20} {'':10} actual: {r['sha256']}")
    return "\n".join(lines)


def _download_text(d: dict) -> str:
    if d["status"] == "downloaded":
        check = "sha256 verified" if d["verified"] else f"sha256 {d['sha256']} recorded (none published)"
        return f"{d['name']}: downloaded {d['path']} from {d['url']}, {check}"
    if d["status"] == "present":
        return f"{d['name']}: already present: {d['path']}"
    return _failure_text(d)


def _failure_text(d: dict) -> str:
    lines = [f"{d['name']}: download FAILED ({d['status']})"] + [f"  {e}" for e in d.get("errors", [])]
    if d["status"] == "checksum-mismatch":
        lines.append(f"  expected sha256: {d['expected_sha256']}")
        lines.append(f"  actual sha256:   {d['actual_sha256']}")
    hand = d.get("fetch_by_hand")
    if hand:
        lines.append(f"  put the file here:  {hand['put']}")
        lines += [f"  fetch it by hand from:  {u}" for u in hand["from"]]
        lines.append(f"  expected sha256: {hand['sha256']}  (check: sha256sum {hand['put']})")
        lines += [f"  other sources (not this exact file): {s}" for s in hand["other_sources"]]
    return "\n".join(lines)
