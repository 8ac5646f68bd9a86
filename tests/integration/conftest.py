import subprocess

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
