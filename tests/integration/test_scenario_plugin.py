"""A scenario from another package, found through the `lab.scenarios` entry point and run by
`lab run` in a real guest; and a pytest file of the user's own using the lab's fixtures."""

import json
import os
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_entry_point_scenario_runs_through_lab_run(tmp_path):
    env = dict(os.environ, LAB_RESULTS=str(tmp_path), PYTHONPATH=str(FIXTURES / "example-scenario"))
    res = subprocess.run([sys.executable, "-m", "lab", "run", "example-integrity", "--kernel", "debian:7.3", "--blocks", "8"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "debian-7.3: PASS - 1 case(s) passed" in res.stdout
    results = json.loads(next(tmp_path.glob("*example-integrity*/results.json")).read_text())
    case = results["subruns"]["debian-7.3"]["cases"]["dd-roundtrip"]
    assert case["verdict"] == "PASS" and case["format"] == "T10-DIF-TYPE1-CRC"


def test_a_users_pytest_file_is_a_lab_scenario(tmp_path):
    user_test = tmp_path / "test_mine.py"
    user_test.write_text('''
import pytest

@pytest.mark.lab(topology="nvme-pi", params={"pi": 3})
def test_pi_type3_is_the_guests_integrity_profile(guest):
    assert guest.run("cat /sys/block/nvme0n1/integrity/format", check=True).stdout.strip() == "T10-DIF-TYPE3-CRC"

def test_type2_reads_as_type1(lab_boot):
    lab = lab_boot("nvme-pi", params={"pi": 2})
    out = lab.guest("vm").run("cat /sys/block/nvme0n1/integrity/format; nvme id-ns -o json /dev/nvme0n1", check=True).stdout
    assert out.splitlines()[0] == "T10-DIF-TYPE1-CRC"  # Linux gives types 1 and 2 one profile
    assert '"dps":2' in out.replace(" ", "")
''')
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(user_test), "--lab-kernel", "debian:7.3"],
                         env=dict(os.environ, LAB_RESULTS=str(tmp_path / "results")), capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "2 passed" in res.stdout
    assert list((tmp_path / "results").glob("*pytest-nvme-pi*/machines/vm/console.log"))


FAULTY_SCENARIO = '''
import shlex
import time

from lab.scenarios.framework import Scenario

# What the guest's console shows when multi-threaded TCG meets the kernel's text patching after boot
# (the byte before RIP is no longer int3): written to the console here, the fault injected.
OOPS = ("Oops: int3: 0000 [#1] SMP NOPTI\\nRIP: 0010:ttwu_do_activate+0x93/0x1b0\\n"
        "Code: c7 43 18 00 00 00 00 66 <90> 48 8b 83 18 04 00 00\\n")
KASAN = "[   31.004211] BUG: KASAN: slab-use-after-free in nfs_direct_write_completion+0x1d/0x2c0\\n"
WARNING = "[   20.551201] WARNING: CPU: 1 PID: 412 at fs/iomap/direct-io.c:624 __iomap_dio_rw+0x5b4/0x8d0\\n"


class Faulty(Scenario):
    name = "emulator-fault-demo"
    topology = "nvme-pi"
    faulty = FAULTY
    mode = MODE  # "clean": only the fault; "fail": a case failed before it; "kasan": the kernel went wrong before it

    def say(self, ctx, text):
        ctx.guest("vm").run(f"printf '%s' {shlex.quote(text)} > /dev/ttyS0", check=True)
        deadline = time.monotonic() + 30  # the tty drains to QEMU's console file a moment later
        while text.splitlines()[0] not in ctx.lab.machines["vm"].console_log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the console never showed what the guest wrote"
            time.sleep(0.2)

    def exercise(self, ctx):
        self.attempts = getattr(self, "attempts", 0) + 1
        if self.mode == "warning":  # no emulator fault: the kernel warns while the case passes
            self.say(ctx, WARNING)
            ctx.case("work", "PASS", "done")
            return
        if self.attempts <= self.faulty:
            if self.mode == "kasan":
                self.say(ctx, KASAN)
            if self.mode in ("fail", "kasan"):
                ctx.case("check", "FAIL", "data differed at file offset 4096")
            self.say(ctx, OOPS)
            ctx.case("work", "ERROR", "the guest stopped answering")  # what a scenario sees when its guest dies
            return
        if self.mode != "clean":
            ctx.case("check", "PASS", "data matched")
        ctx.case("work", "PASS", f"done on attempt {self.attempts}")
'''


def _run_file(tmp_path, text, *args):
    mine = tmp_path / "faulty.py"
    mine.write_text(text)
    env = dict(os.environ, LAB_RESULTS=str(tmp_path / "results"))
    return subprocess.run([sys.executable, "-m", "lab", "run", str(mine), "--kernel", "debian:7.3", *args], env=env,
                          capture_output=True, text=True, timeout=900)


def test_a_sub_run_whose_guest_met_the_emulator_fault_runs_again(tmp_path):
    res = _run_file(tmp_path, FAULTY_SCENARIO.replace("FAULTY", "1").replace("MODE", '"clean"'))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "debian-7.3: PASS - 1 case(s) passed [sub-run run again 1x after the emulator failed the guest: vm: the guest " \
           "kernel oopsed on an int3 already patched away" in res.stdout
    run = next((tmp_path / "results").glob("*emulator-fault-demo*"))
    results = json.loads((run / "results.json").read_text())
    section = results["subruns"]["debian-7.3"]
    assert section["cases"]["work"]["reason"] == "done on attempt 2" and len(section["attempts"]) == 1
    attempt = section["attempts"][0]
    assert "ttwu_do_activate+0x93/0x1b0" in attempt["fault"] and attempt["cases"] == {"work": "ERROR"}
    assert not attempt["failed"] and not attempt["kernel_problems"]
    kept = run / "subruns/debian-7.3/attempt-1"
    assert "Oops: int3" in (kept / "machines/vm/console.log").read_text()
    assert "Oops: int3" not in (run / "subruns/debian-7.3/machines/vm/console.log").read_text()
    assert json.loads((kept / "verdict.json").read_text())["cases"]["work"]["verdict"] == "ERROR"
    junit = (run / "junit.xml").read_text()
    assert 'name="attempt 1 (discarded)"' in junit and "<skipped" in junit


def test_an_emulator_fault_in_every_attempt_is_an_error(tmp_path):
    res = _run_file(tmp_path, FAULTY_SCENARIO.replace("FAULTY", "99").replace("MODE", '"clean"'))
    assert res.returncode == 1
    assert "debian-7.3: ERROR (error) - vm: the guest kernel oopsed on an int3 already patched away" in res.stdout
    assert "in each of 3 attempts" in res.stdout


def test_a_case_that_failed_before_the_emulator_fault_keeps_the_sub_run_from_passing(tmp_path):
    """The rerun passes, but the discarded attempt's FAIL is not thrown away: FAIL, exit 1, the
    attempt kept and named in results.json and JUnit."""
    res = _run_file(tmp_path, FAULTY_SCENARIO.replace("FAULTY", "1").replace("MODE", '"fail"'))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "debian-7.3: FAIL (unexpected failure (regression)) - attempt 1 (run again after an emulator fault) failed " \
           "check; the attempt after it passed" in res.stdout
    run = next((tmp_path / "results").glob("*emulator-fault-demo*"))
    section = json.loads((run / "results.json").read_text())["subruns"]["debian-7.3"]
    assert section["attempts"][0]["failed"] == ["check"] and section["cases"]["check"]["verdict"] == "PASS"
    junit = (run / "junit.xml").read_text()
    assert 'name="attempt 1 (discarded)"' in junit and junit.count("<failure") == 2  # the attempt and the sub-run


def test_an_int3_oops_after_a_kasan_report_is_the_kernels_and_is_not_run_again(tmp_path):
    res = _run_file(tmp_path, FAULTY_SCENARIO.replace("FAULTY", "1").replace("MODE", '"kasan"'))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "run again" not in res.stdout
    run = next((tmp_path / "results").glob("*emulator-fault-demo*"))
    section = json.loads((run / "results.json").read_text())["subruns"]["debian-7.3"]
    assert section["verdict"] != "PASS" and "attempts" not in section
    assert not (run / "subruns/debian-7.3/attempt-1").exists()
    check = section["cases"]["check"]
    assert check["verdict"] == "FAIL"
    assert check["kernel_log_problems"]["unexpected"][0]["kind"] == "sanitizer"


def test_a_passing_case_with_a_kernel_warning_in_its_window_fails(tmp_path):
    """The one kernel-log detector in a real run: the guest's console shows a WARNING while the case
    itself passed; the case is FAIL with the line, and the run exits 1."""
    res = _run_file(tmp_path, FAULTY_SCENARIO.replace("FAULTY", "0").replace("MODE", '"warning"'))
    assert res.returncode == 1, res.stdout + res.stderr
    run = next((tmp_path / "results").glob("*emulator-fault-demo*"))
    case = json.loads((run / "results.json").read_text())["subruns"]["debian-7.3"]["cases"]["work"]
    assert case["verdict"] == "FAIL" and case["reason"].startswith("kernel log: warning: WARNING: CPU: 1 PID: 412 at fs/iomap")
    assert "(the case itself passed: done)" in case["reason"]
    assert case["kernel_log_problems"]["unexpected"][0]["kind"] == "warning"
