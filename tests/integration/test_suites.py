"""Suites built for the guest: the fake fstests source built by `lab suite build` in the image's build
root (a real mmdebstrap chroot of trixie) links trixie's libaio and runs in the guest; the same source
built on the host (bookworm's libaio.so.1) is refused in the guest with the missing library named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.scenarios.fstests import tree_tarball
from lab.suites.libcheck import check_libraries

FAKE = Path(__file__).resolve().parent.parent / "fixtures" / "fstests-fake"
HOST_LIBAIO = Path("/usr/lib/x86_64-linux-gnu/libaio.so.1")


def _lab(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *argv], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ))


def _install(guest, tree: Path, tmp_path: Path, name: str) -> str:
    tarball = tmp_path / f"{name}.tar.gz"
    tarball.write_bytes(tree_tarball(tree))
    guest.put(tarball, f"/root/{name}.tar.gz")
    guest.run(f"rm -rf /root/{name} && mkdir /root/{name} && tar -xzf /root/{name}.tar.gz -C /root/{name} --strip-components=1",
              check=True)
    return f"/root/{name}"


def test_built_in_the_build_root_it_runs_in_the_guest_and_a_host_build_is_refused(tmp_path, lab_boot):
    first = _lab("suite", "build", "fstests", "--source", str(FAKE))
    assert first.returncode == 0, first.stderr
    built = Path(first.stdout.split()[0])
    needed = subprocess.run(["readelf", "-d", str(built / "ltp/fsstress")], capture_output=True, text=True).stdout
    assert "libaio.so.1t64" in needed, needed  # trixie's library, whatever the host has
    again = _lab("suite", "build", "fstests", "--source", str(FAKE))
    assert again.returncode == 0 and "cached build" in again.stderr and again.stdout.split()[0] == str(built)
    listed = _lab("suite", "list")
    assert str(built) in listed.stdout

    guest = lab_boot("nvme-pi", kernel="debian:7.3").guest("vm")
    remote = _install(guest, built, tmp_path, "fstests-built")
    assert check_libraries(guest, remote, "fstests") == []
    assert guest.run(f"cd {remote} && ./ltp/fsstress").ok

    if not HOST_LIBAIO.exists():
        pytest.skip(f"{HOST_LIBAIO} is not on this host: no host-linked tree to refuse")
    host_tree = tmp_path / "host-built"
    shutil.copytree(FAKE, host_tree)
    subprocess.run(["gcc", "-O2", "-o", "ltp/fsstress", "ltp/fsstress.c", str(HOST_LIBAIO)], cwd=host_tree, check=True)
    remote = _install(guest, host_tree, tmp_path, "fstests-host")
    with pytest.raises(LabError) as refused:
        check_libraries(guest, remote, "fstests")
    message = str(refused.value)
    assert "ltp/fsstress needs libaio.so.1," in message and "libaio1t64" in message and "lab suite build fstests" in message
    assert "\n" not in message


def test_bad_sources_are_one_line_errors(tmp_path):
    built_plain = tmp_path / "built"
    shutil.copytree(FAKE, built_plain)
    (built_plain / "ltp/fsstress").write_text("#!/bin/sh\n")
    for argv, expected in (
        (["suite", "build", "fstests", "--source", str(tmp_path / "missing")], "no such directory"),
        (["suite", "build", "fstests", "--source", str(built_plain)], "already built"),
        (["suite", "build", "blktests", "--source", str(FAKE) + "@HEAD"], "needs a git repository"),
        (["suite", "build", "blktests", "--source", str(FAKE)], "no blktests tree here"),
    ):
        res = _lab(*argv)
        assert res.returncode == 2 and expected in res.stderr and "Traceback" not in res.stderr, (argv, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
