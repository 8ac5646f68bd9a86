"""The stable-pages scenario for real: 6.12 fails on XFS, 7.3 passes on XFS, the raw block device
fails on both, with the same code; a run whose buffer never changed is ERROR, not PASS; a topology
without PI is not applicable; an interrupted or terminated run keeps its results; a failed boot is
ERROR."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lab.scenarios import framework
from lab.scenarios.options import validate
from lab.scenarios.stable_pages import StablePagesOptions
from lab.scenarios.verdict import ERROR, FAIL, NOT_APPLICABLE, PASS

from .conftest import qemu_pids_matching


def run(**options):
    return framework.run("stable-pages", validate(StablePagesOptions, options))


def test_612_fails_on_xfs_73_passes_raw_fails_on_both():
    outcome = run(kernels=["debian:6.12", "debian:7.3"], targets=["xfs", "raw"], direction="both",
                  duration=6, control_duration=3, size=16)
    run_dir, results = outcome.run_dir, outcome.results
    old, new = results["subruns"]["debian-6.12"], results["subruns"]["debian-7.3"]
    assert old["release"].startswith("6.12.") and new["release"].startswith("7.3.")
    for direction in ("write", "read"):
        assert old["cases"][f"xfs-{direction}-64K"]["verdict"] == FAIL
        assert new["cases"][f"xfs-{direction}-64K"]["verdict"] == PASS
        assert old["cases"][f"raw-{direction}-64K"]["verdict"] == FAIL
        assert new["cases"][f"raw-{direction}-64K"]["verdict"] == FAIL
    failing = old["cases"]["xfs-write-64K"]
    assert failing["runs"]["mutate"]["errno"].get("84", 0) > 0  # EILSEQ
    assert failing["runs"]["control"]["errno"] == {}
    assert failing["kernel_messages"]["mutate"]["integrity_lines"] > 0
    assert new["cases"]["xfs-write-64K"]["runs"]["mutate"]["mutations"] > 0
    assert new["integrity"]["format"] == "T10-DIF-TYPE1-CRC"
    assert outcome.ok  # every verdict is the expected one
    manifest = json.loads((run_dir.path / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["all_as_expected"]
    for f in ("summary.txt", "junit.xml", "results.json", "lab.log", "subruns/debian-6.12/machines/vm/console.log",
              "subruns/debian-7.3/cases/xfs-write-64K/mutate.dmesg", "subruns/debian-7.3/manifest.json"):
        assert (run_dir.path / f).exists(), f
    sub = json.loads((run_dir.path / "subruns/debian-7.3/manifest.json").read_text())
    assert sub["kernels"]["vm"]["release"].startswith("7.3.") and sub["argv"]["vm"] and sub["images"]
    assert sub["status"] == "done" and sub["shutdown"]["vm"]["stopped_by"]


def test_a_buffer_that_never_changed_is_an_error_and_no_pi_is_not_applicable():
    outcome = run(kernels=["debian:7.3"], direction="write", duration=2, control=False, fault="no-mutation")
    section = outcome.results["subruns"]["debian-7.3"]
    assert section["verdict"] == ERROR and "changed the buffer 0 times" in section["reason"]
    assert not outcome.ok
    outcome = run(kernels=["debian:7.3"], direction="write", duration=2, control=False, params={"pi": 0})
    section = outcome.results["subruns"]["debian-7.3"]
    assert section["verdict"] == NOT_APPLICABLE and "without protection information" in section["reason"]
    assert 'skipped="1"' in (outcome.run_dir.path / "junit.xml").read_text()


def _lab(tmp_path, *argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "lab", *argv], env=dict(os.environ, LAB_RESULTS=str(tmp_path), **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_long_guest_command_stops_within_seconds(tmp_path, sig, code):
    """The guest program runs for 300 s; the lab must stop in seconds, not when it ends."""
    proc = _lab(tmp_path, "run", "stable-pages", "--kernel", "debian:7.3", "--direction", "write", "--duration", "300",
                "--control-duration", "2")
    deadline = time.monotonic() + 300
    # Signal once the control run's output is on disk, during the long mutating run.
    while time.monotonic() < deadline and not list(tmp_path.glob("*/subruns/*/cases/*/control.out")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    time.sleep(3)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    stopped_in = time.monotonic() - sent
    assert proc.returncode == code, err
    assert stopped_in < 20, f"the lab took {stopped_in:.1f} s to stop"
    assert "Traceback" not in err
    run_dir = next(tmp_path.glob("*stable-pages*"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["finished"]
    assert (run_dir / "summary.txt").exists() and (run_dir / "junit.xml").exists()
    assert list(run_dir.glob("subruns/*/machines/vm/console.log"))
    assert not qemu_pids_matching(str(tmp_path))


def test_boot_failure_is_an_error_never_a_pass(tmp_path):
    proc = _lab(tmp_path, "run", "stable-pages", "--kernel", "debian:7.3", "--duration", "2", env={"LAB_BOOT_TIMEOUT": "2"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    run_dir = next(tmp_path.glob("*stable-pages*"))
    results = json.loads((run_dir / "results.json").read_text())
    section = results["subruns"]["debian-7.3"]
    assert section["verdict"] == ERROR
    assert "boot failed: vm: not ready after 2 s" in section["reason"] and "[phase ready]" in section["reason"]
    junit = (run_dir / "junit.xml").read_text()
    assert 'errors="1"' in junit
    assert "ERROR" in out
    sub = json.loads((run_dir / "subruns/debian-7.3/manifest.json").read_text())
    assert sub["status"] == "error" and sub["boots"][0]["machines"]["vm"]["failure"]["phase"] == "ready"


def test_bundle_replays_with_the_same_verdicts(tmp_path):
    from lab import bundle

    outcome = run(kernels=["debian:7.3"], direction="write", duration=3, control_duration=2, size=8)
    assert outcome.results["subruns"]["debian-7.3"]["verdict"] == PASS
    packed = bundle.create(outcome.run_dir.path, tmp_path / "repro.tar.gz")
    plan = bundle.plan_replay(packed)
    assert "debian:7.3" in bundle.describe(plan)
    matched, notes, again = bundle.replay(plan)
    assert matched, notes
    assert again != outcome.run_dir.path and (again / "summary.txt").exists()
