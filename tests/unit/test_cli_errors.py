"""Bad input on the command line: one line, exit 2, no traceback."""

import subprocess
import sys

import pytest

CASES = [
    (["topology", "show", "nvme-pi", "-p", "pi=9"], "machines.vm.nvme[0].namespaces[0].pi"),
    (["topology", "show", "nvme-pi", "-p", "nope=1"], "unknown parameter nope"),
    (["topology", "show", "no-such"], "unknown topology"),
    (["topology", "show", "nvme-pi", "-p", "broken"], "not key=value"),
    (["inspect", "nvme-pi", "--kernel", "debian:banana"], "debian:banana"),
    (["inspect", "nvme-pi", "--kernel", "/nonexistent/bzImage"], "does not exist"),
    (["inspect", "nvme-pi", "--kernel", "build:base=/nonexistent/linux"], "kernel source '/nonexistent/linux': no such file"),
    (["inspect", "nvme-pi", "--kernel", "build:0123456789abcdef"], "no such built kernel"),
    (["inspect", "nvme-pi", "--kernel", "no-such-kernel-name"], "unknown kernel reference"),
    (["kernel", "build", "--source", "/tmp", "--series", "/nonexistent/fix.mbox"], "no such file or directory"),
    (["kernel", "build", "--source", "/tmp", "--config", "no-such-fragment"], "config fragment 'no-such-fragment'"),
    (["kernel", "build", "--source", "/tmp"], "is not a kernel tree"),
    (["ssh", "vm", "--lab", "no-such-lab-id"], "no running lab"),
    (["bisect", "--base", "/tmp", "--scenario", "stable-pages"], "needs either --series"),
    (["bisect", "--base", "/tmp", "--series", "x", "--scenario", "stable-pages", "--", "--kernel", "debian:7.3"],
     "bisect chooses the kernels itself"),
    (["bisect", "--base", "/tmp", "--series", "x", "--scenario", "stable-pages", "--", "--bs", "3"], "block size '3'"),
    (["run", "nfs-fstests", "--fstests", "/nonexistent/fstests"], "no such directory"),
    (["kernel", "remove", "build:0123456789abcdef"], "no such built kernel"),
]


@pytest.mark.parametrize("argv,expected", CASES)
def test_bad_input_is_one_line_and_exit_2(argv, expected):
    res = subprocess.run([sys.executable, "-m", "lab", *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [l for l in res.stderr.splitlines() if l.startswith("lab: error:")]
    assert len(errors) == 1 and expected in errors[0], res.stderr


def test_topology_show_qemu_prints_argv():
    res = subprocess.run([sys.executable, "-m", "lab", "topology", "show", "p2p-switch", "--qemu"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "x3130-upstream" in res.stdout and "nvme-ns" in res.stdout
