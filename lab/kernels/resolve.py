"""Kernel references as --kernel and topologies accept them."""

from __future__ import annotations

from pathlib import Path

from lab.errors import UsageError
from lab.kernels import build, debian, named
from lab.kernels.kernel import Kernel

DEFAULT_KERNEL = "debian:7.3"
FORMS = ("debian:X.Y (a packaged Debian kernel, e.g. debian:7.3), build:KEY or build:source=S[,series=F][,config=C] "
         "(built from source, see 'lab kernel build'), a name from lab-kernels.toml, or a path to a bzImage")


def check(ref: str) -> None:
    """What can be told of a reference offline, without fetching or building: a Debian name, a
    built kernel in the cache, a build request whose inputs exist, a name from lab-kernels.toml, a
    bzImage. An error here is one a run would meet later, after it had started."""
    ref = ref.strip()
    if ref.startswith("debian:"):
        return  # needs the archive; its spelling was checked with the options
    if build.is_build_key(ref):
        build.find(ref)
        return
    if ref.startswith("build:"):
        build.check_request(build.parse_build_ref(ref))
        return
    request = named.lookup(ref) if "/" not in ref else None
    if request:
        build.check_request(request)
        return
    path = Path(ref.removeprefix("file:")).expanduser()
    if "/" in ref or path.exists():
        from lab.kernels.kernel import check_bzimage

        check_bzimage(path)
        return
    raise UsageError(f"unknown kernel reference {ref!r}; use {FORMS}")


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
