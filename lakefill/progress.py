"""Progress a person can follow: a bar on a terminal, and where no terminal is attached (an
Airflow task's log, spark-submit's driver log, a CI log) one line every ``every`` seconds with
what is done, the rate and the time left, as Spark and Beam log their own progress."""

from __future__ import annotations

import sys
import time
from typing import Callable

__all__ = ["LogLines", "progress", "stderr_line", "EVERY"]

EVERY = 30.0  # seconds between two log lines


def stderr_line(text: str) -> None:
    """A line on stderr, flushed: the log of a process that was given none."""
    print(text, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class LogLines:
    """tqdm's interface (``update``, ``set_postfix``, ``total``, ``refresh``, ``close``) written as
    log lines: the first after ``every`` seconds, then one every ``every`` seconds, and one at
    ``close`` when any was written before (a run shorter than ``every`` logs nothing).
    ``clock``: the time source (tests pass their own)."""

    def __init__(self, total: int, *, desc: str = "", unit: str = "step", log: Callable[[str], None] | None = None,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.every = float(EVERY if every is None else every)
        self.log, self.clock = log or stderr_line, clock
        self.n, self.postfix, self.lines, self.logged_n, self.changed = 0, {}, 0, 0, False
        self.start = self.clock()
        self.last = self.start

    def set_postfix(self, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}

    def refresh(self) -> None:  # the total changed (work stopped early): the last line says so
        self.changed = True

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def line(self, now: float | None = None) -> str:
        """The line as it would be logged now."""
        now = self.clock() if now is None else now
        elapsed = now - self.start
        done = min(self.n, self.total) if self.total else self.n
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total:  # a known amount: the share and the time left
            amount = f"{done:,}/{self.total:,} {self.unit}s ({100 * done / self.total:.0f}%)"
            eta = f", about {_duration((self.total - done) / rate)} left" if rate > 0 and done < self.total else ""
        else:  # an unknown amount (rows streamed from files): what is done and the rate
            amount, eta = f"{done:,} {self.unit}s", f", {rate:,.0f} {self.unit}s/s" if rate > 0 else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        return f"{self.desc + ': ' if self.desc else ''}{amount}{extra}, {_duration(elapsed)} elapsed{eta}"

    def _line(self, now: float) -> None:
        self.lines, self.logged_n, self.changed = self.lines + 1, self.n, False
        self.log(self.line(now))

    def close(self) -> None:
        if self.lines and (self.n != self.logged_n or self.changed):  # a run long enough to have logged: its last line says it ended
            self._line(self.clock())


def progress(total: int, *, enabled: bool = True, log: Callable[[str], None] | None = None, desc: str = "",
             unit: str = "step", every: float | None = None):
    """A tqdm bar on stderr when stderr is a terminal; else ``LogLines`` written through ``log``
    (a job's log; stderr when None). None when not ``enabled``."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, unit_scale=True)
    return LogLines(total, desc=desc, unit=unit, log=log, every=every)
