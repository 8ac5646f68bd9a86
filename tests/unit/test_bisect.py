"""The bisect search: finds the first changed candidate with few evaluations, and says so when the
verdict never changes."""

from __future__ import annotations

import pytest

from lab.bisect import Search, report


@pytest.mark.parametrize("count,first_bad", [(1, 1), (3, 2), (8, 1), (8, 8), (13, 7)])
def test_finds_first_change(count: int, first_bad: int) -> None:
    calls: list[int] = []

    def evaluate(i: int) -> str:
        calls.append(i)
        return "FAIL" if i >= first_bad else "PASS"

    assert Search(count, evaluate).run() == (first_bad - 1, first_bad)
    assert len(calls) == len(set(calls)), "a candidate was evaluated twice"
    assert len(calls) <= 2 + (count - 1).bit_length()


def test_no_change() -> None:
    calls: list[int] = []
    assert Search(5, lambda i: calls.append(i) or "PASS").run() is None
    assert calls == [0, 5]


def test_build_error_counts_as_change() -> None:
    verdicts = ["PASS", "PASS", "BUILD-ERROR", "FAIL"]
    assert Search(3, lambda i: verdicts[i]).run() == (1, 2)


def test_report_names_last_good_and_first_bad() -> None:
    good = {"index": 1, "label": "patch 1/3 a", "kernel": "build:aa", "signature": "PASS", "run_dir": "/r/1", "error": ""}
    bad = {"index": 2, "label": "patch 2/3 b", "kernel": "build:bb", "signature": "FAIL", "run_dir": "/r/2", "error": ""}
    text = report({"scenario": "stable-pages", "candidates": ["base", "1", "2", "3"], "steps": [good, bad],
                   "result": {"changed": True, "last_good": good, "first_bad": bad}})
    assert "first change: patch 2/3 b  (PASS -> FAIL)" in text
    assert "last good: patch 1/3 a  build:aa  /r/1" in text and "first bad: patch 2/3 b  build:bb  /r/2" in text


class _Kernel:
    def __init__(self, ref: str) -> None:
        self.ref = ref


def _bisect(tmp_path, monkeypatch, verdicts: dict[int, list[str]]):
    """run_bisect over 4 candidates whose runs give `verdicts[i]` in turn (a list per candidate)."""
    from lab.bisect import run_bisect
    from lab.kernels.build import BuildRequest
    from lab.rundir import RunDir
    from lab.scenarios.framework import Outcome
    from lab.scenarios.options import ScenarioOptions

    monkeypatch.setenv("LAB_RESULTS", str(tmp_path))
    runs: list[int] = []
    requests = [BuildRequest(source=str(i)) for i in range(4)]

    def run_scenario(name, options):
        i = int(options.kernels[0])
        runs.append(i)
        verdict = verdicts[i].pop(0)
        return Outcome(RunDir.create("x", str(i)), {"subruns": {"k": {"verdict": verdict, "facets": {}}}}, verdict == "PASS", "")

    _, summary = run_bisect("stable-pages", ScenarioOptions(), requests, ["base", "p1", "p2", "p3"], {},
                            build_kernel=lambda r: _Kernel(r.source), run_scenario=run_scenario)
    return summary, runs


def test_an_error_step_is_run_again_and_then_decides(tmp_path, monkeypatch) -> None:
    summary, runs = _bisect(tmp_path, monkeypatch, {0: ["PASS"], 3: ["FAIL"], 1: ["ERROR", "PASS"], 2: ["FAIL"]})
    assert summary["result"]["changed"] and summary["result"]["first_bad"]["label"] == "p2"
    assert runs.count(1) == 2  # the ERROR was run once more
    assert len(next(s for s in summary["steps"] if s["label"] == "p1")["runs"]) == 2


def test_an_error_twice_stops_the_bisect_inconclusive(tmp_path, monkeypatch) -> None:
    summary, _ = _bisect(tmp_path, monkeypatch, {0: ["PASS"], 3: ["FAIL"], 1: ["ERROR", "ERROR"]})
    assert summary["result"]["changed"] is None
    assert summary["result"]["inconclusive"]["label"] == "p1"
    assert "inconclusive at p1: ERROR" in report(summary)


def test_not_applicable_is_inconclusive_at_once(tmp_path, monkeypatch) -> None:
    summary, runs = _bisect(tmp_path, monkeypatch, {0: ["N/A"]})
    assert summary["result"]["inconclusive"]["label"] == "base" and runs == [0]


def test_rate_search_finds_a_flaky_regression_with_more_runs_where_needed() -> None:
    """0 % on the good side, 30 % from patch 4 on (a deterministic 3 in 10 per batch)."""
    from lab.bisect import RateSearch
    from lab.stats import Rate

    counts: dict[int, list[int]] = {}

    def measure(i: int) -> Rate:
        counts.setdefault(i, []).append(3 if i >= 4 else 0)
        return Rate(sum(counts[i]), 10 * len(counts[i]))

    search = RateSearch(6, measure, max_batches=4)
    assert search.run() == (3, 4)
    assert search.batches[0] == 3 and search.batches[6] == 3  # the ends ran until their intervals separated
    assert all(b <= 4 for b in search.batches.values())


def test_rate_search_says_when_it_cannot_decide() -> None:
    from lab.bisect import Inconclusive, RateSearch
    from lab.stats import Rate

    # 1 in 10 against 2 in 10 never separates within 4 batches.
    with pytest.raises(Inconclusive, match="do not separate"):
        RateSearch(3, lambda i: Rate(1 if i == 0 else 2, 10), max_batches=4).run()
    assert RateSearch(3, lambda i: Rate(0, 10), max_batches=2).run() is None  # 0 % at both ends: no change
