import os
import signal
import subprocess
import sys

import pytest

from lab.host import ensure_host

KERNELS = ["debian:6.12", "debian:7.3"]


@pytest.fixture(scope="session", autouse=True)
def host_ready():
    ensure_host()


def qemu_pids_matching(text: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True).stdout.split()
    pids = []
    for pid in out:
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(pid))
    return pids


def _idle_priority() -> None:
    """SCHED_IDLE: the child (and make and every compiler under it) runs only when the guests leave a
    CPU idle, so the tests that boot guests do not slow down."""
    os.setsid()
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


@pytest.fixture(scope="session", autouse=True)
def kernel_build_in_idle_time(request, host_ready):
    """The kernel test_kernel_build needs, built from the start of the session in the CPU time the
    guests of the other tests leave idle (the build is the same `lab kernel build`; the test then
    finds it in the cache, or waits on the build's lock for the rest). Saves most of the 12-minute
    cold build from a cold CI run."""
    if not any("test_kernel_build" in str(item.fspath) for item in request.session.items):
        yield None
        return
    from lab.paths import cache_dir

    fragments = os.environ.get("LAB_TEST_FRAGMENTS")
    argv = [sys.executable, "-m", "lab", "kernel", "build", "--source", "linux-source-7.3"]
    if fragments:
        argv += ["--fragments", fragments]
    log = open(cache_dir() / "background-kernel-build.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_idle_priority)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    log.close()
