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
