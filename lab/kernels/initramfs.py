"""The lab's own small initramfs per kernel: busybox, the modules needed to reach the root disk,
and the two boot stages from images/init. Far smaller and faster than a distribution initramfs."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.errors import LabError
from lab.kernels.kernel import Kernel
from lab.paths import cache_dir, images_dir

LOG = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")
# What stage 1 loads before the root is switched: the ext4 root on virtio-blk, and virtio_net, which
# stage 2 needs first. Each chain loads in order, the chains side by side (module loading is
# mostly the guest CPU patching text under TCG: a second vCPU takes the NIC's chain while the first
# takes ext4's, 0.5 s off the boot). Everything else loads from the modules disk. crc32c_generic is
# ext4's soft dependency on 6.12 (built in on 7.x, where the name is simply absent).
ROOT_CHAINS: tuple[tuple[str, ...], ...] = (("virtio_blk",), ("crc32c_generic", "ext4"), ("virtio_net",))


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep lines 'kernel/x.ko.xz: kernel/y.ko.xz ...' -> {module name: [paths, deps first]}."""
    deps: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        paths[module_name(path)] = path
        deps[path] = rest.split()
    out: dict[str, list[str]] = {}
    for name, path in paths.items():
        # modules.dep lists the full closure, nearest first; loading must go in reverse.
        out[name] = [*reversed(deps[path]), path]
    return out


def module_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return base.replace("-", "_")


def load_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Module paths to insmod, dependencies first, each once. Built-in modules need nothing."""
    dep_file = modules_dir / "modules.dep"
    if not dep_file.exists():
        return []
    table = parse_modules_dep(dep_file.read_text())
    order: list[str] = []
    for name in wanted:
        for path in table.get(name, []):
            if path not in order:
                order.append(path)
    return order


def chain_orders(modules_dir: Path, chains: tuple[tuple[str, ...], ...]) -> list[list[str]]:
    """load_order per chain; a module two chains need is loaded by the first one only."""
    seen: set[str] = set()
    out = []
    for chain in chains:
        order = [p for p in load_order(modules_dir, chain) if p not in seen]
        seen.update(order)
        if order:
            out.append(order)
    return out


def _decompress(src: Path) -> bytes:
    data = src.read_bytes()
    if src.name.endswith(".xz"):
        return lzma.decompress(data)
    if src.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(src)], capture_output=True, check=True).stdout
    if src.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _source_key(kernel: Kernel) -> str:
    digest = hashlib.sha256(kernel.sha256.encode())
    for name in ("init", "stage2"):
        digest.update((images_dir() / "init" / name).read_bytes())
    digest.update(repr(ROOT_CHAINS).encode())
    return digest.hexdigest()[:16]


def ensure_initramfs(kernel: Kernel) -> Path:
    if not BUSYBOX.exists():
        raise LabError(f"{BUSYBOX} is missing; run 'lab setup' (it installs busybox-static)")
    out = cache_dir() / "initramfs" / f"{kernel.release}-{_source_key(kernel)}.cpio"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(str(out) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            _build(kernel, out)
    return out


def _build(kernel: Kernel, out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="initramfs-", dir=out.parent))
    try:
        root = work / "root"
        for sub in ("bin", "proc", "sys", "dev", "newroot", "lab", "lib/modules"):
            (root / sub).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        os.symlink("busybox", root / "bin/sh")
        shutil.copy2(images_dir() / "init/init", root / "init")
        shutil.copy2(images_dir() / "init/stage2", root / "lab/stage2")
        lines = []
        if kernel.modules_dir:
            for chain in chain_orders(kernel.modules_dir, ROOT_CHAINS):
                names = []
                for rel in chain:
                    name = module_name(rel) + ".ko"
                    (root / "lib/modules" / name).write_bytes(_decompress(kernel.modules_dir / rel))
                    names.append(name)
                lines.append(" ".join(names))
        # One chain per line: stage 1 loads the lines side by side, each line in order.
        (root / "lib/modules/load.order").write_text("".join(f"{line}\n" for line in lines))
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        tmp = work / "initramfs.cpio"
        with open(tmp, "wb") as f:
            subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0"],
                           input="\n".join(files).encode(), stdout=f, cwd=root, check=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
