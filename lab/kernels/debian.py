"""Packaged Debian kernels fetched through a private apt configuration that never touches the host's
sources, unpacked into the cache with their modules depmod'ed and packed into a modules disk."""

from __future__ import annotations

import fcntl
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

from lab import aptroot
from lab.errors import LabError, UsageError
from lab.kernels.kernel import Kernel, write_meta
from lab.paths import cache_dir
from lab.progress import info, run_logged, step

LOG = logging.getLogger(__name__)

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
# Suites searched for kernels; a version present in several is taken from the newest package.
SOURCES = [
    (MIRROR, "bookworm"),
    (SECURITY, "bookworm-security"),
    (MIRROR, "trixie"),
    (MIRROR, "trixie-backports"),
    (MIRROR, "sid"),
]
FLAVOUR = "amd64"
_REF_RE = re.compile(r"^\d+\.\d+(\.\d+(\+deb\d+)?)?$")


def apt_root() -> Path:
    return aptroot.make_root(cache_dir() / "apt", SOURCES)


apt_options = aptroot.apt_options


def _apt(root: Path, *args: str, check: bool = True) -> str:
    return aptroot.run_apt(root, *args, check=check)


def update_lists(root: Path, force: bool = False) -> None:
    aptroot.update_lists(root, "bookworm, trixie, trixie-backports, sid", force)


def _version_key(version: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.+~-]", version)]


def resolve_abi(root: Path, spec: str) -> str:
    """'6.12' -> '6.12.117+deb12' (newest packaged), '7.3.4' -> '7.3.4+deb13', exact ABIs pass."""
    names = _apt(root, "pkgnames", "linux-image-").split()
    abis = set()
    pattern = re.compile(rf"^linux-image-(\d+\.\d+\.\d+\+deb\d+)-{FLAVOUR}$")
    for name in names:
        m = pattern.match(name)
        if m and (m.group(1) == spec or m.group(1).startswith(spec + ".") or m.group(1).startswith(spec + "+")):
            abis.add(m.group(1))
    if not abis:
        return ""
    return max(abis, key=_version_key)


def _package_files(root: Path, abi: str) -> list[str]:
    """The packages holding the kernel image and modules: one (6.12) or the 7.x split ones."""
    image_pkg = f"linux-image-{abi}-{FLAVOUR}"
    show = _apt(root, "show", image_pkg)
    depends = next((l for l in show.splitlines() if l.startswith("Depends:")), "")
    split = [p for p in re.findall(rf"(linux-(?:binary|modules|base)-{re.escape(abi)}-{FLAVOUR})\b", depends)]
    return sorted(set(split)) if split else [image_pkg]


def fetch(spec: str) -> Kernel:
    if not _REF_RE.match(spec):
        raise UsageError(f"debian:{spec}: expected a version such as debian:6.12, debian:7.3 or debian:7.3.4+deb13")
    root = apt_root()
    # Fast path: a cached kernel answers without touching the network.
    cached = _cached(spec)
    if cached:
        return cached
    update_lists(root)
    abi = resolve_abi(root, spec)
    if not abi:
        update_lists(root, force=True)
        abi = resolve_abi(root, spec)
    if not abi:
        raise UsageError(f"debian:{spec}: no linux-image-{spec}*-{FLAVOUR} package in {', '.join(s for _, s in SOURCES)}")
    entry = cache_dir() / "kernels" / f"debian-{abi}-{FLAVOUR}"
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(str(entry) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (entry / "kernel.json").exists():
            _unpack(root, spec, abi, entry)
    (cache_dir() / "kernels" / f"alias-debian-{spec}").write_text(entry.name)
    return Kernel.load(entry)


def _cached(spec: str) -> Kernel | None:
    alias = cache_dir() / "kernels" / f"alias-debian-{spec}"
    if alias.exists():
        entry = cache_dir() / "kernels" / alias.read_text().strip()
        if (entry / "kernel.json").exists():
            return Kernel.load(entry)
    return None


def _unpack(root: Path, spec: str, abi: str, entry: Path) -> None:
    packages = _package_files(root, abi)
    work = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        log = work / "fetch.log"
        with step(f"fetching kernel debian:{spec} ({', '.join(packages)})") as st:
            run_logged(["apt-get", *apt_options(root), "-q", "download", *packages], log, st, what="apt-get download", cwd=work)
            debs = sorted(work.glob("*.deb"))
            tree = work / "tree"
            for deb in debs:
                st.update(f"unpacking {deb.name}")
                run_logged(["dpkg-deb", "-x", str(deb), str(tree)], log, st, what="dpkg-deb")
            moddirs = [p for p in (tree / "lib/modules", tree / "usr/lib/modules") if p.is_dir()]
            release_dirs = [d for m in moddirs for d in m.iterdir() if d.is_dir()]
            if len(release_dirs) != 1:
                raise LabError(f"debian:{spec}: expected one module tree in {packages}, found {release_dirs}")
            release = release_dirs[0].name
            out = work / "out"
            out.mkdir()
            vmlinuz = next((p for p in [tree / f"boot/vmlinuz-{release}", release_dirs[0] / "vmlinuz"] if p.exists()), None)
            config = next((p for p in [tree / f"boot/config-{release}", release_dirs[0] / "config"] if p.exists()), None)
            sysmap = next((p for p in [tree / f"boot/System.map-{release}", release_dirs[0] / "System.map"] if p.exists()), None)
            if not vmlinuz or not config:
                raise LabError(f"debian:{spec}: no vmlinuz or config in {packages}")
            shutil.copy2(vmlinuz, out / "vmlinuz")
            shutil.copy2(config, out / "config")
            if sysmap:
                shutil.copy2(sysmap, out / "System.map")
            modroot = out / "modules"
            (modroot / "lib/modules").mkdir(parents=True)
            shutil.move(str(release_dirs[0]), modroot / "lib/modules" / release)
            for stray in ("vmlinuz", "config", "System.map"):
                (modroot / "lib/modules" / release / stray).unlink(missing_ok=True)
            st.update("depmod")
            run_logged(["depmod", "-b", str(modroot), release], log, st, what="depmod")
            st.update("modules disk")
            make_modules_image(modroot / "lib/modules" / release, out / "modules.img", log, st)
            shutil.rmtree(tree)
        meta = {
            "ref": f"debian:{spec}",
            "kind": "debian",
            "release": release,
            "abi": abi,
            "packages": packages,
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_meta(out, meta)
        shutil.copy2(log, out / "fetch.log")
        shutil.rmtree(entry, ignore_errors=True)
        out.rename(entry)
        info(f"kernel debian:{spec} is {release} ({entry})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_modules_image(release_dir: Path, image: Path, log: Path, st=None) -> None:
    """An ext4 image of one /lib/modules/RELEASE tree, attached read-only to the guest."""
    used = sum(p.stat().st_size for p in release_dir.rglob("*") if p.is_file())
    size = int(used * 1.3) + (32 << 20)
    with open(image, "wb") as f:
        f.truncate(size)
    run_logged(["mkfs.ext4", "-q", "-F", "-L", "labmods", "-E", "root_owner=0:0", "-d", str(release_dir), str(image)],
               log, st, what="mkfs.ext4 (modules)")
    image.chmod(0o444)


def list_cached() -> list[dict]:
    out = []
    for meta in sorted((cache_dir() / "kernels").glob("*/kernel.json")):
        data = json.loads(meta.read_text())
        data["path"] = str(meta.parent)
        out.append(data)
    return out
