"""Progress of a long ``prepare`` phase: a tqdm bar on a terminal, plain lines in a log.

A bar redraws one line with carriage returns, which turns a log file (nohup, SLURM, CI) into
noise; there the phase prints a plain line every ``LINE_SECONDS`` instead::

    encoding  42% (10.5M of 25.0M characters, 1.2M/s, ETA 0:00:12)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["LINE_SECONDS", "Progress", "ProgressMode"]

LINE_SECONDS = 10.0

# "bar": tqdm on stderr; "lines": periodic lines through the log function; None: silent.
ProgressMode = Literal["bar", "lines"] | None


def _human(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return f"{count:.0f}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts ``done`` of ``total`` units for one phase and shows it as ``mode`` says.

    Use it as a context manager: on success it prints the final line (or completes the bar); on
    an error or Ctrl-C it only ends the bar's line.
    """

    def __init__(
        self,
        phase: str,
        total: int,
        *,
        mode: ProgressMode,
        log: Callable[[str], None] | None,
        unit: str = "characters",
    ):
        self.phase, self.total, self.unit = phase, max(int(total), 1), unit
        self.mode = mode if (mode != "lines" or log is not None) else None
        self.log = log
        self.done = 0
        self.started = self.last_line = time.monotonic()
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                desc=phase,
                unit="char",
                unit_scale=True,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )
        elif self.mode == "lines":
            self._line()

    def update(self, amount: int) -> None:
        self.done += amount
        if self.bar is not None:
            self.bar.update(amount)
        elif self.mode == "lines" and time.monotonic() - self.last_line >= LINE_SECONDS:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines":
            self.done = max(self.done, self.total)
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        elif self.bar is not None:
            self.bar.close()  # end the bar's line, so that an error message starts on its own

    def _line(self) -> None:
        now = time.monotonic()
        self.last_line = now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        percent = 100.0 * min(self.done, self.total) / self.total
        head = (
            f"{self.phase} {percent:3.0f}% ({_human(self.done)} of {_human(self.total)} {self.unit}"
        )
        if self.done == 0:
            self.log(head + ")")
        elif self.done >= self.total:
            self.log(f"{head} in {_clock(elapsed)}, {_human(rate)}/s)")
        else:
            eta = _clock((self.total - self.done) / rate)
            self.log(f"{head}, {_human(rate)}/s, ETA {eta})")
