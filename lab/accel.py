"""Choose KVM or TCG. Opening /dev/kvm proves nothing here (guests die with a KVM emulation
failure during kernel decompression), so 'auto' boots a probe guest under KVM and only uses KVM
if the probe prints its marker. The verdict is cached per host kernel, QEMU and guest kernel."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from lab.errors import UsageError
from lab.machine import die_with_parent
from lab.paths import cache_dir
from lab.progress import info
from lab.topology.argv import Accel

LOG = logging.getLogger(__name__)

PROBE_TIMEOUT = 15.0  # a working KVM boots the probe in 1-2 s
MARKER = "LAB-PROBE-OK"
# CPU models the probe tries, in order. The last has no XSAVE: KVM nested in a TCG guest (-cpu max
# under TCG, kvm_amd inside) panics every guest kernel whose CPU offers XSAVE in fpstate_reset during
# fpu__init_system_xstate (host, max, EPYC, SandyBridge all do; Nehalem, Westmere, qemu64 boot).
PROBE_CPUS = ("host", "max", "Nehalem")


def virtualization_flag(cpuinfo: str) -> str | None:
    """vmx or svm when the host CPU shows hardware virtualization, else None: without either KVM
    cannot run a guest whatever /dev/kvm says (seen here: a nested host with /dev/kvm and no vmx,
    whose probe guest hung until its timeout, twice, 30 s of a first run)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return next((f for f in ("vmx", "svm") if f in flags), None)
    return None


def kvm_openable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def probe_kvm(qemu: str, kernel: Path, initrd: Path, cpu: str) -> tuple[bool, str]:
    """Boot the lab's initramfs in probe mode under KVM: (works, why)."""
    with tempfile.TemporaryDirectory(prefix="lab-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [
            qemu, "-machine", "q35", "-accel", "kvm", "-cpu", cpu, "-m", "512M", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{console}", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 rdinit=/init lab.probe quiet",
        ]
        errlog = Path(tmp) / "stderr.log"
        started = time.monotonic()
        with open(errlog, "wb") as err:
            # Like every guest, the probe dies with the lab (even a SIGKILLed one).
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                    preexec_fn=die_with_parent)
        why = f"no answer within {PROBE_TIMEOUT:.0f} s"
        try:
            # A broken KVM does not always exit: on an internal error QEMU pauses the guest and waits.
            while time.monotonic() - started < PROBE_TIMEOUT:
                if console.exists() and MARKER in console.read_text(errors="replace"):
                    return True, f"probe guest booted under KVM in {time.monotonic() - started:.1f} s"
                errors = errlog.read_text(errors="replace")
                if "internal error" in errors.lower() or "failed to" in errors or proc.poll() is not None:
                    first = next((l for l in errors.splitlines() if l.strip() and "warning:" not in l), "")
                    why = first.strip()[:160] or _console_problem(console) or f"QEMU exited {proc.poll()} without the probe's marker"
                    break
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait()
        return False, why


def _console_problem(console: Path) -> str:
    """The probe kernel's own last words: the panic and where it happened."""
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return ""
    panic = next((l.split("]", 1)[-1].strip() for l in text.splitlines() if "Kernel panic" in l), "")
    rip = next((l.split("]", 1)[-1].strip() for l in text.splitlines() if "RIP: " in l), "")
    return "; ".join(filter(None, [panic[:100], rip[:80]]))


def choose(requested: str, qemu: str, qemu_version: str, kernel: Path, kernel_sha: str, initrd: Path) -> tuple[Accel, str]:
    """(accelerator, reason). requested is auto, kvm or tcg."""
    if requested == "tcg":
        return Accel("tcg"), "forced with --accel tcg"
    if requested not in ("auto", "kvm"):
        raise UsageError(f"--accel must be auto, kvm or tcg (got {requested!r})")
    if not kvm_openable():
        if requested == "kvm":
            raise UsageError("--accel kvm: /dev/kvm cannot be opened")
        return Accel("tcg"), "TCG: /dev/kvm cannot be opened"
    # KVM breakage is a property of the host and QEMU, not of the guest kernel.
    key = hashlib.sha256(f"{platform.release()}|{qemu_version}".encode()).hexdigest()[:16]
    cache = cache_dir() / "accel" / f"{key}.json"
    if cache.exists():
        verdict = json.loads(cache.read_text())
    else:
        verdict = {"kvm": False, "cpu": None, "reasons": []}
        try:
            flag = virtualization_flag(Path("/proc/cpuinfo").read_text())
        except OSError:
            flag = "unknown"  # cannot tell: let the probe decide
        if flag is None:
            verdict["reasons"].append("the host CPU has no vmx or svm flag in /proc/cpuinfo")
        else:
            info("testing whether KVM can really run a guest here (boots a probe guest once)")
        for cpu in PROBE_CPUS if flag else ():
            ok, why = probe_kvm(qemu, kernel, initrd, cpu)
            verdict["reasons"].append(f"-cpu {cpu}: {why}")
            if ok:
                verdict.update(kvm=True, cpu=cpu)
                break
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(verdict))
    if verdict["kvm"]:
        return Accel("kvm", verdict["cpu"]), f"KVM ({verdict['reasons'][-1]})"
    if requested == "kvm":
        raise UsageError(f"--accel kvm: KVM cannot run guests here ({'; '.join(verdict['reasons'])})")
    return Accel("tcg"), f"TCG: KVM cannot run guests here ({'; '.join(verdict['reasons'])})"
