"""Progress display: a tqdm bar when the stream is a terminal, plain lines otherwise (CI, files).

>>> for x in progress(batches, total=n, desc="features"):
...     ...
>>> bar = progress_bar(total=steps, desc="train")   # then bar.update(k), bar.write(line), bar.close()

One rule everywhere: ``FASTGAN_PROGRESS=0`` turns bars off, ``=1`` forces them on; otherwise a bar is
drawn only when the stream ``isatty()``. Without a bar, ``write`` prints the line and ``update`` does
nothing, so a log file holds the same lines as before and no control characters.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def bars_enabled(stream: TextIO | None = None) -> bool:
    """Whether a progress bar is drawn on ``stream`` (default stderr, tqdm's stream)."""
    env = os.environ.get("FASTGAN_PROGRESS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # closed or stream-like objects without isatty
        return False


class _Plain:
    """The no-bar stand-in: same methods as a tqdm bar; ``write`` prints, the rest do nothing."""

    def __init__(self, stream: TextIO | None):
        self.stream = stream

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def write(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Bar:
    """A tqdm bar whose ``write`` prints above the bar (tqdm.write) on the log stream."""

    def __init__(self, bar, stream: TextIO | None):
        self.bar, self.stream = bar, stream

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.bar.set_postfix_str(s, refresh=refresh)

    def write(self, line: str) -> None:
        self.bar.write(line, file=self.stream or sys.stdout)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", stream: TextIO | None = None):
    """A bar with ``update(n)``, ``write(line)``, ``set_postfix_str(s)``, ``close()``: tqdm on a terminal,
    else a stand-in whose ``write`` prints plain lines to ``stream`` (default stdout)."""
    if not bars_enabled():
        return _Plain(stream)
    from tqdm.auto import tqdm

    return _Bar(tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True), stream)


def progress(it: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Iterate ``it`` with a bar on a terminal, silently otherwise."""
    if not bars_enabled():
        yield from it
        return
    from tqdm.auto import tqdm

    with tqdm(it, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True) as bar:
        yield from bar
