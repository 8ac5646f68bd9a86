"""Debian debug symbols: vmlinux (and the real System.map) streamed out of a -dbg package built here
with dpkg-deb in both layouts Debian has used; symlinks in the package are never followed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab.errors import LabError, UsageError
from lab.kernels.debug_symbols import extract_vmlinux, package_name
from lab.kernels.kernel import Kernel

RELEASE = "7.3.4+deb13-amd64"


def make_deb(tmp_path: Path, files: dict[str, bytes], links: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text("Package: linux-image-test-dbg\nVersion: 1\nArchitecture: amd64\n"
                                         "Maintainer: lab <lab@example.org>\nDescription: test\n")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for rel, target in links.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    deb = tmp_path / "test-dbg.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.mark.parametrize("layout", ["lib/modules", "boot"])
def test_vmlinux_and_system_map_come_out_of_either_layout(tmp_path: Path, layout: str) -> None:
    elf = b"\x7fELF" + b"\0" * 100
    if layout == "lib/modules":
        files = {f"usr/lib/debug/lib/modules/{RELEASE}/vmlinux": elf, f"usr/lib/debug/lib/modules/{RELEASE}/System.map": b"ffff T _text\n",
                 f"usr/lib/debug/lib/modules/{RELEASE}/kernel/fs/xfs.ko": b"module"}
        links = {f"usr/lib/debug/boot/vmlinux-{RELEASE}": f"../lib/modules/{RELEASE}/vmlinux"}
    else:
        files, links = {f"usr/lib/debug/boot/vmlinux-{RELEASE}": elf}, {}
    dest = tmp_path / "entry"
    dest.mkdir()
    out = extract_vmlinux(make_deb(tmp_path, files, links), RELEASE, dest, tmp_path / "log")
    assert out == dest / "vmlinux" and out.read_bytes() == elf and not out.is_symlink()
    assert (dest / "System.map").exists() == (layout == "lib/modules")
    assert sorted(p.name for p in dest.iterdir()) == sorted(["vmlinux"] + (["System.map"] if layout == "lib/modules" else []))


def test_a_symlink_named_vmlinux_or_a_non_elf_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "entry"
    dest.mkdir()
    deb = make_deb(tmp_path, {}, {f"usr/lib/debug/lib/modules/{RELEASE}/vmlinux": "/etc/passwd"})
    with pytest.raises(LabError, match="no vmlinux for"):
        extract_vmlinux(deb, RELEASE, dest, tmp_path / "log")
    other = tmp_path / "other"
    other.mkdir()
    deb = make_deb(other, {f"usr/lib/debug/boot/vmlinux-{RELEASE}": b"not elf"}, {})
    with pytest.raises(LabError, match="not an ELF file"):
        extract_vmlinux(deb, RELEASE, dest, tmp_path / "log")
    assert list(dest.iterdir()) == []


def test_only_debian_kernels_have_a_dbg_package(tmp_path: Path) -> None:
    def kernel(meta: dict) -> Kernel:
        return Kernel(ref=meta["ref"], release=RELEASE, vmlinuz=tmp_path / "vmlinuz", modules_dir=None, modules_image=None,
                      config=None, sha256="0" * 64, meta=meta)

    assert package_name(kernel({"ref": "debian:7.3", "kind": "debian", "abi": "7.3.4+deb13"})) == "linux-image-7.3.4+deb13-amd64-dbg"
    with pytest.raises(UsageError, match="for debian:X.Y kernels only"):
        package_name(kernel({"ref": "build:abc", "kind": "build"}))
    with pytest.raises(UsageError):
        package_name(kernel({"ref": "debian:x", "kind": "debian", "abi": "7.3; rm -rf /"}))
