"""Parsers and verdict rules of the stable-pages scenario."""

import json

import pytest

from lab.scenarios import kmsg
from lab.scenarios.stable_pages import EXPECT_FILE, parse_block_size, table
from lab.scenarios.verdict import (ERROR, FAIL, PASS, Expectation, combine, expectation_for, judge, outcome,
                                   parse_program_output)
from lab.errors import UsageError

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


def out(ops=100, ok=100, short=0, errno=None, mutations=10):
    return json.dumps({"ops": ops, "ok": ok, "short": short, "errno": errno or {}, "mutations": mutations})


def test_parse_program_output_rejects_what_is_not_a_result():
    assert parse_program_output("").error == "no output"
    assert "unreadable" in parse_program_output('{"ops": 12, "ok"').error  # truncated
    assert parse_program_output('{"error": "open /x: No such file"}').error.startswith("open")
    assert parse_program_output(out(ops=0, ok=0)).error == "no I/O was done"
    assert "lacks" in parse_program_output('{"ops": 3}').error
    good = parse_program_output("compiler noise\n" + out())
    assert good.error is None and good.data["ops"] == 100


def test_verdict_rules():
    clean = parse_program_output(out())
    eilseq = parse_program_output(out(ok=60, errno={"84": 40}))
    eio = parse_program_output(out(ok=99, errno={"5": 1}))
    einval = parse_program_output(out(ok=90, errno={"22": 10}))
    shorts = parse_program_output(out(ok=99, short=1))
    broken = parse_program_output('{"ops": 1')
    assert judge(clean, clean)[0] == PASS
    verdict, reason = judge(eilseq, clean)
    assert verdict == FAIL and "EILSEQ x40" in reason and "40 of 100" in reason
    assert judge(eio, clean)[0] == FAIL
    assert judge(shorts, clean)[0] == FAIL
    assert judge(clean, eilseq)[0] == FAIL  # errors without mutation: the setup itself is broken
    assert judge(einval, clean)[0] == ERROR  # not an integrity failure: the run was not made right
    assert judge(broken, clean)[0] == ERROR
    assert judge(None, clean)[0] == ERROR
    assert judge(clean, None)[0] == ERROR


def test_combine():
    assert combine([PASS, PASS]) == PASS
    assert combine([PASS, FAIL]) == FAIL
    assert combine([FAIL, ERROR]) == ERROR
    assert combine([]) == ERROR


def test_shipped_expectations():
    assert expectation_for(EXPECT_FILE, "xfs", "6.12.117+deb12-amd64").verdict == FAIL
    assert expectation_for(EXPECT_FILE, "xfs", "7.3.4+deb13-amd64").verdict == PASS
    assert expectation_for(EXPECT_FILE, "xfs", "7.0.0").verdict == PASS
    assert expectation_for(EXPECT_FILE, "raw", "7.3.4+deb13-amd64").verdict == FAIL
    assert expectation_for(EXPECT_FILE, "raw", "6.12.117").verdict == FAIL


def test_outcomes():
    fail = Expectation(FAIL, "")
    ok = Expectation(PASS, "")
    assert outcome(FAIL, fail) == "as expected"
    assert outcome(PASS, fail) == "unexpected pass (finding)"
    assert outcome(FAIL, ok) == "unexpected failure (regression)"
    assert outcome(ERROR, ok) == "error"
    assert outcome(PASS, None) == "no expectation"


def test_block_sizes():
    assert parse_block_size("4K") == 4096 and parse_block_size("1M") == 1 << 20 and parse_block_size("65536") == 65536
    for bad in ("4k5", "100", "0", "32M"):
        with pytest.raises(UsageError):
            parse_block_size(bad)


def test_table_shows_kernels_side_by_side():
    case = {"verdict": FAIL, "outcome": "as expected", "reason": "", "runs": {
        "mutate": {"ops": 10, "ok": 2, "short": 0, "errno": {"84": 8}, "mib_per_s": 0.1},
        "control": {"ops": 5, "ok": 5, "short": 0, "errno": {}, "mib_per_s": 3.0}},
        "kernel_messages": {"mutate": {"integrity_lines": 8, "suppressed_total": 100}}}
    results = {"kernels": {"a": {"release": "6.12", "verdict": FAIL, "cases": {"xfs-write-64K": case}},
                           "b": {"release": "7.3", "verdict": ERROR, "reason": "boot failed", "cases": {}}}}
    text = table(results)
    assert "8/10 failed EILSEQ" in text and "boot failed" in text and "ERROR" in text
