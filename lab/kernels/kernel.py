"""A bootable kernel as the lab sees it: an image, its modules (if any), its identity."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lab.errors import UsageError

LOG = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    from lab.units import file_sha256

    return file_sha256(path)


def write_meta(entry: Path, meta: dict) -> None:
    meta = dict(meta)
    meta["sha256"] = _sha256(entry / "vmlinuz")
    (entry / "kernel.json").write_text(json.dumps(meta, indent=2))


@dataclass(frozen=True)
class Kernel:
    ref: str
    release: str
    vmlinuz: Path
    modules_dir: Path | None  # the /lib/modules/RELEASE tree on the host (for the initramfs)
    modules_image: Path | None  # the same tree as a read-only disk for the guest
    config: Path | None
    sha256: str
    meta: dict

    @classmethod
    def load(cls, entry: Path) -> "Kernel":
        meta = json.loads((entry / "kernel.json").read_text())
        release = meta["release"]
        moddir = entry / "modules/lib/modules" / release
        return cls(
            ref=meta["ref"],
            release=release,
            vmlinuz=entry / "vmlinuz",
            modules_dir=moddir if moddir.is_dir() else None,
            modules_image=entry / "modules.img" if (entry / "modules.img").exists() else None,
            config=entry / "config" if (entry / "config").exists() else None,
            sha256=meta["sha256"],
            meta=meta,
        )

    @classmethod
    def from_file(cls, path: Path) -> "Kernel":
        """A bzImage built elsewhere: everything the guest needs must be built in."""
        release = check_bzimage(path)
        config = next((p for p in (path.parent / ".config", path.parent.parent.parent.parent / ".config") if p.is_file()), None)
        return cls(
            ref=str(path), release=release, vmlinuz=path, modules_dir=None, modules_image=None,
            config=config, sha256=_sha256(path), meta={"ref": str(path), "kind": "file"},
        )

    def config_value(self, option: str) -> str | None:
        """'y', 'm', a value, or None when unset/unknown."""
        if not self.config:
            return None
        prefix = f"CONFIG_{option}="
        for line in self.config.read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip('"')
        return None

    def identity(self) -> dict:
        return {"ref": self.ref, "release": self.release, "sha256": self.sha256, **{k: v for k, v in self.meta.items() if k not in ("ref",)}}


def check_bzimage(path: Path) -> str:
    """A file that is a bootable x86 bzImage, by its boot protocol header (not its magic alone):
    the boot flag, "HdrS", a 2.08+ protocol, a loaded-high kernel, a compressed payload inside the
    file, and a version string that names a release. Returns the release; nothing is written."""
    if not path.is_file() or path.is_symlink() and not path.resolve().is_file():
        raise UsageError(f"kernel image {path} does not exist (or is not a regular file)")
    with open(path, "rb") as f:
        header = f.read(0x260)
        size = f.seek(0, 2)
    if len(header) < 0x260 or header[0x202:0x206] != b"HdrS":
        raise UsageError(f"{path} is not an x86 bzImage (no 'HdrS' boot header)")
    word = lambda at, n=2: int.from_bytes(header[at:at + n], "little")  # noqa: E731
    setup_sects = header[0x1F1] or 4
    protocol = word(0x206)
    payload_offset, payload_length = word(0x248, 4), word(0x24C, 4)
    setup_end = (setup_sects + 1) * 512
    problem = None
    if word(0x1FE) != 0xAA55:
        problem = "no 0xAA55 boot flag"
    elif protocol < 0x0208:
        problem = f"boot protocol {protocol >> 8}.{protocol & 0xff:02d}, older than 2.08"
    elif not header[0x211] & 0x01:
        problem = "not loaded high (a zImage, not a bzImage)"
    elif payload_length == 0 or setup_end + payload_offset + payload_length > size:
        problem = f"its compressed kernel ({payload_length} bytes at {setup_end + payload_offset}) is not inside the {size}-byte file"
    if problem:
        raise UsageError(f"{path} carries a bzImage header but is not a bootable kernel: {problem}")
    with open(path, "rb") as f:
        f.seek(word(0x20E) + 0x200)
        text = f.read(256).split(b"\0", 1)[0].decode(errors="replace")
    release = text.split(" ")[0]
    if not re.match(r"\d+\.\d+", release):
        raise UsageError(f"{path} carries a bzImage header but no kernel version string ({text[:40]!r})")
    return release
