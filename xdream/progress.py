"""Progress bars for long command-line work (export, replay, report, benchmarks).

tqdm draws them on stderr, and only when stderr is a terminal: a log file, a pipe or a
test's captured output stays free of bars.  Without tqdm installed (it is in the `server`
extra) the loop runs as it would without a bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def shown() -> bool:
    """Whether bars are drawn: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):   # replaced or closed stderr
        return False


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """`items`, with a bar on stderr when it is a terminal."""
    if not shown():
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


class Bar:
    """A bar advanced by hand (`update(n)`) for loops that are not one iterable: a no-op when not shown."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it"):
        self._bar = None
        if shown():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    @property
    def drawn(self) -> bool:
        return self._bar is not None

    def note(self, text: str) -> None:
        """A short status beside the bar (the job that just finished)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
