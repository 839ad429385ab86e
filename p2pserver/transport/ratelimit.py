"""Per-peer token buckets and penalties, on whatever clock the caller passes.

Rules: a bucket holds at most ``burst`` tokens and refills at ``rate`` tokens
per second; each request takes one, and a request finding the bucket empty
is refused with the time until a token is back (M_LIMIT_EXCEEDED with
``retry_after_ms`` on the wire). Penalties ("strikes") are for protocol
violations, not for load: ``strikes`` of them within ``window`` seconds ban
the peer for ``ban_duration`` seconds.

Time is an argument (``now``, e.g. ``trio.current_time()``), so the logic is
pure and runs the same under trio's MockClock.
"""

from __future__ import annotations

from collections import deque


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if allowed, else the seconds until one is available."""
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class Penalties:
    """Strikes within a sliding window; enough of them ban the peer for a while."""

    def __init__(self, strikes: int, window: float, ban_duration: float) -> None:
        self.strikes = strikes
        self.window = window
        self.ban_duration = ban_duration
        self._times: deque[float] = deque()
        self.banned_until = float("-inf")

    def strike(self, now: float) -> bool:
        """Record a violation; True if it (newly) bans the peer."""
        self._times.append(now)
        self._expire(now)
        if len(self._times) >= self.strikes and not self.is_banned(now):
            self.banned_until = now + self.ban_duration
            self._times.clear()
            return True
        return False

    def is_banned(self, now: float) -> bool:
        return now < self.banned_until

    def is_clean(self, now: float) -> bool:
        """No ban and no recent strikes: nothing worth remembering."""
        self._expire(now)
        return not self._times and not self.is_banned(now)

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
