"""Debug symbols for Debian's kernels: the `-dbg` package's vmlinux, kept beside the cached kernel
so `lab up --gdb` can name it. The package is about 1.2 GB (7.8 GB unpacked, mostly modules'
symbols); only vmlinux is extracted, streamed out of the archive, and the download is removed."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab import aptroot
from lab.errors import LabError, UsageError
from lab.kernels import debian
from lab.kernels.kernel import Kernel
from lab.progress import run_logged, step

LOG = logging.getLogger(__name__)
_ABI_RE = re.compile(r"^\d+\.\d+\.\d+\+deb\d+$")


def vmlinux_of(kernel: Kernel) -> Path | None:
    """The kernel's vmlinux with debug info, if the lab has it (built kernels keep theirs)."""
    path = kernel.vmlinuz.parent / "vmlinux"
    return path if path.is_file() else None


def package_name(kernel: Kernel) -> str:
    abi = str(kernel.meta.get("abi", ""))
    if kernel.meta.get("kind") != "debian" or not _ABI_RE.match(abi):
        raise UsageError(f"{kernel.ref}: debug symbols come from Debian's -dbg packages, for debian:X.Y kernels only "
                         "(a built kernel keeps its own vmlinux)")
    return f"linux-image-{abi}-{debian.FLAVOUR}-dbg"


def extract_vmlinux(deb: Path, release: str, dest_dir: Path, log: Path) -> Path:
    """Stream vmlinux (and the real System.map; the image package's is a placeholder) out of the -dbg
    package without unpacking the rest (dpkg-deb | tar). 7.x ships them under lib/modules/RELEASE/,
    6.12 as boot/vmlinux-RELEASE; the other name is a symlink, never followed."""
    members = [f"./usr/lib/debug/lib/modules/{release}/vmlinux", f"./usr/lib/debug/lib/modules/{release}/System.map",
               f"./usr/lib/debug/boot/vmlinux-{release}"]
    out_dir = dest_dir / "dbg.unpack"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    try:
        with open(log, "a") as logf:
            dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=logf)
            assert dpkg.stdout is not None
            # tar exits 2 for a member that is not there (one of the two layouts): judged by what it wrote.
            tar = subprocess.run(["tar", "-x", "-C", str(out_dir), "--no-same-owner", "--ignore-failed-read", *members],
                                 stdin=dpkg.stdout, stdout=logf, stderr=subprocess.PIPE, text=True)
            dpkg.stdout.close()
            dpkg.wait()
        found = [out_dir / m for m in members if (out_dir / m).is_file() and not (out_dir / m).is_symlink()]
        vmlinux = next((f for f in found if f.name.startswith("vmlinux")), None)
        if vmlinux is None:
            why = (tar.stderr.strip().splitlines() or [f"tar exit {tar.returncode}"])[-1]
            raise LabError(f"{deb.name}: no vmlinux for {release} in it ({why[:200]})")
        with open(vmlinux, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise LabError(f"{deb.name}: its vmlinux is not an ELF file")
        vmlinux.rename(dest_dir / "vmlinux")
        sysmap = out_dir / members[1]
        if sysmap.is_file() and not sysmap.is_symlink():
            sysmap.rename(dest_dir / "System.map")  # the real one, in place of the placeholder
        return dest_dir / "vmlinux"
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def fetch_debug_symbols(kernel: Kernel) -> Path:
    """The vmlinux of a Debian kernel, downloaded once into its cache entry."""
    have = vmlinux_of(kernel)
    if have:
        return have
    pkg = package_name(kernel)
    root = debian.apt_root()
    debian.update_lists(root)
    show = aptroot.run_apt(root, "show", pkg, check=False)
    size = next((int(line.split()[1]) for line in show.splitlines() if line.startswith("Size:")), 0)
    if not size:
        raise LabError(f"{kernel.ref}: Debian has no {pkg} in {', '.join(s for _, s in debian.SOURCES)}")
    entry = kernel.vmlinuz.parent
    work = Path(tempfile.mkdtemp(prefix="dbg.", dir=entry.parent))
    try:
        log = work / "fetch-dbg.log"
        with step(f"fetching {pkg} ({size / 1e9:.1f} GB; only vmlinux is kept)") as st:
            run_logged(["apt-get", *aptroot.apt_options(root), "-q", "download", pkg], log, st, what="apt-get download", cwd=work)
            deb = next(iter(sorted(work.glob("*.deb"))), None)
            if deb is None:
                raise LabError(f"apt-get download {pkg} left no .deb; log: {log}")
            st.update("extracting vmlinux (the archive is read to its end)")
            return extract_vmlinux(deb, kernel.release, entry, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
