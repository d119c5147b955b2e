"""Progress of long commands on stderr, never on stdout (which may carry JSON).

On a terminal the line is redrawn in place (at most a few times a second); otherwise
(a pipe, a log file, a CI job) a log line is written every ``interval_s`` seconds, so
an unattended run still says how far it got without flooding its log.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)

TTY_REDRAW_S = 0.2


class Progress:
    """Reports ``done`` of ``total`` units of ``what`` as a command advances."""

    def __init__(self, what: str, total: float | None = None, *, unit: str = "",
                 stream: TextIO | None = None, interval_s: float = 10.0,
                 tty: bool | None = None) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self._started = time.monotonic()
        self._last = self._started
        self._drawn = False

    def _text(self, done: float, detail: str) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            pct = min(100.0, 100.0 * done / self.total)
            text = f"{self.what}: {done:,.0f}/{self.total:,.0f}{unit} ({pct:.0f}%)"
        else:
            text = f"{self.what}: {done:,.0f}{unit}"
        elapsed = time.monotonic() - self._started
        return f"{text}, {elapsed:.0f} s" + (f", {detail}" if detail else "")

    def update(self, done: float, detail: str = "") -> None:
        """Report ``done`` (throttled: cheap to call often)."""
        now = time.monotonic()
        if now - self._last < (TTY_REDRAW_S if self.tty else self.interval_s):
            return
        self._last = now
        text = self._text(done, detail)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            self._drawn = True
        else:
            log.info("progress: %s", text)

    def close(self) -> None:
        """End the progress line (a terminal gets its newline back)."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False
