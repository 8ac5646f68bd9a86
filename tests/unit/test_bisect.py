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


def test_a_step_that_does_not_build_is_skipped_not_the_first_bad() -> None:
    # p2 does not build, p3 is the first FAIL: the search tests around p2 and names p3.
    verdicts = ["PASS", "PASS", "BUILD-ERROR", "FAIL", "FAIL"]
    search = Search(4, lambda i: verdicts[i])
    assert search.run() == (1, 3) and search.skipped == [2]
    # Every step between the ends skipped: the first bad is one of them or the end.
    search = Search(3, lambda i: ["PASS", "BUILD-ERROR", "BUILD-ERROR", "FAIL"][i])
    assert search.run() == (0, 3) and search.skipped == [1, 2]


def test_an_end_that_does_not_build_is_inconclusive() -> None:
    from lab.bisect import Inconclusive

    with pytest.raises(Inconclusive, match="BUILD-ERROR"):
        Search(3, lambda i: "BUILD-ERROR" if i == 3 else "PASS").run()


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


def _bisect(tmp_path, monkeypatch, verdicts: dict[int, list[str]], *, unbuildable: tuple[int, ...] = (),
            cases: dict[int, list[dict]] | None = None, case: str | None = None, repeat: int = 1):
    """run_bisect over 4 candidates whose runs give `verdicts[i]` in turn (a list per candidate);
    `cases[i]` gives each run's cases instead, `unbuildable` candidates fail to build."""
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
        if cases is not None:
            section = {"verdict": "FAIL", "facets": {}, "cases": cases[i].pop(0)}
        else:
            section = {"verdict": verdicts[i].pop(0), "facets": {}, "cases": {}}
        return Outcome(RunDir.create("x", str(i)), {"subruns": {"k": section}}, section["verdict"] == "PASS", "")

    def build_kernel(request):
        if int(request.source) in unbuildable:
            from lab.errors import LabError
            raise LabError("patch 2/3 does not apply")
        return _Kernel(request.source)

    _, summary = run_bisect("stable-pages", ScenarioOptions(repeat=repeat), requests, ["base", "p1", "p2", "p3"], {},
                            build_kernel=build_kernel, run_scenario=run_scenario, case=case)
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


def test_a_step_that_does_not_build_is_reported_and_skipped(tmp_path, monkeypatch) -> None:
    summary, runs = _bisect(tmp_path, monkeypatch, {0: ["PASS"], 3: ["FAIL"], 1: ["PASS"]}, unbuildable=(2,))
    result = summary["result"]
    assert result["changed"] and result["first_bad"]["label"] == "p3" and result["could_be"] == ["p2", "p3"]
    assert 2 not in runs
    text = report(summary)
    assert "p2" in text and "BUILD-ERROR" in text and "the first bad is one of p2, p3" in text


def test_case_follows_one_case_and_ignores_expected_failures_elsewhere(tmp_path, monkeypatch) -> None:
    """stable-pages' raw target fails on every kernel (expected): followed alone, the xfs case
    decides, and the sub-run's FAIL at both ends does not read as 'unchanged'."""
    def run(xfs: str) -> list[dict]:
        return [{"raw": {"verdict": "FAIL"}, "xfs": {"verdict": xfs}}]

    cases = {0: run("FAIL"), 1: run("FAIL"), 2: run("PASS"), 3: run("PASS")}
    summary, _ = _bisect(tmp_path, monkeypatch, {}, cases=cases, case="xfs")
    assert summary["result"]["changed"] and summary["result"]["first_bad"]["label"] == "p2"
    assert "following case 'xfs'" in report(summary)
    # Without --case the sub-run verdict is FAIL everywhere: unchanged.
    cases = {0: run("FAIL"), 3: run("PASS")}
    summary, _ = _bisect(tmp_path, monkeypatch, {}, cases=cases)
    assert summary["result"]["changed"] is False


def test_a_followed_case_that_did_not_run_is_inconclusive(tmp_path, monkeypatch) -> None:
    cases = {0: [{"raw": {"verdict": "PASS"}}, {"raw": {"verdict": "PASS"}}]}
    summary, runs = _bisect(tmp_path, monkeypatch, {}, cases=cases, case="xfs")
    assert summary["result"]["inconclusive"]["label"] == "base" and runs == [0, 0]


def test_a_rate_step_whose_repetitions_all_errored_is_inconclusive(tmp_path, monkeypatch) -> None:
    """Every repetition of the ends ended in ERROR: inconclusive at the base, never 'unchanged'."""
    errored = {"verdict": "ERROR", "repetitions": {"runs": 20, "passed": 0, "failed": 0, "other": 20}}
    cases = {i: [{"c": dict(errored)} for _ in range(4)] for i in range(4)}
    summary, runs = _bisect(tmp_path, monkeypatch, {}, cases=cases, case="c", repeat=20)
    assert summary["result"]["changed"] is None
    assert summary["result"]["inconclusive"]["label"] == "base" and runs == [0]
    assert "no repetition completed" in report(summary)


def test_a_base_that_already_fails_stops_the_rate_bisect(tmp_path, monkeypatch) -> None:
    """The kernel-full demo's trap: the reproducer reads a file only patch 1 adds, so the base fails
    20/20 and the end 8/20. The bisect says so after the two ends, not after 120 runs of a middle step."""
    def rep(failed: int) -> list[dict]:
        return [{"c": {"verdict": "FAIL", "repetitions": {"runs": 20, "passed": 20 - failed, "failed": failed, "other": 0}}}]

    summary, runs = _bisect(tmp_path, monkeypatch, {}, cases={0: rep(20), 3: rep(8)}, case="c", repeat=20)
    assert runs == [0, 3]
    assert summary["result"]["base_fails"]["base"]["failed"] == 20
    assert "the base already fails: 20/20" in report(summary)
    from lab.bisect import exit_status

    assert exit_status(summary["result"]) == 3
