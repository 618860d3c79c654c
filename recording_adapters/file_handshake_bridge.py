"""The bridge between the evolution server and a MATLAB/MonkeyLogic rig that
speaks XDream's file handshake.

Such a rig both shows the images and records the responses, so the bridge
joins the server twice: as a presenter (it gets each BLOCK with its images and
reports SHOWN) and as a recorder (it reports COUNTS).  For each block it writes
the images into the handshake folder, waits for the rig's block###.mat or
block###.h5 (recording_adapters.file_handshake), and reports every presentation:
its row of tEvokedResp as the counts, or 'missing' where the answer has no row
for it, the file is corrupt, or no answer came within answer_timeout_s.

    xdream bridge --server tcp://... --dir FOLDER --channels N
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recording_adapters import file_handshake as xf
from xdream import protocol
from xdream.errors import ConfigError
from xdream.peer import PeerConnection
from xdream.protocol import MsgType

log = logging.getLogger(__name__)


@dataclass
class _Block:
    number: int                      # the handshake's block### (XDream counts from 000)
    msg: protocol.Message            # the server's BLOCK (its images are views into its frames)
    names: list[str]                 # image file name of each presentation, in the BLOCK's order
    watcher: xf.AnswerWatcher
    deadline: float


class FileHandshakeBridge:
    def __init__(self, server: str, folder, channels: int, name: str = "xdream-files",
                 image_format: str = "png", answer_timeout_s: float = 600.0, corrupt_after_s: float = 5.0,
                 poll_s: float = 0.02, context=None, curve=None):
        if channels < 1:
            raise ConfigError("the bridge needs channels >= 1: how many columns the rig's tEvokedResp has")
        if image_format not in xf.IMAGE_FORMATS:
            raise ConfigError(f"image format {image_format!r} is not one of {xf.IMAGE_FORMATS}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        stale = xf.leftovers(self.folder)
        if stale:
            raise ConfigError(f"the handshake folder {self.folder} holds files of an earlier run "
                              f"({', '.join(stale[:4])}{', ...' if len(stale) > 4 else ''}); move them away "
                              "or give an empty folder: a stale answer would be read as this run's")
        self.channels = channels
        self.image_format = image_format
        self.answer_timeout_s = answer_timeout_s
        self.corrupt_after_s = corrupt_after_s
        self.poll_s = poll_s
        self.presenter = PeerConnection(server, "presenter", f"{name}-presenter", context=context,
                                        curve=curve)
        self.recorder = PeerConnection(server, "recorder", f"{name}-recorder", channels=channels, context=context,
                                       curve=curve)
        self.archive = self.folder / "done" / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self._queue: deque[protocol.Message] = deque()
        self._current: _Block | None = None
        self._next_number = 0
        self.subtract_baseline = False
        self.reported = 0      # presentations reported (shown + counts or missing)
        self.missing = 0

    # ---------------------------------------------------------------- loop
    def run(self, welcome_timeout_s: float = 60.0) -> int:
        try:
            self.presenter.wait_welcome(welcome_timeout_s)
            settings = self.recorder.wait_welcome(welcome_timeout_s).settings
            self.subtract_baseline = bool(settings.get("subtract_baseline", False))
            while not (self.presenter.ended or self.recorder.ended):
                self.step()
        finally:
            self.presenter.close()
            self.recorder.close()
        return self.reported

    def step(self) -> None:
        """One pass: messages from the server, then the handshake folder.  Never blocks
        longer than poll_s."""
        for msg in self.presenter.poll(self.poll_s):
            if msg.type == MsgType.BLOCK:
                self._queue.append(msg)
        self.recorder.poll(0)  # BLOCK_INFO repeats what the BLOCK says; this keeps heartbeats going
        if self._current is None and self._queue:
            self._start(self._queue.popleft())
        if self._current is not None:
            self._check_answer(self._current)

    # ------------------------------------------------------------- blocks
    def _start(self, msg: protocol.Message) -> None:
        number = self._next_number
        self._next_number += 1
        items = [(p.image_id, img) for p, img in zip(msg.body.presentations, msg.images())]
        names = xf.write_block_images(self.folder, number, items, self.image_format)
        watcher = xf.AnswerWatcher(self.folder, number, names, self.corrupt_after_s)
        self._current = _Block(number, msg, names, watcher, time.monotonic() + self.answer_timeout_s)
        log.info("block %03d: wrote %d images for server block %d; waiting for block%03d.mat/.h5",
                 number, len(names), msg.body.block_id, number)

    def _check_answer(self, block: _Block) -> None:
        try:
            answer = block.watcher.check()
        except xf.AnswerCorrupt as exc:
            log.error("block %03d: %s; its %d presentations are reported missing",
                      block.number, exc, len(block.names))
            self._finish(block, None)
            return
        if answer is not None:
            self._finish(block, answer)
        elif time.monotonic() > block.deadline:
            log.error("block %03d: no answer within %.0f s; its %d presentations are reported missing",
                      block.number, self.answer_timeout_s, len(block.names))
            self._finish(block, None)

    def _finish(self, block: _Block, answer: xf.Answer | None) -> None:
        rows = self._match(block, answer) if answer is not None else {}
        self._archive(block)  # first: the folder is clean before the server sends the next block
        onset = time.time()  # the rig keeps its own onsets; the server needs a finite one
        body = block.msg.body
        for spec, name in zip(body.presentations, block.names):
            self.presenter.send(MsgType.SHOWN, protocol.Shown(body.block_id, spec.pid, "shown", onset),
                                reliable=True)
            counts = self._counts(body.block_id, spec.pid, rows.get(name), block.number)
            self.recorder.send(MsgType.COUNTS, counts, reliable=True)
            self.reported += 1
            self.missing += counts.status == "missing"
        self._current = None

    def _match(self, block: _Block, answer: xf.Answer) -> dict[str, np.ndarray]:
        """Rows of the answer by image file name; repeats of one image are averaged
        (as XDream's WithIOScorer does)."""
        if answer.responses.shape[1] != self.channels:
            log.error("block %03d: %s has %d channels, the bridge was started with channels=%d; "
                      "its presentations are reported missing", block.number, answer.path.name,
                      answer.responses.shape[1], self.channels)
            return {}
        known = set(block.names)
        by_stem = {Path(n).stem: n for n in block.names}
        rows: dict[str, list[np.ndarray]] = {}
        unknown = []
        for name, row in zip(answer.names, answer.responses):
            match = name if name in known else by_stem.get(Path(name).stem)
            if match is None:
                unknown.append(name)
            else:
                rows.setdefault(match, []).append(row)
        if unknown:
            log.warning("block %03d: %s names %d stimuli this block never had (ignored): %s",
                        block.number, answer.path.name, len(unknown), ", ".join(unknown[:5]))
        absent = [n for n in block.names if n not in rows]
        if absent:
            log.warning("block %03d: %s has no response to %d images (reported missing): %s",
                        block.number, answer.path.name, len(absent), ", ".join(absent[:5]))
        return {name: np.mean(r, axis=0) for name, r in rows.items()}

    def _counts(self, block_id: int, pid: str, row, number: int) -> protocol.Counts:
        if row is None:
            return protocol.Counts(block_id, pid, "missing")
        if not np.all(np.isfinite(row)):
            log.error("block %03d: the response to %s is not finite (%s); reported missing", number, pid, row[:5])
            return protocol.Counts(block_id, pid, "missing")
        if (row >= 0).all():
            return protocol.Counts(block_id, pid, "ok", row.tolist())
        if not self.subtract_baseline:
            # a counts message holds spike counts >= 0; a negative (baseline-subtracted) response
            # can travel exactly only as counts - baseline, which this server does not compute
            log.error("block %03d: the response to %s is negative and the server's "
                      "response.subtract_baseline is off; reported missing", number, pid)
            return protocol.Counts(block_id, pid, "missing")
        return protocol.Counts(block_id, pid, "ok", np.maximum(row, 0).tolist(), np.maximum(-row, 0).tolist())

    def _archive(self, block: _Block) -> None:
        """Move the block's files out of the handshake folder (XDream's cleanup), keeping them."""
        self.archive.mkdir(parents=True, exist_ok=True)
        files = block.names + [xf.manifest_name(block.number)] + [p.name for p in block.watcher.paths]
        for name in files:
            path = self.folder / name
            if path.exists():
                try:
                    shutil.move(str(path), str(self.archive / name))
                except OSError as exc:  # a rig may still hold a file open (Windows)
                    log.warning("could not move %s to %s: %s", name, self.archive, exc)
