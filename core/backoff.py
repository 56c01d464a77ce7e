"""The phi backoff policy: delay = base * PHI**level * multiplier(kind), with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from core.errors import ErrorKind

PHI = 1.618033988749895
MULTIPLIERS = {
    ErrorKind.NETWORK: 1.0,
    ErrorKind.AUTH: 2.0,
    ErrorKind.VALIDATION: 0.5,
    # A full disk or a wrong permission is fixed by an operator at any moment: retry at the
    # network pace so anchoring resumes within one period once it is fixed.
    ErrorKind.STORAGE: 1.0,
    ErrorKind.UNKNOWN: 1.0,
}


@dataclass
class BackoffPolicy:
    base: float = 5.0
    max_level: int = 7
    jitter: float = 0.1  # +-10 % spreads the retries of many jobs that failed together
    rng: random.Random = field(default_factory=random.Random)

    def level(self, consecutive_failures: int) -> int:
        return min(self.max_level, max(0, consecutive_failures))

    def delay(self, level: int, kind: ErrorKind) -> float:
        """Seconds to wait before the next attempt of a job at `level` after a `kind` failure."""
        nominal = self.base * PHI ** min(level, self.max_level) * MULTIPLIERS.get(kind, 1.0)
        if self.jitter <= 0:
            return nominal
        return nominal * (1 + self.rng.uniform(-self.jitter, self.jitter))
