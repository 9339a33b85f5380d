"""Progress reporting and cancellation for long work.

Library functions that take long accept ``progress``, a callable
``progress(done, total, message)`` called between steps. ``done`` and
``total`` count steps of the unit the function names (bytes, frames,
objects). A callback cancels the work by raising :class:`Cancelled`; the
function then stops at the next step and leaves no partial output behind.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

ProgressCallback = Callable[[int, int, str], None]


class Cancelled(Exception):
    """Raised by a progress callback to stop the work."""


def no_progress(done: int, total: int, message: str) -> None:
    """Ignore progress."""


class TerminalProgress:
    """Print progress to a terminal on one line, at most a few times a second."""

    def __init__(self, stream=None, min_interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < self.min_interval:
            return
        self._last = now
        percent = 100 * done // total if total else 100
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{message} {percent:3d}%" + end)
        self.stream.flush()


def progress_or_default(progress: Optional[ProgressCallback]) -> ProgressCallback:
    return progress if progress is not None else no_progress
