"""Parsers and verdict rules: the guest-program parser, the stable-pages judge, aggregation and expectations.
Every rule that keeps a verdict from passing vacuously has its test here."""

import json

import pytest

from lab.errors import UsageError
from lab.scenarios import kmsg
from lab.scenarios.expect import expectation_for, outcome
from lab.scenarios.stable_pages import StablePages, judge, parse_block_size, side_by_side
from lab.scenarios.verdict import ERROR, FAIL, INFO, NOT_APPLICABLE, PASS, aggregate, combine, parse_program_output

DMESG = """[   12.000001] nvme0n1: I/O Cmd(0x1) @ LBA 1024, 16 blocks, I/O Error (sct 0x2 / sc 0x82)
[   12.000002] protection error, dev nvme0n1, sector 8192 op 0x1:(WRITE) flags 0x8800 phys_seg 16 prio class 0
[   12.000003] protection error, dev nvme0n1, sector 8320 op 0x1:(WRITE) flags 0x8800 phys_seg 16 prio class 0
[   13.100000] blk_print_req_error: 4158 callbacks suppressed
[   13.100001] nvme_log_error: 12 callbacks suppressed
[   14.000000] nvme0n1: guard tag error at sector 1024 (rcvd 1a2b, want 3c4d)
[   14.000001] blk_print_req_error: 2 callbacks suppressed
[   14.2] unrelated line
"""


def test_kmsg_counts_and_rate_limit_lines():
    m = kmsg.parse(DMESG)
    assert m.protection_errors == 2
    assert m.guard_tag_errors == 1
    assert m.nvme_pi_status == 1
    assert m.suppressed == {"blk_print_req_error": 4160, "nvme_log_error": 12}
    assert m.suppressed_total == 4172
    assert m.integrity_lines == 4
    assert len(m.samples) == 3  # one sample per kind of line


def test_kmsg_truncated_and_empty_text():
    truncated = DMESG[: DMESG.index("callbacks") + 5]  # cut in the middle of a line
    m = kmsg.parse(truncated)
    assert m.protection_errors == 2 and m.suppressed == {}
    assert kmsg.parse("").integrity_lines == 0


def out(ops=100, ok=100, short=0, errno=None, mutations=10, prefill_errors=0):
    return json.dumps({"ops": ops, "ok": ok, "short": short, "errno": errno or {}, "mutations": mutations,
                       "prefill_errors": prefill_errors})


PI_LOG = kmsg.parse("[ 1.0] nvme0n1: guard tag error at sector 8 (rcvd 1, want 2)")
QUIET_LOG = kmsg.parse("")


def test_parse_program_output_rejects_what_is_not_a_result():
    assert parse_program_output("").error == "no output"
    assert "unreadable" in parse_program_output('{"ops": 12, "ok"').error  # truncated
    assert parse_program_output('{"error": "open /x: No such file"}').error.startswith("open")
    assert "nothing was done" in parse_program_output(out(ops=0, ok=0)).error
    assert "lacks" in parse_program_output('{"ops": 3}').error
    assert parse_program_output("[1, 2]").error == "output is not a JSON object"
    good = parse_program_output("compiler noise\n" + out())
    assert good.error is None and good.data["ops"] == 100
    # Other programs name what counts as work done: an empty case list is nothing done.
    assert "nothing was done" in parse_program_output('{"cases": []}', required=("cases",), count="cases").error
    assert parse_program_output('{"cases": [1]}', required=("cases",), count="cases").error is None


def test_program_results_decide_pass_fail_and_error():
    clean = parse_program_output(out())
    eilseq = parse_program_output(out(ok=60, errno={"84": 40}))
    einval = parse_program_output(out(ok=90, errno={"22": 10}))
    shorts = parse_program_output(out(ok=99, short=1))
    broken = parse_program_output('{"ops": 1')
    assert judge(clean, clean)[0] == PASS
    verdict, reason = judge(eilseq, clean, PI_LOG, QUIET_LOG)
    assert verdict == FAIL and "EILSEQ x40" in reason and "40 of 100" in reason
    assert judge(shorts, clean)[0] == FAIL
    assert judge(clean, eilseq, QUIET_LOG, PI_LOG)[0] == FAIL  # errors without mutation: the setup itself is broken
    assert judge(einval, clean)[0] == ERROR  # not an integrity failure: the run was not made right
    assert judge(broken, clean)[0] == ERROR
    assert judge(None, clean)[0] == ERROR
    assert judge(clean, None)[0] == ERROR
    assert judge(clean, None, control_expected=False) == (PASS, "0 of 100 operations failed with 10 buffer mutations (no control run)")


def test_eio_is_an_integrity_error_only_with_a_pi_error_in_the_kernel_log():
    eio = parse_program_output(out(ok=99, errno={"5": 1}))
    clean = parse_program_output(out())
    assert judge(eio, clean, PI_LOG, QUIET_LOG)[0] == FAIL
    verdict, reason = judge(eio, clean, QUIET_LOG, QUIET_LOG)
    assert verdict == ERROR and "I/O error not explained by PI" in reason
    verdict, reason = judge(eio, clean, None, None)
    assert verdict == ERROR and "not explained by PI" in reason


