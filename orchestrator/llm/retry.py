"""When to retry an HTTP call and how long to wait: exponential backoff, jitter, Retry-After."""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from dataclasses import dataclass, field

#: Statuses worth another try: rate limits and server-side trouble.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff settings; ``delay`` for attempt n is base * 2**n, capped, with jitter."""

    max_retries: int = 4  # retries after the first attempt
    base_s: float = 0.5
    cap_s: float = 20.0  # longest computed backoff
    retry_after_cap_s: float = 60.0  # longest wait a server's Retry-After may impose
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base_s < 0 or self.cap_s < 0 or self.retry_after_cap_s < 0:
            raise ValueError(f"retry settings must be >= 0, got {self}")

    def delay(self, retry: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        hinted = parse_retry_after(retry_after) if retry_after else None
        if hinted is not None:
            return min(hinted, self.retry_after_cap_s)
        ceiling = min(self.cap_s, self.base_s * (2**retry))
        # "Equal jitter": at least half the backoff, so retries never bunch at zero.
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if unreadable."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" says nothing; "inf" and "1e999" are capped by the caller
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000" parses naive; RFC 9110 dates are GMT anyway
            when = when.replace(tzinfo=datetime.timezone.utc)
        stamp = when.timestamp()
    except (TypeError, ValueError, OverflowError):
        return None
    current = time.time() if now is None else now
    return max(0.0, stamp - current)
