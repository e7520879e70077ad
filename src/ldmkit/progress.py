"""Progress of long work: a live bar on a terminal, a plain line every few seconds in a log.

tqdm redraws its bar with ``\\r`` many times a second; written to a file or a CI log that becomes
thousands of lines. When the output is not a terminal, :func:`progress_bar` returns :class:`ProgressLines`,
which keeps tqdm's interface (``update``, ``set_postfix``, ``close``, ``total``) and prints one line per
``interval`` seconds, plus one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

LOG_INTERVAL_S = 10.0


class ProgressLines:
    """tqdm's interface, printed as ``desc: n/total unit (p%), r unit/s, key=value`` lines."""

    def __init__(self, total: int | None = None, initial: int = 0, desc: str = "", unit: str = "it",
                 file: TextIO | None = None, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.file = file
        self.interval, self.clock = interval, clock
        self.postfix: dict[str, Any] = {}
        self._start = self._last = clock()
        self._start_n = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self._last >= self.interval:
            self._print()

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(values or {}), **kwargs}

    def close(self) -> None:
        if not self._closed and self.n > self._start_n:
            self._print()
        self._closed = True

    def _print(self) -> None:
        now = self.clock()
        self._last = now
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done} {self.unit}{percent}, {rate:.3g} {self.unit}/s{extra}",
              file=self.file or sys.stderr, flush=True)

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None = None, *, initial: int = 0, desc: str = "", unit: str = "it",
                 leave: bool = True, file: TextIO | None = None) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, else :class:`ProgressLines`."""
    stream = file or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        return ProgressLines(total=total, initial=initial, desc=desc, unit=unit, file=file)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=file, dynamic_ncols=True)


__all__ = ["LOG_INTERVAL_S", "ProgressLines", "progress_bar"]
