"""One backoff rule for everything orca retries: failed calls and conflicting commits."""

from __future__ import annotations

import random

BASE_SECONDS = 0.05
CAP_SECONDS = 2.0


def backoff(attempt: int, *, jitter: bool = False) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): 0.05 s doubling, at most 2 s.

    ``jitter`` spreads the wait over 0.5-1.5x, so that processes which collided (two commits
    to one table) do not collide again.

    >>> [backoff(a) for a in (1, 2, 3, 10)]
    [0.05, 0.1, 0.2, 2.0]
    """
    pause = min(CAP_SECONDS, BASE_SECONDS * 2 ** (attempt - 1))
    return pause * random.uniform(0.5, 1.5) if jitter else pause
