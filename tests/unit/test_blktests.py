"""blktests runner logic without a guest: config from the topology, the console parser, which tests
use the transport, test lists, and the fake tree's check run here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.scenarios import blktests

FAKE = Path(__file__).resolve().parent.parent / "fixtures" / "blktests-fake"

CONSOLE = """nvme/004 (tr=tcp) (test nvme and nvmet UUID NS descriptors)
nvme/004 (tr=tcp) (test nvme and nvmet UUID NS descriptors)   [passed]
    runtime    ...  2.345s
block/041 => nvme0n1 (io_uring read with PI metadata buffer on block device)
block/041 => nvme0n1 (io_uring read with PI metadata buffer on block device) [not run]
    kernel 7.3.0 lacks CONFIG_BLK_DEV_INTEGRITY_T10
nvme/010 (tr=rdma) (run data verification fio job)
nvme/010 (tr=rdma) (run data verification fio job)            [failed]
    runtime    ...  30.1s
    --- tests/nvme/010.out	2026-11-23
    +++ /root/blktests/results/nodev_tr_rdma/nvme/010.out.bad
    -Test complete
nvme/064 (exercise the nvme metadata usage with passthrough commands)
"""


def test_console_is_parsed_per_test() -> None:
    found = blktests.parse_output(CONSOLE)
    assert {t: r["status"] for t, r in found.items()} == {"nvme/004": "pass", "block/041": "notrun", "nvme/010": "fail"}
    assert found["block/041"]["details"] == ["kernel 7.3.0 lacks CONFIG_BLK_DEV_INTEGRITY_T10"]
    assert found["nvme/010"]["details"][0].startswith("--- tests/nvme/010.out")
    console = blktests.BlktestsConsole()
    assert console.running(CONSOLE) == "nvme/064"
    assert console.running(CONSOLE.rsplit("nvme/064", 1)[0]) is None
    assert console.counts(CONSOLE) == {"pass": 1, "fail": 1, "notrun": 1}


def test_config_is_written_from_the_topology() -> None:
    assert blktests.config_text(["/dev/nvme0n1"], None) == "TEST_DEVS=(/dev/nvme0n1)\n"
    assert blktests.config_text(["/dev/nvme0n1"], "rdma") == "TEST_DEVS=(/dev/nvme0n1)\nNVMET_TRTYPES=rdma\nUSE_RXE=1\n"
    assert blktests.config_text(["/dev/nvme0n1"], "siw").endswith("NVMET_TRTYPES=rdma\n")  # siw is blktests' default rdma


def test_test_lists_and_transport_use() -> None:
    assert blktests.resolve_tests(None, None) == blktests.PRESETS["nvme-pi"]
    assert blktests.resolve_tests(["nvme/004,block/041"], None) == ["nvme/004", "block/041"]
    with pytest.raises(UsageError, match="expected names like nvme/004"):
        blktests.resolve_tests(["nvme/4; reboot"], None)
    with pytest.raises(UsageError, match="known presets"):
        blktests.resolve_tests(None, "nope")
    assert blktests.uses_transport(FAKE, "nvme/001") and not blktests.uses_transport(FAKE, "block/001")
    assert not blktests.uses_transport(FAKE, "nvme/999")


def test_the_fake_check_run_here(tmp_path: Path) -> None:
    tree = tmp_path / "blktests"
    shutil.copytree(FAKE, tree)
    script = blktests.check_script(str(tree), blktests.config_text(["/dev/null"], "tcp"), ["nvme/002", "nvme/003", "block/001"])
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    found = blktests.parse_output(res.stdout)
    assert {t: r["status"] for t, r in found.items()} == {"nvme/002": "fail", "nvme/003": "notrun", "block/001": "fail"}
    assert found["nvme/002"]["details"] == ["fake failure on tcp"]
    assert "LAB-CHECK-EXIT 1" in res.stdout


def test_a_test_under_several_conditions_is_its_worst() -> None:
    out = """nvme/006 (tr=loop bd=device) (create an NVMeOF target)
./check: line 342: column: command not found
nvme/006 (tr=loop bd=device) (create an NVMeOF target)       [passed]
    runtime  ...  1.2s
nvme/006 (tr=loop bd=file) (create an NVMeOF target)
nvme/006 (tr=loop bd=file) (create an NVMeOF target)         [not run]
./check: line 381: column: command not found
    configfs is not mounted at /sys/kernel/config
nvme/008 (tr=loop bd=device) (create an NVMeOF host)         [failed]
    --- tests/nvme/008.out
nvme/008 (tr=loop bd=file) (create an NVMeOF host)           [passed]
"""
    found = blktests.parse_output(out)
    assert found["nvme/006"]["status"] == "pass" and found["nvme/006"]["conditions"] == {"bd=device": "pass", "bd=file": "notrun"}
    assert found["nvme/006"]["details"] == ["[bd=file]", "configfs is not mounted at /sys/kernel/config"]
    assert found["nvme/008"]["status"] == "fail" and found["nvme/008"]["details"][:2] == ["[bd=device]", "--- tests/nvme/008.out"]


def test_what_check_complained_of_is_kept() -> None:
    out = ("block/043 => nvme0n1 (Test userspace metadata offsets)       [passed]\n"
           "common/rc: line 274: read: 4deb13: value too great for base (error token is \"4deb13\")\n"
           "nvme/064 => nvme0n1 (exercise the nvme metadata usage)   [passed]\n")
    assert blktests.stray_lines(out) == ['common/rc: line 274: read: 4deb13: value too great for base (error token is "4deb13")']


def test_runtimes_per_condition() -> None:
    found = blktests.parse_output(CONSOLE)
    assert found["nvme/004"]["seconds"] == {"-": 2.345} and found["nvme/010"]["seconds"] == {"-": 30.1}


def test_a_check_that_ran_nothing_says_why(tmp_path: Path) -> None:
    """The fake check with a test list naming nothing it has: no result at all, and the ERROR quotes check."""
    tree = tmp_path / "blktests"
    shutil.copytree(FAKE, tree)
    res = subprocess.run(["bash", "-c", blktests.check_script(str(tree), "TEST_DEVS=()\n", ["nvme/999"])],
                         capture_output=True, text=True, timeout=60)
    assert blktests.parse_output(res.stdout) == {}
    assert blktests.startup_failure(res.stdout) == "blktests did not start: nvme/999 does not exist"
    assert blktests.startup_failure("LAB-CHECK-EXIT 1\n") == "blktests did not start: check printed nothing"
