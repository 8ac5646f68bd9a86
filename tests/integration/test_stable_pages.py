"""The stable-pages scenario for real: 6.12 fails on XFS, 7.3 passes on XFS, the raw block device
fails on both, with the same code; an interrupted run keeps its results; a failed boot is ERROR."""

import json
import os
import signal
import subprocess
import sys
import time

from lab.scenarios.stable_pages import Options, all_ok, run
from lab.scenarios.verdict import ERROR, FAIL, PASS

from .conftest import qemu_pids_matching


def test_612_fails_on_xfs_73_passes_raw_fails_on_both():
    options = Options(kernels=["debian:6.12", "debian:7.3"], targets=["xfs", "raw"], directions=["write", "read"],
                      duration=6, control_duration=3, size=16 << 20)
    run_dir, results = run(options)
    old, new = results["kernels"]["debian-6.12"], results["kernels"]["debian-7.3"]
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
    assert all_ok(results)  # every verdict is the expected one
    manifest = json.loads((run_dir.path / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["all_as_expected"]
    for f in ("summary.txt", "junit.xml", "results.json", "kernels/debian-6.12/machines/vm/console.log",
              "kernels/debian-7.3/cases/xfs-write-64K/mutate.dmesg", "kernels/debian-7.3/manifest.json"):
        assert (run_dir.path / f).exists(), f
    sub = json.loads((run_dir.path / "kernels/debian-7.3/manifest.json").read_text())
    assert sub["kernels"]["vm"]["release"].startswith("7.3.") and sub["argv"]["vm"] and sub["images"]


def _lab(tmp_path, *argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "lab", *argv], env=dict(os.environ, LAB_RESULTS=str(tmp_path), **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def test_sigint_during_io_keeps_a_readable_run(tmp_path):
    proc = _lab(tmp_path, "run", "stable-pages", "--kernel", "debian:7.3", "--duration", "60", "--control-duration", "2")
    deadline = time.monotonic() + 300
    # Interrupt once the control run's output is on disk, during the mutating run.
    while time.monotonic() < deadline and not list(tmp_path.glob("*/kernels/*/cases/*/control.out")):
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run_dir = next(tmp_path.glob("*stable-pages*"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["finished"]
    assert (run_dir / "summary.txt").exists() and (run_dir / "junit.xml").exists()
    assert list(run_dir.glob("kernels/*/machines/vm/console.log"))
    assert not qemu_pids_matching(str(tmp_path))


def test_boot_failure_is_an_error_never_a_pass(tmp_path):
    proc = _lab(tmp_path, "run", "stable-pages", "--kernel", "debian:7.3", "--duration", "2", env={"LAB_BOOT_TIMEOUT": "2"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    run_dir = next(tmp_path.glob("*stable-pages*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["kernels"]["debian-7.3"]["verdict"] == ERROR
    assert "no SSH after 2 s" in results["kernels"]["debian-7.3"]["reason"]
    junit = (run_dir / "junit.xml").read_text()
    assert 'errors="1"' in junit
    assert "ERROR" in out


def test_bundle_replays_with_the_same_verdicts(tmp_path):
    from lab import bundle

    options = Options(kernels=["debian:7.3"], targets=["xfs"], directions=["write"], duration=3, control_duration=2, size=8 << 20)
    run_dir, results = run(options)
    assert results["kernels"]["debian-7.3"]["verdict"] == PASS
    packed = bundle.create(run_dir.path, tmp_path / "repro.tar.gz")
    matched, notes, again = bundle.replay(packed)
    assert matched, notes
    assert again != run_dir.path and (again / "summary.txt").exists()
