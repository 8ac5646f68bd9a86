"""A suite's results read as a kdevops baseline reads them: each test's status (pass, fail, notrun,
timeout) against the known-issues entries for this kernel, and the rerun of a failure nobody knew of,
gives its class; the class gives the verdict CI acts on. Shared by fstests and blktests."""

from __future__ import annotations

from lab.scenarios.verdict import ERROR, FAIL, NOT_APPLICABLE, PASS

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
    if status == TIMEOUT_S:  # killed after --test-timeout: a hang is a failure unless it is known
        return KNOWN if known_failure else HUNG
    return UNREPORTED


def class_verdict(cls: str) -> tuple[str, str]:
    """(verdict, expected verdict) so that CI's outcome follows the class: a known failure is an
    expected FAIL, a new failure a regression, a fix a finding, a flake a PASS that says so."""
    return {PASSED: (PASS, PASS), KNOWN: (FAIL, FAIL), NEW: (FAIL, PASS), FIXED: (PASS, FAIL), FLAKY: (PASS, PASS),
            NOTRUN: (NOT_APPLICABLE, PASS), UNREPORTED: (ERROR, PASS), HUNG: (FAIL, PASS)}[cls]


def test_verdict(status: str) -> tuple[str, str]:
    """A test's verdict: pass and fail as they are, notrun not applicable, unreported an ERROR."""
    if status in STATUS_VERDICT:
        return STATUS_VERDICT[status], status
    return ERROR, "check did not report this test (it stopped, timed out or crashed before it)"
