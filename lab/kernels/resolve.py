"""Kernel references as --kernel and topologies accept them."""

from __future__ import annotations

import re
from pathlib import Path

from lab.errors import UsageError
from lab.kernels import build, debian, named
from lab.kernels.kernel import Kernel, check_bzimage

DEFAULT_KERNEL = "debian:7.3"
FORMS = ("debian:X.Y (a packaged Debian kernel, e.g. debian:7.3), build:KEY or build:source=S[,series=F][,config=C] "
         "(built from source, see 'lab kernel build'), a name from lab-kernels.toml, or a path to a bzImage")
MAX_REF = 512
_REF_CHARS = re.compile(r"^[^\s\0]+$")


def kernel_ref(value: str) -> str:
    """A --kernel value checked for what it can be without fetching anything (a pydantic validator:
    raises ValueError)."""
    value = value.strip()
    if not value:
        raise ValueError("a kernel reference cannot be empty (debian:7.3, build:KEY, a name, or a bzImage path)")
    if len(value) > MAX_REF:
        raise ValueError(f"a kernel reference is at most {MAX_REF} characters")
    if not _REF_CHARS.match(value):
        raise ValueError("a kernel reference has no spaces or control characters")
    if value.startswith("debian:") and not re.fullmatch(r"debian:\d+\.\d+", value):
        raise ValueError(f"{value!r}: packaged kernels are debian:MAJOR.MINOR, e.g. debian:7.3")
    if value.startswith("build:") and not value.removeprefix("build:"):
        raise ValueError("build: needs a key (build:KEY) or source=... (build:source=linux-source-7.3)")
    if "/" in value and not value.startswith(("debian:", "build:")):
        # A bzImage path: checked now (exists, a bootable header), before the host is touched.
        try:
            check_bzimage(Path(value.removeprefix("file:")).expanduser())
        except UsageError as exc:
            raise ValueError(str(exc)) from None
    return value


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
