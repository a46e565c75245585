"""Progress reports: a tqdm bar on a terminal, plain timestamped lines in logs (SLURM, CI, ``> log.txt``).

A bar redraws itself with carriage returns, which a log file keeps as one ever-growing line (an
800-step run wrote hundreds of kilobytes on one line). Where stderr is not a terminal,
:func:`progress_bar` returns a :class:`LineProgress` that writes one line at a time: after the first
update, every ``interval`` seconds (``SCIDDPM_PROGRESS_INTERVAL``, default 30) and at the end, each
with the count, rate, ETA and the latest figures (loss, learning rate).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["LineProgress", "progress_bar"]


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class LineProgress:
    """Progress as plain lines: ``training: 120/800 steps (15%), 6.3 steps/s, ETA 1m48s, loss=0.1234``.

    Has the part of tqdm's interface the library uses (``update``, ``set_postfix``, ``close``, ``with``).
    ``interval`` is the least number of seconds between two lines.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "step",
        initial: int = 0,
        interval: float = 30.0,
        file: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.interval = interval
        self.file = file or sys.stderr
        self.postfix: dict[str, Any] = {}
        self.started = self.last = time.perf_counter()
        self.lines, self.written = 0, initial

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; write a line after the first update, then every ``interval`` seconds."""
        self.n += n
        now = time.perf_counter()
        if self.lines == 0 or now - self.last >= self.interval:
            self._write(now)

    def set_postfix(self, **figures: Any) -> None:
        """The figures (loss, lr, ...) the next line shows."""
        self.postfix = figures

    def close(self) -> None:
        """Write the final line, unless the last line already said it."""
        if self.n != self.written:
            self._write(time.perf_counter())

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, now: float) -> None:
        done = self.n - self.start_n
        rate = done / max(now - self.started, 1e-9)
        parts = [
            f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f}%)"
        ]
        parts.append(f"{rate:.3g} {self.unit}s/s")
        if self.n < self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        print(", ".join(parts), file=self.file, flush=True)
        self.last, self.lines, self.written = now, self.lines + 1, self.n


def progress_bar(
    total: int,
    desc: str,
    enabled: bool | None = True,
    *,
    unit: str = "step",
    initial: int = 0,
    leave: bool = True,
) -> Any:
    """A progress report of ``total`` ``unit``s labelled ``desc``.

    ``enabled`` True: a tqdm bar when stderr is a terminal, else :class:`LineProgress` lines;
    None: the bar on a terminal and nothing elsewhere (inner stages that should stay quiet in
    logs); False: nothing.
    """
    from tqdm.auto import tqdm

    terminal = sys.stderr.isatty()
    if enabled is False or (enabled is None and not terminal):
        return tqdm(total=total, disable=True)
    if terminal:
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)
    interval = float(os.environ.get("SCIDDPM_PROGRESS_INTERVAL", "30"))
    return LineProgress(total, desc, unit, initial, interval)
