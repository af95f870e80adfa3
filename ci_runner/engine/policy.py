"""Durations, retry policies and the engine's defaults, in one place.

Durations follow Cloudflare Workflows: a number of seconds, or "N unit" with
unit one of second, minute, hour, day (plural allowed), plus millisecond for
tests and tight loops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from ci_runner.errors import UsageError

_UNITS = {"millisecond": 0.001, "second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0,
          "week": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*$")

Backoff = Literal["constant", "linear", "exponential"]

# Why not Cloudflare's 5 retries: a failing test in CI should fail fast; flaky
# steps opt in to retries explicitly. The timeout is generous for test suites.
DEFAULT_RETRY_LIMIT = 0
DEFAULT_RETRY_DELAY_S = 1.0
DEFAULT_BACKOFF: Backoff = "exponential"
# A step's result (and a run's output) is stored, replayed and listed: 1 MiB at most,
# as Cloudflare Workflows limits a step's return value. Big data belongs in a file.
MAX_RESULT_BYTES = 1 << 20
# The largest message the pipeline process may send the driver (a result, an error).
MAX_MESSAGE_BYTES = 8 << 20
# A run whose drivers keep dying with no step finishing is driven again at most this many
# times, after a pause that doubles from CRASH_BACKOFF_S; then it fails.
CRASH_RERUNS = 3
CRASH_BACKOFF_S = 1.0
DEFAULT_TIMEOUT_S = 30 * 60.0
# Sleeps up to this long are slept in the pipeline process; longer ones hibernate.
INLINE_SLEEP_MAX_S = 60.0
DEFAULT_EVENT_TIMEOUT_S = 24 * 3600.0
# The event type wait_for_approval waits for (approve and reject both send it).
APPROVAL_EVENT = "approval"


def seconds(value: float | int | str | timedelta, *, what: str = "duration") -> float:
    """``2``, ``"2 seconds"``, ``"10 minutes"``, ``timedelta(hours=1)`` -> seconds."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, bool):
        raise UsageError(f"{what} must be seconds or a string like '10 minutes', not {value!r}")
    elif isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.lower())
        unit = match.group(2) if match else ""
        if not match or unit not in _UNITS:
            raise UsageError(
                f"{what} {value!r} is not a duration: use seconds or"
                " 'N second|minute|hour|day|week[s]'"
            )
        result = float(match.group(1)) * _UNITS[unit]
    else:
        raise UsageError(f"{what} must be seconds or a string like '10 minutes', not {value!r}")
    if result < 0:
        raise UsageError(f"{what} must not be negative, got {value!r}")
    return result


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed step is tried again, and how long to wait in between."""

    limit: int = DEFAULT_RETRY_LIMIT
    delay_s: float = DEFAULT_RETRY_DELAY_S
    backoff: Backoff = DEFAULT_BACKOFF

    @classmethod
    def parse(cls, value: RetryPolicy | dict[str, Any] | int | None) -> RetryPolicy:
        """Accept Cloudflare's shape: ``{"limit": 2, "delay": "1 second", "backoff": "linear"}``."""
        if value is None:
            return cls()
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(limit=value)
        if not isinstance(value, dict):
            raise UsageError(f"retries must be a dict like {{'limit': 2}}, not {value!r}")
        unknown = set(value) - {"limit", "delay", "backoff"}
        if unknown:
            raise UsageError(
                f"unknown retries option(s) {sorted(unknown)}: use limit, delay, backoff"
            )
        limit = value.get("limit", DEFAULT_RETRY_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise UsageError(f"retries limit must be a whole number >= 0, not {limit!r}")
        backoff = value.get("backoff", DEFAULT_BACKOFF)
        if backoff not in ("constant", "linear", "exponential"):
            raise UsageError(f"retries backoff {backoff!r} must be constant, linear or exponential")
        delay = seconds(value.get("delay", DEFAULT_RETRY_DELAY_S), what="retries delay")
        return cls(limit=limit, delay_s=delay, backoff=backoff)

    @property
    def max_attempts(self) -> int:
        return self.limit + 1

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 = the first retry)."""
        n = max(attempt - 1, 1)
        if self.backoff == "constant":
            return self.delay_s
        if self.backoff == "linear":
            return self.delay_s * n
        return self.delay_s * float(2 ** (n - 1))
