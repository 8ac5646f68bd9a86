"""Kernel references as --kernel and topologies accept them."""

from __future__ import annotations

from pathlib import Path

from lab.errors import UsageError
from lab.kernels import debian
from lab.kernels.kernel import Kernel

DEFAULT_KERNEL = "debian:7.3"
FORMS = "debian:X.Y (a packaged Debian kernel, e.g. debian:6.12, debian:7.3) or a path to a bzImage"


def resolve(ref: str) -> Kernel:
    ref = ref.strip()
    if ref.startswith("debian:"):
        return debian.fetch(ref.removeprefix("debian:"))
    if ref.startswith("build:"):
        raise UsageError(f"{ref}: kernels built from source are not available yet; use {FORMS}")
    path = Path(ref.removeprefix("file:")).expanduser()
    if "/" in ref or path.exists():
        return Kernel.from_file(path)
    raise UsageError(f"unknown kernel reference {ref!r}; use {FORMS}")
