"""Logging that cannot flood: a 50 ms feed with a fault must not log 20 lines a second."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """Logs at most once per interval; counts what it suppressed and says so next time."""

    def __init__(self, logger: logging.Logger, interval_seconds: float = 1.0) -> None:
        self._logger = logger
        self._interval = interval_seconds
        self._next_allowed = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log unless another message went out less than an interval ago; True if logged."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_allowed:
                self._suppressed += 1
                return False
            suppressed, self._suppressed = self._suppressed, 0
            self._next_allowed = now + self._interval
        if suppressed:
            msg += f" ({suppressed} similar messages suppressed)"
        self._logger.log(level, msg, *args)
        return True

    def warning(self, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, msg, *args)
