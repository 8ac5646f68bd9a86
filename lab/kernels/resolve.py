"""Kernel references as --kernel and topologies accept them."""

from __future__ import annotations

from pathlib import Path

from lab.errors import UsageError
from lab.kernels import build, debian, named
from lab.kernels.kernel import Kernel

DEFAULT_KERNEL = "debian:7.3"
FORMS = ("debian:X.Y (a packaged Debian kernel, e.g. debian:7.3), build:KEY or build:source=S[,series=F][,config=C] "
         "(built from source, see 'lab kernel build'), a name from lab-kernels.toml, or a path to a bzImage")


def resolve(ref: str) -> Kernel:
    ref = ref.strip()
    if ref.startswith("debian:"):
        return debian.fetch(ref.removeprefix("debian:"))
    if build.is_build_key(ref):
        return build.find(ref)
    if ref.startswith("build:"):
        return build.build(build.parse_build_ref(ref))
    request = named.lookup(ref) if "/" not in ref else None
    if request:
        return build.build(request)
    path = Path(ref.removeprefix("file:")).expanduser()
    if "/" in ref or path.exists():
        return Kernel.from_file(path)
    raise UsageError(f"unknown kernel reference {ref!r}; use {FORMS}")
