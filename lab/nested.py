"""The lab inside one of its guests: a machine with `lab_inside: true` (the kvm-host topology) gets
the lab's wheel, the wheels Debian does not package at the versions the lab needs, and the parts of
the host's cache its own guests boot from (the images and kernels of this run), through a read-only
9p share; a venv over Debian's Python packages, and `lab` on its PATH. Under TCG with -cpu max the
machine sees svm and loads kvm_amd, so the lab inside boots its guests with KVM: the runners'
KVM path, exercised on a machine without vmx or svm."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lab.errors import LabError, UsageError
from lab.paths import DATA_ROOT, INSTALLED, cache_dir
from lab.progress import step

if TYPE_CHECKING:
    from lab.lab import Lab

LOG = logging.getLogger(__name__)

SHARE_TAG = "labcache"
# Wheels the guest's venv takes from PyPI (the rest are Debian packages in the lab-kvm-host image):
# every dependency of the lab that Debian does not package at the version it needs, or at all.
FROM_PYPI = ("fabric", "qemu.qmp", "shtab")

GUEST_SETUP = r"""set -e
modprobe -a 9pnet_virtio 9p
mkdir -p /mnt/labcache
mountpoint -q /mnt/labcache || mount -t 9p -o trans=virtio,version=9p2000.L,ro labcache /mnt/labcache
C=/root/.cache/lab
mkdir -p "$C/images" "$C/kernels"
# Images and kernels are read in place (runs write only to overlays); apt lists are copied with
# their times, so the image resolves as on the host without a network.
for f in /mnt/labcache/cache/images/*; do ln -sfn "$f" "$C/images/"; done
rm -rf "$C/apt-images" && cp -a /mnt/labcache/cache/apt-images "$C/"
for f in /mnt/labcache/cache/kernels/*; do
    case "$f" in */alias-*) cp "$f" "$C/kernels/" ;; *) ln -sfn "$f" "$C/kernels/" ;; esac
done
[ -x /opt/lab/bin/lab ] || python3 -m venv --system-site-packages /opt/lab
/opt/lab/bin/pip install -q --no-index --find-links /mnt/labcache/wheels --force-reinstall --no-deps /mnt/labcache/wheels/lab-*.whl
/opt/lab/bin/pip install -q --no-index --find-links /mnt/labcache/wheels lab
cat > /usr/local/bin/lab <<'EOF'
#!/bin/sh
export LAB_RESULTS="${LAB_RESULTS:-/root/results}"
exec /opt/lab/bin/lab "$@"
EOF
chmod +x /usr/local/bin/lab
modprobe kvm_amd 2>/dev/null || modprobe kvm_intel
test -c /dev/kvm
lab --version
"""


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file, dirs_exist_ok=True, symlinks=True)
    else:
        _link_file(src, dst)


def _link_file(src: str | Path, dst: str | Path) -> None:
    """A hard link where the run directory and the cache share a file system (the usual case: no
    bytes copied), a copy otherwise."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def lab_wheel(into: Path) -> Path:
    """The running lab as a wheel: LAB_WHEEL when set (an installed lab cannot rebuild its own),
    else built from the checkout it runs from."""
    given = os.environ.get("LAB_WHEEL")
    if given:
        wheel = Path(given)
        if not (wheel.is_file() and wheel.name.startswith("lab-") and wheel.suffix == ".whl"):
            raise UsageError(f"LAB_WHEEL={given}: not a lab wheel file (lab-*.whl)")
        shutil.copy2(wheel, into / wheel.name)
        return into / wheel.name
    if INSTALLED:
        raise UsageError("a machine with lab_inside needs the lab's wheel: set LAB_WHEEL=/path/to/lab-*.whl "
                         "(the wheel this lab was installed from)")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), str(DATA_ROOT)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise LabError(f"building the lab's wheel failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return next(into.glob("lab-*.whl"))


def pypi_wheels(into: Path) -> None:
    """The pure-Python wheels of FROM_PYPI at the versions this lab runs with, kept in the cache."""
    kept = cache_dir() / "wheels"
    kept.mkdir(parents=True, exist_ok=True)
    for name in FROM_PYPI:
        version = importlib.metadata.version(name)
        stem = name.replace(".", "_").replace("-", "_")
        found = [w for w in kept.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-".lower())]
        if not found:
            res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(kept),
                                  f"{name}=={version}"], capture_output=True, text=True)
            if res.returncode != 0:
                raise LabError(f"pip download {name}=={version} failed (the guest's venv needs it): "
                               f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
            found = [w for w in kept.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-".lower())]
        for wheel in found:
            _link_file(wheel, into / wheel.name)


def fill_share(lab: Lab, machine: str, share: Path) -> None:
    """The share's cache/ (this run's images and kernels) and wheels/."""
    cache = cache_dir()
    wheels = share / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    lab_wheel(wheels)
    pypi_wheels(wheels)
    for image in lab.images.values():
        for path in (image.path, image.path.with_suffix(".json"), cache / "images" / f"{image.recipe.name}.resolved.json"):
            if path.exists():
                _link_or_copy(path, share / "cache/images" / path.name)
        if image.recipe.parent is not None:  # the nested guests boot the parent image (lab-trixie)
            parent = _parent_image(image.recipe.parent.name)
            if parent is not None:
                for path in (parent, parent.with_suffix(".json"), cache / "images" / f"{image.recipe.parent.name}.resolved.json"):
                    if path.exists():
                        _link_or_copy(path, share / "cache/images" / path.name)
    if (cache / "apt-images").is_dir():
        _link_or_copy(cache / "apt-images", share / "cache/apt-images")
    for kernel in {k.vmlinuz.parent for k in lab.kernels.values()}:
        _link_or_copy(kernel, share / "cache/kernels" / kernel.name)
        for alias in (cache / "kernels").glob("alias-*"):
            if alias.read_text().strip() == kernel.name:
                _link_or_copy(alias, share / "cache/kernels" / alias.name)


def _parent_image(recipe: str) -> Path | None:
    from lab.images import ensure_image

    return ensure_image(recipe).path


def stage(lab: Lab, machine: str) -> None:
    """Put the lab into `machine` of a booted lab; afterwards `lab` runs there as root."""
    assert lab.files is not None
    share = lab.files[machine].shares.get(SHARE_TAG)
    if share is None:
        raise UsageError(f"machine {machine}: lab_inside needs a share with tag {SHARE_TAG!r} (readonly)")
    with step(f"putting the lab into {machine} (wheel, images, kernels through 9p; venv)") as st:
        fill_share(lab, machine, share)
        st.update("setting up the venv in the guest")
        res = lab.guest(machine).run(GUEST_SETUP, timeout=900)
        if not res.ok:
            raise LabError(f"setting up the lab inside {machine} failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
        LOG.debug("lab inside %s: %s", machine, res.stdout.strip())
