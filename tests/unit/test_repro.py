"""lab repro without guests: what fails a run (exit status, fio job errors, the kernel log), the
repetition tally and rate of a case, and the options a reproducer needs."""

from __future__ import annotations

import json

import pytest

from lab.errors import UsageError
from lab import kernel_log
from lab.scenarios.framework import merge_repetition
from lab.scenarios.options import validate
from lab.scenarios.repro import ReproOptions, fio_errors, judge

DMESG = """[  5.1] WARNING: CPU: 1 PID: 77 at fs/iomap/direct-io.c:123 iomap_dio_bio_end_io+0x10/0x20
[  5.2] ------------[ cut here ]------------
[  6.0] BUG: KASAN: use-after-free in nfs_direct_write_completion+0x1/0x2
[  7.0] INFO: task fio:123 blocked for more than 120 seconds.
[  8.0] nvme0n1: guard tag error at sector 8 (rcvd 1, want 2)
[  9.0] Oops: general protection fault, probably for non-canonical address
"""


def test_kernel_problems_are_found_by_kind():
    found = kernel_log.summary(DMESG)
    assert set(found) == {"warning", "sanitizer", "hung_task", "oops", "pi_read"}
    assert "iomap_dio_bio_end_io" in found["warning"][0]
    assert kernel_log.summary("[ 1.0] random: crng init done\n") == {}


def test_what_fails_a_run():
    assert judge(0, {}, []) == ("PASS", "exit status 0, nothing in the kernel log")
    assert judge(3, {}, []) == ("FAIL", "exit status 3")
    verdict, reason = judge(0, {"warning": ["WARNING: at x"]}, [])
    assert verdict == "FAIL" and "kernel: warning (WARNING: at x)" in reason  # a clean exit with a WARN still fails
    assert judge(0, {}, ["write: error 84"]) == ("FAIL", "fio write: error 84")
    assert judge(None, {}, [], "did not finish within 60 s (hung?)")[0] == "FAIL"
    # 125, as for git bisect run: the reproducer could not test. ERROR, unless the kernel logged a problem.
    assert judge(125, {}, [])[0] == "ERROR" and "could not test (exit 125" in judge(125, {}, [])[1]
    assert judge(125, {"bug": ["BUG: KASAN: x"]}, [])[0] == "FAIL"


def test_fio_report_parsing():
    report = {"fio version": "fio-3.39", "jobs": [{"jobname": "a", "error": 0}, {"jobname": "b", "error": 84}]}
    parsed, failed = fio_errors("fio: some notice\n" + json.dumps(report))
    assert parsed["fio version"] == "fio-3.39" and failed == ["b: error 84"]
    assert fio_errors("no json here") == (None, [])


def test_repetitions_keep_a_tally_a_rate_and_the_first_failure():
    case = None
    for rep, verdict in enumerate(["PASS", "FAIL", "PASS", "FAIL"], start=1):
        case = merge_repetition(case, {"verdict": verdict, "reason": f"run {rep}", "log": f"rep{rep}/dmesg"}, rep)
    assert case["verdict"] == "FAIL" and case["repetitions"] == {"runs": 4, "passed": 2, "failed": 2, "other": 0, "errored": 0}
    assert case["first_failure"]["repetition"] == 2 and case["first_failure"]["log"] == "rep2/dmesg"
    assert case["rate"]["failed"] == 2 and case["rate"]["runs"] == 4
    assert case["reason"].startswith("2/4 failed (50 %, 95 % CI 15-85 %); first (repetition 2): run 2")
    ok = merge_repetition(None, {"verdict": "PASS", "reason": "fine"}, 1)
    assert ok["verdict"] == "PASS" and ok["rate"]["failed"] == 0


def test_an_errored_repetition_never_merges_into_a_pass():
    """Three passes and a repetition whose guest program crashed: ERROR, the rate over the three that
    completed, and the count of those that errored in the reason."""
    case = None
    for rep, verdict in enumerate(["PASS", "ERROR", "PASS", "PASS"], start=1):
        case = merge_repetition(case, {"verdict": verdict, "reason": f"run {rep}"}, rep)
    assert case["verdict"] == "ERROR" and case["repetitions"]["errored"] == 1
    assert case["rate"]["runs"] == 3 and case["rate"]["failed"] == 0
    assert case["reason"] == "1 of 4 repetitions errored (passed 3); first (repetition 2): run 2"
    case = merge_repetition(case, {"verdict": "FAIL", "reason": "data differed"}, 5)
    assert case["verdict"] == "FAIL" and case["reason"].endswith("; 1 of 5 repetitions errored")


def test_repro_options(tmp_path):
    with pytest.raises(UsageError, match="give a command"):
        validate(ReproOptions, {})
    with pytest.raises(UsageError, match="no such file"):
        validate(ReproOptions, {"command": "true", "put": [str(tmp_path / "missing")]})
    with pytest.raises(UsageError, match="--max-time goes with --until-fail"):
        validate(ReproOptions, {"command": "true", "max_time": 10})
    assert validate(ReproOptions, {"command": "true", "until_fail": True, "max_time": "60"}).max_time == 60.0
