"""Progress of long loops: a tqdm bar on a terminal, one log line every half minute in a log file.

Job logs are files, where a progress bar's carriage returns pile up into one unreadable line;
there the loop logs ``<desc>: 120/750 images (16%), 3.2 images/s, about 3 min left`` instead.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm import tqdm

log = logging.getLogger("maskdistill.progress")

LOG_INTERVAL_S = 30.0


class Progress:
    """Count done items of a loop of known length; use as a context manager.

    Args:
        total: items the loop will do.
        desc: what the loop does (the log line's prefix).
        unit: the item's name, plural in log lines (``images``, ``steps``).
        initial: items already done (a resumed run).
        enabled: False shows nothing.
        interval_s: seconds between log lines when stderr is not a terminal.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "items",
        initial: int = 0,
        enabled: bool = True,
        interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self._start_count = initial
        self.interval_s = interval_s
        self._bar = None
        self._enabled = enabled
        self._started = self._last_log = time.monotonic()
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit.rstrip("s"))

    def update(self, count: int = 1) -> None:
        """Mark ``count`` more items done."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._enabled and time.monotonic() - self._last_log >= self.interval_s:
            self._log_line()

    def _log_line(self) -> None:
        self._last_log = now = time.monotonic()
        rate = (self.done - self._start_count) / max(now - self._started, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = 100 * self.done / self.total if self.total else 100.0
        eta = f"about {left / 60:.0f} min left" if left != float("inf") else "no estimate yet"
        log.info(
            "%s: %d/%d %s (%.0f%%), %.2f %s/s, %s",
            self.desc,
            self.done,
            self.total,
            self.unit,
            share,
            rate,
            self.unit,
            eta,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled and exc_type is None and self.done > self._start_count:
            self._log_line()
