"""Host packages the lab needs, checked with dpkg and installed with apt-get (`lab setup`)."""

from __future__ import annotations

import logging
import os
import subprocess

from lab.errors import LabError
from lab.progress import info

LOG = logging.getLogger(__name__)

# package -> why the lab needs it
HOST_PACKAGES = {
    "qemu-system-x86": "runs the guests (qemu-system-x86_64, qboot firmware)",
    "qemu-utils": "qemu-img: copy-on-write overlays over the base image",
    "mmdebstrap": "builds the guest root file system",
    "e2fsprogs": "mkfs.ext4 -d: packs the root and modules disks",
    "busybox-static": "stage 1 of the lab's initramfs",
    "cpio": "packs the initramfs",
    "kmod": "depmod for packaged kernels' modules",
    "zstd": "unpacks zstd-compressed kernels for PVH boot",
    "debian-archive-keyring": "verifies Debian's kernel and image packages",
    "dpkg": "dpkg-deb unpacks kernel packages",
    "apt": "fetches kernels through the lab's private apt configuration",
}
# Only for kernels built from source (`lab kernel build`, build: references, bisect).
BUILD_PACKAGES = {
    "gcc": "compiles kernels",
    "make": "kbuild",
    "flex": "kconfig and dtc lexers",
    "bison": "kconfig parser",
    "bc": "kernel build scripts",
    "libelf-dev": "objtool",
    "libssl-dev": "certificate tools built during the kernel build",
    "ccache": "reuses compiled objects across builds and worktrees",
    "git": "applies series with git am on a scratch worktree",
    "xz-utils": "unpacks linux-source tarballs",
}


def missing_packages(build: bool = False) -> list[str]:
    missing = []
    for pkg in [*HOST_PACKAGES, *(BUILD_PACKAGES if build else ())]:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def install(packages: list[str]) -> None:
    if not packages:
        return
    if os.geteuid() != 0:
        raise LabError(f"missing host packages: {' '.join(packages)}; run 'sudo lab setup' or 'sudo apt-get install {' '.join(packages)}'")
    info(f"installing host packages: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
        res = subprocess.run(argv, env=env, capture_output=True, text=True)
        LOG.debug("%s: exit %d\n%s", " ".join(argv), res.returncode, res.stdout[-4000:] + res.stderr[-4000:])
        if res.returncode != 0:
            tail = " | ".join(res.stderr.strip().splitlines()[-3:])
            raise LabError(f"{' '.join(argv[:2])} failed: {tail}")


def ensure_host(build: bool = False) -> None:
    """Called before anything that boots (or builds): installs what is missing (as root) or says what to run."""
    install(missing_packages(build))
