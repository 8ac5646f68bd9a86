"""A suite's results read as a kdevops baseline reads them: each test's status (pass, fail, notrun,
timeout) against the known-issues entries for this kernel, and the rerun of a failure nobody knew of,
gives its class; the class gives the verdict CI acts on. Shared by fstests and blktests."""

from __future__ import annotations

from typing import Any

from lab.scenarios.verdict import ERROR, FAIL, NOT_APPLICABLE, PASS
from lab.scenarios.verdict import FLAKY as FLAKY_V

PASS_S, FAIL_S, NOTRUN_S, TIMEOUT_S = "pass", "fail", "notrun", "timeout"

STATUS_VERDICT = {PASS_S: PASS, FAIL_S: FAIL, NOTRUN_S: NOT_APPLICABLE}

PASSED, KNOWN, NEW, FIXED, FLAKY, NOTRUN, UNREPORTED, HUNG = ("pass", "known failure", "new failure", "fixed", "flaky",
                                                             "notrun", "not reported", "timed out")


def classify(status: str, known_failure: bool, rerun: str | None = None) -> str:
    """A test's class from its status, whether a known-issues entry says it fails on this kernel,
    and its status when a failure nobody knew of was run again."""
    if status == NOTRUN_S:
        return NOTRUN
    if status == PASS_S:
        return FIXED if known_failure else PASSED
    if status == FAIL_S:
        if known_failure:
            return KNOWN
        return FLAKY if rerun == PASS_S else NEW
    if status == TIMEOUT_S:  # killed after --test-timeout: a hang is new even for a test known to fail
        return HUNG
    return UNREPORTED


def class_verdict(cls: str) -> tuple[str, str]:
    """(verdict, expected verdict) so that CI's outcome follows the class: a known failure is an
    expected FAIL, a new failure a regression, a fix a finding, a flake its own verdict (FLAKY)."""
    return {PASSED: (PASS, PASS), KNOWN: (FAIL, FAIL), NEW: (FAIL, PASS), FIXED: (PASS, FAIL), FLAKY: (FLAKY_V, PASS),
            NOTRUN: (NOT_APPLICABLE, PASS), UNREPORTED: (ERROR, PASS), HUNG: (FAIL, PASS)}[cls]


def test_verdict(status: str) -> tuple[str, str]:
    """A test's verdict: pass and fail as they are, notrun not applicable, unreported an ERROR."""
    if status in STATUS_VERDICT:
        return STATUS_VERDICT[status], status
    return ERROR, "check did not report this test (it stopped, timed out or crashed before it)"


def side_by_side(results: dict[str, Any], runs_key: str = "runs") -> list[str]:
    """One table of every sub-run's runs (kernel x PI format x transport or section): a row per test,
    a column per (sub-run, run), each cell the test's class, so a matrix reads across."""
    columns: list[tuple[str, str, dict[str, Any]]] = []
    for label, sub in results.get("subruns", {}).items():
        for run, data in (sub.get(runs_key) or {}).items():
            columns.append((label, run, data))
    if len(columns) < 2 or len(results.get("subruns", {})) < 2:
        return []
    tests = list(dict.fromkeys(t for _, _, d in columns for t in (d.get("tests") or d.get("statuses") or {})))
    if not tests:
        return []
    width = min(28, max(15, *(len(label) + 2 for label, _, _ in columns), *(len(run) + 2 for _, run, _ in columns)))
    lines = ["side by side:", f"  {'':14}" + "".join(f"{label[:width - 1]:>{width}}" for label, _, _ in columns),
             f"  {'test':14}" + "".join(f"{run:>{width}}" for _, run, _ in columns)]
    for test in tests:
        cells = []
        for _, _, data in columns:
            value = (data.get("classes") or {}).get(test) or (data.get("statuses") or {}).get(test, "-")
            cells.append(f"{str(value)[:width - 1]:>{width}}")
        lines.append(f"  {test:14}" + "".join(cells))
    return lines