def test_nothing_mutated_is_an_error_never_a_pass():
    still = parse_program_output(out(mutations=0))
    clean = parse_program_output(out())
    verdict, reason = judge(still, clean)
    assert verdict == ERROR and "changed the buffer 0 times" in reason
    # Also when the I/O itself failed: without mutations the failure says nothing about stable pages.
    assert judge(parse_program_output(out(ok=50, errno={"84": 50}, mutations=0)), clean, PI_LOG)[0] == ERROR
    # A thread that could not start is reported by the program as an error object.
    assert judge(parse_program_output('{"error": "cannot start the mutating thread: Resource temporarily unavailable"}'),
                 clean)[0] == ERROR


def test_reads_over_a_failed_prefill_check_nothing():
    verdict, reason = judge(parse_program_output(out(prefill_errors=3)), parse_program_output(out()))
    assert verdict == ERROR and "prefill" in reason


def test_combine_and_aggregate():
    assert combine([PASS, PASS]) == PASS
    assert combine([PASS, FAIL]) == FAIL
    assert combine([FAIL, ERROR]) == ERROR
    assert combine([]) == ERROR

    def c(v):
        return {"verdict": v, "reason": f"{v.lower()} reason"}

    assert aggregate({}) == (ERROR, "no case ran")
    assert aggregate({"a": c(PASS), "b": c(FAIL)}) == (FAIL, "1 of 2 case(s) failed; first: b: fail reason")
    assert aggregate({"a": c(PASS), "b": c(ERROR), "x": c(FAIL)})[0] == ERROR
    assert aggregate({"a": c(PASS), "i": c(INFO), "n": c(NOT_APPLICABLE)}) == (PASS, "1 case(s) passed")
    verdict, reason = aggregate({"i": c(INFO), "n": c(NOT_APPLICABLE)})
    assert verdict == ERROR and "nothing was tested" in reason
    # The one line says why: the first case that did not run, not an INFO line.
    assert reason.endswith("; first: n: n/a reason"), reason


def test_shipped_expectations():
    rules = StablePages.expect_file
    assert expectation_for(rules, {"target": "xfs"}, "6.12.117+deb12-amd64").verdict == FAIL
    assert expectation_for(rules, {"target": "xfs"}, "7.3.4+deb13-amd64").verdict == PASS
    assert expectation_for(rules, {"target": "xfs"}, "7.0.0").verdict == PASS
    assert expectation_for(rules, {"target": "raw"}, "7.3.4+deb13-amd64").verdict == FAIL
    assert expectation_for(rules, {"target": "raw"}, "6.12.117").verdict == FAIL
    assert expectation_for(rules, {"target": "nope"}, "6.12.117") is None


def test_expectation_files_are_checked(tmp_path):
    bad = tmp_path / "expect.toml"
    bad.write_text("[[expect]]\nverdict = 'MAYBE'\n")
    with pytest.raises(UsageError, match="rule 1: verdict: Input should be 'PASS' or 'FAIL'"):
        expectation_for(bad, {}, "7.3")
    bad.write_text("[[expect]\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        expectation_for(bad, {}, "7.3")


def test_ci_reads_each_verdict_against_its_expectation():
    assert outcome(FAIL, FAIL) == "as expected"
    assert outcome(PASS, FAIL) == "unexpected pass (finding)"
    assert outcome(FAIL, PASS) == "unexpected failure (regression)"
    assert outcome(FAIL, None) == "unexpected failure (regression)"  # without a rule, PASS is expected
    assert outcome(ERROR, PASS) == "error"
    assert outcome(PASS, None) == "as expected"
    assert outcome(NOT_APPLICABLE, None) == "not applicable"


def test_block_sizes_are_multiples_of_512_up_to_16m():
    assert parse_block_size("4K") == 4096 and parse_block_size("1M") == 1 << 20 and parse_block_size("65536") == 65536
    for bad in ("4k5", "100", "0", "32M", "nan", "-4K"):
        with pytest.raises(UsageError):
            parse_block_size(bad)


def test_table_shows_kernels_side_by_side():
    case = {"verdict": FAIL, "outcome": "as expected", "reason": "", "runs": {
        "mutate": {"ops": 10, "ok": 2, "short": 0, "errno": {"84": 8}, "mib_per_s": 0.1},
        "control": {"ops": 5, "ok": 5, "short": 0, "errno": {}, "mib_per_s": 3.0}},
        "kernel_messages": {"mutate": {"integrity_lines": 8, "suppressed_total": 100}}}
    results = {"subruns": {"a": {"release": "6.12", "verdict": FAIL, "outcome": "as expected", "cases": {"xfs-write-64K": case}},
                           "b": {"release": "7.3", "verdict": ERROR, "outcome": "error", "reason": "boot failed", "cases": {}}}}
    text = side_by_side(results)
    assert "8/10 failed EILSEQ" in text and "ERROR" in text and "as expected" in text
