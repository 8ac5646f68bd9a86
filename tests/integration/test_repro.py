"""A reviewer's reproducer through `lab repro`: a shell script built on the stable-pages guest
program fails on 6.12 and passes on 7.3, repeated with a failure rate per kernel; a fio verify job
on a PI type-3, 512-byte namespace; the bundle of a repro run replays from another directory with
the same verdicts; a Python scenario file runs through `lab run ./file.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lab import guestprog

REPRO = """#!/bin/sh
# The reporter's reproducer: O_DIRECT writes to XFS on the PI namespace while the buffer changes.
set -e
mkfs.xfs -f -q /dev/nvme0n1 && mkdir -p /mnt/r && mount /dev/nvme0n1 /mnt/r
./dio_mutate --path /mnt/r/f --direction write --bs 65536 --duration 3 --size 8388608 --mutate 1 > out.json
umount /mnt/r
python3 -c 'import json,sys; d=json.load(open("out.json")); print(d); sys.exit(1 if d["errno"] else 0)'
"""

FIO_JOB = """[global]
filename=/dev/nvme0n1
direct=1
ioengine=libaio
iodepth=4
bs=4k
size=8M
verify=crc32c
do_verify=1

[write-and-verify]
rw=write
"""


def lab(tmp_path: Path, *argv: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *argv], env=dict(os.environ, LAB_RESULTS=str(tmp_path / "results"), **(env or {})),
                          capture_output=True, text=True, timeout=1800, cwd=cwd)


def results(tmp_path: Path, pattern: str) -> tuple[Path, dict]:
    run = sorted((tmp_path / "results").glob(pattern))[-1]
    return run, json.loads((run / "results.json").read_text())


def test_reproducer_fails_on_612_passes_on_73_with_rates(tmp_path):
    work = tmp_path / "repro"
    work.mkdir()
    (work / "repro.sh").write_text(REPRO)
    program = guestprog.build("stable-pages/dio_mutate.c")
    (work / "dio_mutate").write_bytes(program.read_bytes())
    (work / "dio_mutate").chmod(0o755)
    res = lab(tmp_path, "repro", "--kernel", "debian:6.12", "--kernel", "debian:7.3", "--put", str(work / "repro.sh"),
              "--put", str(work / "dio_mutate"), "--repeat", "2", "--get", "/root/repro/out.json", "--", "sh", "repro.sh")
    assert "Traceback" not in res.stderr
    run, data = results(tmp_path, "*-repro-*")
    old, new = data["subruns"]["debian-6.12"], data["subruns"]["debian-7.3"]
    assert old["verdict"] == "FAIL" and old["cases"]["repro"]["rate"]["failed"] >= 1, old
    assert new["verdict"] == "PASS" and new["rate"] == {"failed": 0, "runs": 2, "rate": 0.0, "low": 0.0, "high": 0.6576,
                                                        "repetitions": 2}, new
    first = old["cases"]["repro"]["first_failure"]
    assert "exit status 1" in first["reason"]
    assert (run / "subruns/debian-6.12" / first["kernel_log"]).exists()  # the first failing run's kernel log
    assert "guard tag error" in (run / "subruns/debian-6.12" / first["kernel_log"]).read_text() or \
        "protection error" in (run / "subruns/debian-6.12" / first["kernel_log"]).read_text()
    assert list(run.glob("subruns/debian-6.12/rep*/get-first-failure/out.json"))
    assert "2/2 failed" in res.stdout or "1/2 failed" in res.stdout
    assert res.returncode == 1  # 6.12 failed and nothing said it should

    # The bundle carries the reproducer; replayed from another directory it gives the same verdicts.
    bundle = tmp_path / "repro.bundle.tar.gz"
    made = lab(tmp_path, "results", "bundle", str(run), "-o", str(bundle))
    assert made.returncode == 0, made.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (work / "repro.sh").unlink()  # the original files are gone: only the bundle has them
    replay = lab(tmp_path, "replay", str(bundle), "--kernel", "debian:7.3", cwd=elsewhere)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "bundle  debian-7.3: 0/2 failed" in replay.stdout and "now     debian-7.3: PASS 0/2 failed" in replay.stdout


def test_fio_verify_on_a_type3_512_byte_namespace(tmp_path):
    job = tmp_path / "verify.fio"
    job.write_text(FIO_JOB)
    res = lab(tmp_path, "repro", "--kernel", "debian:7.3", "-p", "pi=3", "-p", "lba=512", "--fio", str(job), "--expect-pass")
    assert res.returncode == 0, res.stdout + res.stderr
    run, data = results(tmp_path, "*-repro-*")
    section = data["subruns"]["debian-7.3"]
    assert section["verdict"] == "PASS"
    report = json.loads((run / "subruns/debian-7.3/fio.json").read_text())
    assert report["jobs"][0]["error"] == 0 and report["jobs"][0]["write"]["io_bytes"] == 8 << 20
    manifest = json.loads((run / "subruns/debian-7.3/manifest.json").read_text())
    assert "pi=3" in " ".join(manifest["argv"]["vm"]) and "logical_block_size=512" in " ".join(manifest["argv"]["vm"])


def test_a_python_scenario_file_runs_through_lab_run(tmp_path):
    mine = tmp_path / "my_scenario.py"
    mine.write_text('''
from lab.scenarios.framework import Scenario


class Mine(Scenario):
    """Reads the namespace's integrity profile and checks it against the topology."""

    name = "my-check"
    topology = "nvme-pi"

    def exercise(self, ctx):
        pi = ctx.require_integrity()
        ctx.case("format", "PASS", f"{pi['device']} shows {pi['format']}")
''')
    res = lab(tmp_path, "run", str(mine), "--kernel", "debian:7.3", "-p", "pi=3")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "format" in res.stdout and "T10-DIF-TYPE3-CRC" in res.stdout
    run, data = results(tmp_path, "*-my-check-*")
    assert data["scenario_file"] == str(mine.resolve())
    bundle = tmp_path / "mine.tar.gz"
    assert lab(tmp_path, "results", "bundle", str(run), "-o", str(bundle)).returncode == 0
    refused = lab(tmp_path, "replay", str(bundle))
    assert refused.returncode == 2 and "runs the bundle's Python scenario file my_scenario.py" in refused.stderr


def test_until_fail_keeps_a_vmcore_of_the_first_failure(tmp_path):
    """`lab repro --until-fail --dump-on-fail`: the second run fails, its guest's memory is kept in
    the run directory, and drgn opens it as a Linux kernel core."""
    import drgn

    res = lab(tmp_path, "repro", "--kernel", "debian:7.3", "-p", "memory=512M", "--until-fail", "--repeat", "5",
              "--dump-on-fail", "--", "test -e /tmp/ran || { touch /tmp/ran; exit 0; }; exit 1")
    assert res.returncode == 1, res.stdout + res.stderr
    run, data = results(tmp_path, "*-repro-*")
    case = data["subruns"]["debian-7.3"]["cases"]["repro"]
    assert case["rate"]["failed"] == 1 and case["rate"]["runs"] == 2, case
    vmcore = run / "subruns/debian-7.3" / case["first_failure"]["vmcore"]
    assert vmcore.stat().st_size >= 512 << 20
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
