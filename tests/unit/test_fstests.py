"""The nfs-fstests runner without guests: the check script run for real against a tiny fake fstests
tree, the parsers of check's console output and xunit report, test lists and the table."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.scenarios import fstests, suite

FAKE = Path(__file__).resolve().parent.parent / "fixtures" / "fstests-fake"

CONSOLE = """\
FSTYP         -- nfs
PLATFORM      -- Linux/x86_64 client 7.3.4+deb13-amd64
MOUNT_OPTIONS -- -o vers=4.2,proto=rdma,port=20049 10.0.0.1:/export/scratch /mnt/fstests-scratch

generic/091 5s ...  4s
generic/130        12s
generic/139       - output mismatch (see /root/fstests/results//generic/139.out.bad)
    --- tests/generic/139.out	2026-11-22 07:00:00
    +++ /root/fstests/results//generic/139.out.bad
generic/143       [not run] this test requires a valid $SCRATCH_DEV
generic/154       [failed, exit status 1]- output mismatch (see /root/fstests/results//generic/154.out.bad)
generic/155       _check_generic_filesystem: filesystem on 10.0.0.1:/export/test is inconsistent
generic/183       [expunged]
Ran: generic/091 generic/130 generic/139 generic/143 generic/154 generic/155
Not run: generic/143
Failures: generic/139 generic/154 generic/155
Failed 3 of 6 tests
"""

XUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="xfstests" failures="1" skipped="1" tests="3" time="9">
  <properties><property name="FSTYP" value="nfs"/></properties>
  <testcase classname="xfstests.global" name="generic/091" time="4"></testcase>
  <testcase classname="xfstests.global" name="generic/139" time="1">
    <failure message="- output mismatch" type="TestFail"/><system-out>diff</system-out>
  </testcase>
  <testcase classname="xfstests.global" name="generic/143" time="0"><skipped message="requires SCRATCH_DEV"/></testcase>
</testsuite>
"""


def test_check_console_gives_each_tests_status() -> None:
    assert fstests.parse_check_output(CONSOLE) == {
        "generic/091": "pass", "generic/130": "pass", "generic/139": "fail", "generic/143": "notrun",
        "generic/154": "fail", "generic/155": "fail", "generic/183": "notrun",
    }


def test_xunit_report_gives_statuses_and_durations() -> None:
    assert fstests.parse_xunit(XUNIT) == {"generic/091": "pass", "generic/139": "fail", "generic/143": "notrun"}
    assert fstests.parse_xunit("<not xml") == {}
    # The report times a failure too (check's console line does not); a test that did not run has none.
    assert fstests.xunit_durations(XUNIT) == {"generic/091": 4, "generic/139": 1}
    assert fstests.xunit_durations("<not xml") == {}


def test_fstests_lists_come_from_presets_and_names_are_checked() -> None:
    assert fstests.resolve_tests(None, None) == fstests.PRESETS["nfs-dio"]
    assert len(fstests.PRESETS["nfs-dio"]) == 27 and "generic/760" in fstests.PRESETS["nfs-dio"]
    assert fstests.resolve_tests(["generic/001,generic/002", "generic/001"], None) == ["generic/001", "generic/002"]
    with pytest.raises(UsageError, match="expected names like generic/091"):
        fstests.resolve_tests(["generic/1; rm -rf /"], None)
    with pytest.raises(UsageError, match="known presets"):
        fstests.resolve_tests(None, "nope")


def test_runner_against_the_fake_tree(tmp_path: Path) -> None:
    """The same script the client runs, run here: the fake tree's generic/001 needs an NFS mount and
    fails without one, 002 always fails, 003 never runs, 999 does not exist."""
    tree = tmp_path / "fstests"
    shutil.copytree(FAKE, tree)
    config = fstests.local_config("10.0.0.1", "vers=4.2,proto=tcp")
    config = config.replace(fstests.TEST_DIR, str(tmp_path / "test")).replace(fstests.SCRATCH_MNT, str(tmp_path / "scratch"))
    tests = ["generic/001", "generic/002", "generic/003", "generic/999"]
    script = fstests.check_script(str(tree), config, tests).replace(fstests.TEST_DIR, str(tmp_path / "test"))
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "NFS_MOUNT_OPTIONS='-o vers=4.2,proto=tcp'" in (tree / "local.config").read_text()
    parsed = fstests.results_from(res.stdout, tests)
    assert parsed["source"] == "xunit" and parsed["check_exit"] == 1
    assert parsed["statuses"] == {"generic/001": "fail", "generic/002": "fail", "generic/003": "notrun",
                                  "generic/999": "not reported"}
    assert "is not an NFS mount" in (tree / "results/generic/001.out.bad").read_text()
    assert [suite.test_verdict(s)[0] for s in parsed["statuses"].values()] == ["FAIL", "FAIL", "N/A", "ERROR"]
    # Console output alone gives the same statuses (a tree whose check has no xunit reporter).
    assert fstests.parse_check_output(res.stdout.split("LAB-CHECK-EXIT")[0]) == {
        "generic/001": "fail", "generic/002": "fail", "generic/003": "notrun"}


def test_verdicts_and_table() -> None:
    from lab.scenarios.verdict import aggregate

    def cases(statuses):
        return {t: {"verdict": suite.test_verdict(s)[0], "reason": suite.test_verdict(s)[1]} for t, s in statuses.items()}

    assert aggregate(cases({"generic/001": "pass", "generic/003": "notrun"}))[0] == "PASS"
    assert aggregate(cases({"generic/001": "pass", "generic/002": "fail"}))[0] == "FAIL"
    # Nothing tested is an ERROR, never a PASS: every test notrun, or none reported.
    verdict, reason = aggregate(cases({"generic/001": "notrun", "generic/003": "notrun"}))
    assert verdict == "ERROR" and "nothing was tested" in reason
    assert aggregate(cases({"generic/001": "not reported"}))[0] == "ERROR"
    results = {"subruns": {"debian-7.3": {"verdict": "FAIL", "release": "7.3.4", "reason": "", "cases": {}, "transports": {
        "tcp": {"statuses": {"generic/001": "pass", "generic/002": "fail"}},
        "rdma": {"statuses": {"generic/001": "pass", "generic/002": "notrun"}}}}}}
    text = fstests.NfsFstests.table(fstests.NfsFstests.__new__(fstests.NfsFstests), results)
    assert "generic/002" in text and "tcp: 1 pass, 1 fail, 0 notrun" in text and "rdma: 1 pass, 0 fail, 1 notrun" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("generic/002"))
    assert row.split()[1:] == ["fail", "notrun"]


def test_tarball_leaves_out_git_and_results(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    shutil.copytree(FAKE, tree)
    (tree / ".git").mkdir()
    (tree / ".git/HEAD").write_text("x")
    (tree / "results").mkdir()
    (tree / "results/old").write_text("x")
    names = tarfile.open(fileobj=io.BytesIO(fstests.tree_tarball(tree))).getnames()
    assert "fstests/check" in names and "fstests/tests/generic/001" in names
    assert not any(n.split("/")[1:2] in (
        [".git"], ["results"]) for n in names)
    (tree / "ltp/fsstress.o").write_text("x")
    assert "fstests/ltp/fsstress.o" not in tarfile.open(fileobj=io.BytesIO(fstests.tree_tarball(tree))).getnames()


def test_a_check_that_stopped_at_once_reports_its_own_message():
    from lab.scenarios.fstests import results_from, startup_failure

    output = "SECTION       -- nfs\nbc not found\nLAB-CHECK-EXIT 1\n"
    parsed = results_from(output, ["generic/001", "generic/091"])
    assert set(parsed["statuses"].values()) == {"not reported"}
    assert startup_failure(output) == "bc not found"
    assert startup_failure("common/config: Error: $TEST_DEV is not a block device\nLAB-CHECK-EXIT 1") .startswith("common/config: Error")
    assert startup_failure("LAB-CHECK-EXIT 1\n") == "check printed nothing"


def test_each_result_is_read_against_the_known_issues():
    from lab.scenarios.suite import class_verdict, classify
    from lab.scenarios.expect import outcome

    cases = {
        ("pass", False, None): ("pass", "as expected"),
        ("fail", True, None): ("known failure", "as expected"),
        ("fail", False, "fail"): ("new failure", "unexpected failure (regression)"),
        ("fail", False, None): ("new failure", "unexpected failure (regression)"),
        ("fail", False, "pass"): ("flaky", "flaky"),
        ("pass", True, None): ("fixed", "unexpected pass (finding)"),
        ("notrun", True, None): ("notrun", "not applicable"),
        ("not reported", False, None): ("not reported", "error"),
        ("timeout", True, None): ("timed out", "unexpected failure (regression)"),  # a known failure that hangs is new
    }
    for (status, known, rerun), (cls, read_as) in cases.items():
        assert classify(status, known, rerun) == cls, (status, known, rerun)
        verdict, expected = class_verdict(cls)
        assert outcome(verdict, expected) == read_as, cls


def test_a_known_issue_matches_by_test_transport_and_kernel_and_keeps_its_link(tmp_path):
    from lab.scenarios.expect import expectation_for, load_rules

    f = tmp_path / "known.toml"
    f.write_text('[[expect]]\ntest = "generic/095"\nkernel_below = "7.0"\nverdict = "FAIL"\n'
                 'why = "mmap and splice mix"\nlink = "https://lore.kernel.org/x"\n')
    load_rules.cache_clear()
    rule = expectation_for(f, {"test": "generic/095", "transport": "tcp"}, "6.12.117+deb13-amd64")
    assert rule is not None and rule.verdict == "FAIL" and rule.link == "https://lore.kernel.org/x"
    assert expectation_for(f, {"test": "generic/095", "transport": "tcp"}, "7.3.4") is None
    assert expectation_for(f, {"test": "generic/091", "transport": "tcp"}, "6.12.1") is None


def test_the_shipped_known_issues_tell_the_bounce_series_apart_by_kernel_and_file_system():
    # Seen here: generic/761 fails on XFS over PI before 7.0 only, on ext4 on both kernels (the
    # series bounces XFS only); generic/095 on both.
    from lab.scenarios.expect import expectation_for, load_rules

    shipped = Path(__file__).resolve().parents[2] / "scenarios" / "fstests" / "known-issues.toml"
    load_rules.cache_clear()

    def known(test: str, section: str, release: str) -> bool:
        facets = {"test": test, "section": section, "pi": 1, "pif": 0, "lba": 4096}
        return expectation_for(shipped, facets, release) is not None

    assert known("generic/761", "xfs", "6.12.117+deb13-amd64")
    assert not known("generic/761", "xfs", "7.3.4+deb13-amd64")
    assert known("generic/761", "ext4", "7.3.4+deb13-amd64")
    assert known("generic/095", "xfs", "7.3.4+deb13-amd64")
    assert not known("generic/091", "xfs", "6.12.117+deb13-amd64")
    assert "generic/761" in fstests.PRESETS["pi-dio"]


def test_a_known_issues_file_that_is_missing_or_broken_stops_before_boot(tmp_path):
    from lab.errors import UsageError
    from lab.scenarios import framework
    from lab.scenarios.options import validate

    fake = Path(__file__).resolve().parent.parent / "fixtures" / "fstests-fake"
    cls = framework.get("nfs-fstests")
    with pytest.raises(UsageError, match="no such file"):
        cls(validate(cls.Options, {"fstests": str(fake), "test": ["generic/001"], "known_issues": [str(tmp_path / "nope.toml")]})).plan()
    bad = tmp_path / "bad.toml"
    bad.write_text("[[expect]]\ntest = 'generic/001'\n")
    with pytest.raises(UsageError, match="verdict"):
        cls(validate(cls.Options, {"fstests": str(fake), "test": ["generic/001"], "known_issues": [str(bad)]})).plan()


def test_details_and_durations_from_the_console() -> None:
    console = """generic/091 5s ...  12s
generic/095       - output mismatch (see /root/fstests/results//generic/095.out.bad)
    --- tests/generic/095.out	2026-11-23 21:00:00
    +++ /root/fstests/results//generic/095.out.bad	2026-11-23 21:05:00
    @@ -1,2 +1,3 @@
     QA output created by 095
    +pwrite: Invalid or incomplete multibyte or wide character
    ...
    (Run 'diff -u /root/fstests/tests/generic/095.out /root/fstests/results//generic/095.out.bad'  to see the entire diff)
generic/263       [not run] fsx not built with AIO
Ran: generic/091 generic/095 generic/263
"""
    details = fstests.check_details(console)
    assert details["generic/263"] == ["fsx not built with AIO"]
    assert details["generic/095"] == ["- output mismatch (see /root/fstests/results//generic/095.out.bad)",
                                      "+pwrite: Invalid or incomplete multibyte or wide character"]
    assert "generic/091" not in details
    assert fstests.durations(console) == {"generic/091": 12}
    parsed = fstests.results_from(console + "LAB-CHECK-EXIT 1\n", ["generic/091", "generic/095", "generic/263"])
    assert parsed["seconds_per_test"] == {"generic/091": 12} and "generic/095" in parsed["details"]


@pytest.mark.parametrize("text,message", [
    ('[[expect]]\ntset = "generic/095"\nverdict = "FAIL"\n', "rule 1: unknown key 'tset'"),
    ('[[expect]]\nsection = "xfs"\nverdict = "FAIL"\n', 'rule 1: needs test = "..." (a string)'),
    ('[[expect]]\ntest = 95\nverdict = "FAIL"\n', 'rule 1: needs test = "..." (a string)'),
    ('[[expect]]\ntest = "generic/095"\nverdict = "FAIL"\nkernel_below = 7.0\n', "rule 1: kernel_below: Input should be a valid string"),
    ('[[expect]]\ntest = "generic/095"\nverdict = "FAIL"\nkernel_below = "seven"\n', 'kernel_below: must look like "7.0" or "6.12.58"'),
    ('[[expect]]\ntest = "generic/095"\nverdict = "FAIL"\nsignature = "io thread ("\n', "signature: not a regular expression"),
    ('[[expect]]\ntest = "generic/095"\nverdict = "FAIL"\nwhy = ["a"]\n', "rule 1: why: Input should be a valid string"),
    ('[[expect]]\ntest = "generic/095"\nverdict = "FAIL"\npi = []\n', "pi: a facet is a string, a number or a non-empty list"),
    ('[[expected]]\ntest = "generic/095"\nverdict = "FAIL"\n', "unknown table or key 'expected'"),
    ('[[expect]]\ntest = "generic/095"\nverdict = "FAIL"\n[extra]\nx = 1\n', "unknown table or key 'extra'"),
])
def test_a_known_issues_file_is_validated_by_its_schema(tmp_path, text, message):
    """A typo used to leave a rule silently inert, and a rule without `test` matched every test."""
    from lab.errors import UsageError
    from lab.scenarios.expect import load_rules
    from lab.scenarios import suite

    f = tmp_path / "known.toml"
    f.write_text(text)
    load_rules.cache_clear()
    with pytest.raises(UsageError, match=re.escape(message)):
        suite.check_known_issue_files([str(f)])


def test_kernel_ranges_reach_the_sublevel_and_an_unparseable_release_matches_no_range(tmp_path):
    from lab.scenarios.expect import expectation_for, load_rules

    f = tmp_path / "known.toml"
    f.write_text('[[expect]]\ntest = "generic/095"\nkernel_from = "6.12"\nkernel_below = "6.12.58"\nverdict = "FAIL"\n'
                 'why = "fixed in a stable release"\n')
    load_rules.cache_clear()
    facets = {"test": "generic/095"}
    assert expectation_for(f, facets, "6.12.57+deb13-amd64") is not None
    assert expectation_for(f, facets, "6.12.58+deb13-amd64") is None
    assert expectation_for(f, facets, "6.12.117+deb13-amd64") is None
    assert expectation_for(f, facets, "6.12") is not None
    assert expectation_for(f, facets, "custom-kernel") is None  # used to read as 0.0, inside every kernel_below


def test_a_known_failure_that_fails_differently_is_new():
    from lab.scenarios.expect import Expectation
    from lab.scenarios import suite

    entry = Expectation("FAIL", "guard error on the write", signature="io thread failed|protection error")
    known = {"generic/761": entry, "generic/095": Expectation("FAIL", "no signature")}
    evidence = {"generic/761": "+Segmentation fault\n[ 40.1] BUG: KASAN: slab-use-after-free in iomap_dio_bio_end_io",
                "generic/095": "anything"}
    differently = suite.failing_differently(known, ["generic/761", "generic/095"], evidence.__getitem__)
    assert differently == {"generic/761": "io thread failed|protection error"} and known["generic/761"] is None
    assert known["generic/095"] is not None  # no signature: any failure is that known issue
    known = {"generic/761": entry}
    assert suite.failing_differently(known, ["generic/761"], lambda t: "+io thread failed") == {}
    assert known["generic/761"] is entry


def test_the_shipped_entries_match_only_the_formats_they_were_seen_on():
    from lab.scenarios.expect import expectation_for, load_rules
    from lab.scenarios import suite

    shipped = Path(__file__).resolve().parents[2] / "scenarios" / "fstests" / "known-issues.toml"
    load_rules.cache_clear()
    suite.check_known_issue_files([], shipped)  # the shipped file passes its own schema

    def known(pi: int, pif: int, lba: int) -> bool:
        facets = {"test": "generic/761", "section": "xfs", "pi": pi, "pif": pif, "lba": lba}
        return expectation_for(shipped, facets, "6.12.117+deb13-amd64", suite.SUITE_FACETS, ("test",)) is not None

    assert known(1, 0, 4096) and known(3, 2, 4096)
    assert not known(2, 0, 4096) and not known(1, 0, 512) and not known(1, 2, 4096)
    blk = Path(__file__).resolve().parents[2] / "scenarios" / "blktests" / "known-issues.toml"
    suite.check_known_issue_files([], blk)
