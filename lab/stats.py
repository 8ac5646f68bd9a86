"""Failure rates of flaky runs: k failures in n runs with a 95 % Wilson score interval, and the
comparison bisect makes between two rates (clearly different only when the intervals do not
overlap)."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    failed: int
    runs: int

    @property
    def value(self) -> float:
        return self.failed / self.runs if self.runs else 0.0

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """Wilson score interval: sound at 0 and n failures and for small n, unlike the normal one."""
        n, k = self.runs, self.failed
        if n == 0:
            return 0.0, 1.0
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        return max(0.0, centre - half), min(1.0, centre + half)

    def describe(self) -> str:
        low, high = self.interval()
        return f"{self.failed}/{self.runs} failed ({100 * self.value:.0f} %, 95 % CI {100 * low:.0f}-{100 * high:.0f} %)"

    def to_dict(self) -> dict[str, float | int]:
        low, high = self.interval()
        return {"failed": self.failed, "runs": self.runs, "rate": round(self.value, 4), "low": round(low, 4), "high": round(high, 4)}


def separated(a: Rate, b: Rate) -> bool:
    """The two rates' 95 % intervals do not overlap."""
    a_low, a_high = a.interval()
    b_low, b_high = b.interval()
    return a_high < b_low or b_high < a_low
