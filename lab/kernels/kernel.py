"""A bootable kernel as the lab sees it: an image, its modules (if any), its identity."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lab.errors import UsageError


def _sha256(path: Path) -> str:
    from lab.images import file_sha256

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
        if not path.is_file():
            raise UsageError(f"kernel image {path} does not exist")
        with open(path, "rb") as f:
            header = f.read(0x210)
        if len(header) < 0x206 or header[0x202:0x206] != b"HdrS":
            raise UsageError(f"{path} is not an x86 bzImage (no 'HdrS' boot header)")
        config = next((p for p in (path.parent / ".config", path.parent.parent.parent.parent / ".config") if p.is_file()), None)
        return cls(
            ref=str(path), release=_bzimage_release(path), vmlinuz=path, modules_dir=None, modules_image=None,
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


def _bzimage_release(path: Path) -> str:
    """The version string a bzImage carries (pointed to by its header at 0x20e)."""
    data = path.read_bytes()
    offset = int.from_bytes(data[0x20E:0x210], "little") + 0x200
    end = data.find(b"\0", offset)
    text = data[offset:end].decode(errors="replace") if end > offset else ""
    return text.split(" ")[0] or "unknown"
