"""What the installed QEMU supports, asked from QEMU itself and cached per binary."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lab.errors import LabError
from lab.paths import cache_dir

LOG = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
DEVICES = ("nvme", "nvme-ns", "pcie-root-port", "x3130-upstream", "xio3130-downstream", "virtio-net-pci")
_PROP_RE = re.compile(r"^\s+([A-Za-z0-9_.-]+)=<")


@dataclass(frozen=True)
class QemuCaps:
    binary: str
    version: str
    properties: dict[str, frozenset[str]]
    cpu_models: frozenset[str] = frozenset()

    def has(self, device: str, prop: str) -> bool:
        return prop in self.properties.get(device, frozenset())


def qemu_binary() -> str:
    path = shutil.which(QEMU_BINARY)
    if not path:
        raise LabError(f"{QEMU_BINARY} is not installed; run 'lab setup' to install the host packages")
    return path


def parse_device_help(text: str) -> frozenset[str]:
    """Property names from `-device NAME,help` output."""
    return frozenset(m.group(1) for line in text.splitlines() if (m := _PROP_RE.match(line)))


def parse_cpu_help(text: str) -> frozenset[str]:
    """Model names from `-cpu help` ("x86 EPYC-v4  AMD EPYC Processor ...", "x86 max ...")."""
    models = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "x86":
            models.add(fields[1])
    return frozenset(models)


def _binary_key(path: str) -> str:
    stat = Path(path).stat()
    return hashlib.sha256(f"caps-2:{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def probe() -> QemuCaps:
    binary = qemu_binary()
    cache = cache_dir() / "qemu-caps" / f"{_binary_key(binary)}.json"
    if cache.exists():
        try:
            data = json.loads(cache.read_text())
            return QemuCaps(binary, data["version"], {k: frozenset(v) for k, v in data["properties"].items()},
                            frozenset(data["cpu_models"]))
        except (ValueError, KeyError, TypeError):
            cache.unlink(missing_ok=True)  # a damaged cache entry is asked again

    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    version = re.search(r"version (\S+)", out)
    props: dict[str, frozenset[str]] = {}
    for device in DEVICES:
        res = subprocess.run([binary, "-device", f"{device},help"], capture_output=True, text=True, timeout=30)
        props[device] = parse_device_help(res.stdout)
    cpus = parse_cpu_help(subprocess.run([binary, "-cpu", "help"], capture_output=True, text=True, timeout=30).stdout)
    caps = QemuCaps(binary, version.group(1) if version else "unknown", props, cpus)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"version": caps.version, "properties": {k: sorted(v) for k, v in props.items()},
                                 "cpu_models": sorted(cpus)}))
    return caps
