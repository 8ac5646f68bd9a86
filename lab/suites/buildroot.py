"""Build roots: a Debian tree of the guest image's suite with a suite's build dependencies, made once
by mmdebstrap into the cache, in which fstests and blktests are compiled (chroot in a private mount
and PID namespace). Programs built here link the libraries the guest has, whatever the host runs."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lab.errors import LabError, UsageError
from lab.images import load_recipe
from lab.paths import cache_dir, images_dir
from lab.progress import Step, run_logged, step

LOG = logging.getLogger(__name__)

BUILDROOT_FILE = "buildroot.toml"


@dataclass(frozen=True)
class BuildRootRecipe:
    name: str
    directory: Path
    base: str  # the guest image recipe whose suite and mirror this root follows
    suite: str
    mirror: str
    packages: tuple[str, ...]

    @property
    def key(self) -> str:
        digest = hashlib.sha256(f"{self.suite}\0{self.mirror}\0".encode())
        for path in sorted(p for p in self.directory.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(self.directory)).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()[:16]


def buildroot_for(image: str) -> BuildRootRecipe:
    """The build root recipe whose base is this guest image recipe."""
    for directory in sorted(images_dir().iterdir()):
        spec = directory / BUILDROOT_FILE
        if spec.is_file() and tomllib.loads(spec.read_text()).get("base") == image:
            return load_buildroot(directory.name)
    raise UsageError(f"no build root for image {image!r}: add images/<name>/{BUILDROOT_FILE} with base = {image!r}")


def load_buildroot(name: str) -> BuildRootRecipe:
    directory = images_dir() / name
    data = tomllib.loads((directory / BUILDROOT_FILE).read_text())
    base = load_recipe(data["base"])
    packages = tuple(
        line.split("#", 1)[0].strip()
        for line in (directory / "packages.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    )
    return BuildRootRecipe(name, directory, base.name, base.suite, base.mirror, packages)


def buildroot_path(recipe: BuildRootRecipe) -> Path:
    return cache_dir() / "buildroots" / f"{recipe.name}-{recipe.key}"


def require_root() -> None:
    if os.geteuid() != 0:  # chroot and the mounts need root; a user namespace would need subuid-owned roots
        raise UsageError("building a suite in the build root needs root (chroot): run 'lab suite build' as root, or "
                         "build the tree yourself and pass it as it is")


def ensure_buildroot(recipe: BuildRootRecipe) -> Path:
    """The build root's directory, made by mmdebstrap when the cache lacks it (concurrent labs wait)."""
    path = buildroot_path(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".lab-buildroot.json").is_file():
            _make(recipe, path)
    return path


def _make(recipe: BuildRootRecipe, path: Path) -> None:
    if not shutil.which("mmdebstrap"):
        raise LabError("mmdebstrap is not installed; run 'lab setup' to install the host packages")
    log = path.with_suffix(".log")
    log.write_text("")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.time()
    with step(f"making build root {recipe.name} ({recipe.suite}, {len(recipe.packages)} packages; log {log})") as st:
        run_logged(
            ["mmdebstrap", "--variant=apt", f"--include={','.join(recipe.packages)}",
             "--customize-hook=rm -rf \"$1\"/var/cache/apt/archives/*.deb", recipe.suite, str(tmp), recipe.mirror],
            log, st, what="mmdebstrap (build root)",
        )
    (tmp / ".lab-buildroot.json").write_text(json.dumps({
        "recipe": recipe.name, "key": recipe.key, "suite": recipe.suite, "packages": list(recipe.packages),
        "seconds": round(time.time() - started, 1),
    }, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


# Runs as root in a new mount and PID namespace: the binds vanish with it, and --kill-child takes
# every process of the build down with the lab.
_CHROOT_SCRIPT = """set -e
root=$1; src=$2; shift 2
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mkdir -p "$root/build"
mount --bind "$src" "$root/build"
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    /bin/sh -c 'cd /build && exec "$@"' sh "$@"
"""


def run_in_buildroot(root: Path, source: Path, argv: Sequence[str], log: Path, st: Step | None, what: str) -> None:
    """Run argv in the build root with the source tree bound at /build (its outputs land in source)."""
    if not shutil.which("unshare"):
        raise LabError("unshare (util-linux) is needed to build in the build root")
    require_root()
    run_logged(["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", _CHROOT_SCRIPT, "sh",
                str(root), str(source), *argv], log, st, what=what)



def package_of(root: Path, library: str) -> str | None:
    """The build root's package that ships a shared library (what the guest needs to run a program
    built here), by dpkg's own file lists."""
    res = subprocess.run(["chroot", str(root), "dpkg", "-S", f"*/{library}"], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    return res.stdout.split(":", 1)[0].strip() or None
