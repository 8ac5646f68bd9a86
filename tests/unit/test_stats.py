"""Wilson intervals against known values, and the separation bisect relies on."""

import pytest

from lab.stats import Rate, separated


@pytest.mark.parametrize("k,n,low,high", [
    (0, 10, 0.0, 0.2775), (3, 10, 0.1078, 0.6032), (10, 10, 0.7225, 1.0), (9, 30, 0.1667, 0.4788), (0, 30, 0.0, 0.1135),
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = Rate(k, n).interval()
    assert lo == pytest.approx(low, abs=1e-3) and hi == pytest.approx(high, abs=1e-3)


def test_describe_and_separation():
    assert Rate(3, 10).describe() == "3/10 failed (30 %, 95 % CI 11-60 %)"
    assert Rate(0, 0).interval() == (0.0, 1.0)
    assert not separated(Rate(0, 10), Rate(3, 10))  # 30 % against 0 % needs more than 10 runs
    assert separated(Rate(0, 30), Rate(9, 30))
