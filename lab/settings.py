"""The lab's environment (`LAB_*` variables), read and validated in one place.

Every variable is checked by name when it is read, so a typo in a value is one line naming the
variable, before anything is built or booted. `settings()` re-reads the environment on each call
(cheap) because tests and `lab` subprocesses change it; the parsed result is cached per snapshot.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from lab.errors import UsageError

Accel = Literal["auto", "kvm", "tcg"]
ACCELS: tuple[str, ...] = get_args(Accel)  # the one list of accelerators every option and check uses
# Variables the lab reads; anything else starting with LAB_ is left alone (tests use their own).
KNOWN = ("LAB_ACCEL", "LAB_BOOT_TIMEOUT", "LAB_CACHE", "LAB_RESULTS", "LAB_RUNTIME", "LAB_TOPOLOGIES",
         "LAB_KERNELS", "LAB_FSTESTS", "LAB_BLKTESTS", "LAB_CC")
MAX_PATH = 1024
MAX_RUNTIME = 40


@dataclass(frozen=True)
class Settings:
    accel: str
    boot_timeout: float | None
    cache: Path
    results: Path | None  # None: results/ of the checkout
    runtime: Path
    topologies: Path | None  # None: the shipped topologies/
    kernels_file: Path | None
    fstests: str | None
    blktests: str | None = None
    cc: str = "gcc"  # the compiler kernel builds use (LAB_CC), through ccache when it is installed


def _path(name: str, value: str, must_exist: bool = False) -> Path:
    if not value.strip():
        raise UsageError(f"{name} is set but empty; unset it or give a directory")
    if len(value) > MAX_PATH or "\0" in value or "\n" in value:
        raise UsageError(f"{name}: not a usable path (too long or contains a control character)")
    path = Path(value).expanduser()
    if must_exist and not path.is_dir():
        raise UsageError(f"{name}={value}: no such directory")
    return path


def positive_seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{name}={value!r}: not a number of seconds") from None
    if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
        raise UsageError(f"{name}={value!r}: must be a positive, finite number of seconds")
    return seconds


@lru_cache(maxsize=8)
def _parse(snapshot: tuple[tuple[str, str], ...]) -> Settings:
    env = dict(snapshot)
    accel = env.get("LAB_ACCEL", "auto").strip() or "auto"
    if accel not in ACCELS:
        raise UsageError(f"LAB_ACCEL={accel!r}: choose auto, kvm or tcg")
    boot_timeout = positive_seconds("LAB_BOOT_TIMEOUT", env["LAB_BOOT_TIMEOUT"]) if env.get("LAB_BOOT_TIMEOUT") else None
    if "LAB_CACHE" in env:
        cache = _path("LAB_CACHE", env["LAB_CACHE"])
    else:
        xdg = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
        cache = Path(xdg) / "lab"
    results = _path("LAB_RESULTS", env["LAB_RESULTS"]) if "LAB_RESULTS" in env else None
    runtime = _path("LAB_RUNTIME", env["LAB_RUNTIME"]) if "LAB_RUNTIME" in env else Path("/tmp") / f"lab-{os.getuid()}"
    # Unix socket paths (QMP, private links) live up to 64 bytes below the runtime root and may not
    # exceed 107 bytes in all.
    if len(str(runtime)) > MAX_RUNTIME:
        raise UsageError(f"LAB_RUNTIME={runtime}: too long for the unix sockets below it (at most {MAX_RUNTIME} characters)")
    topologies = _path("LAB_TOPOLOGIES", env["LAB_TOPOLOGIES"], must_exist=True) if "LAB_TOPOLOGIES" in env else None
    kernels_file = None
    if env.get("LAB_KERNELS"):
        kernels_file = _path("LAB_KERNELS", env["LAB_KERNELS"])
        if not kernels_file.is_file():
            raise UsageError(f"LAB_KERNELS={env['LAB_KERNELS']}: no such file")
    fstests = env.get("LAB_FSTESTS") or None
    blktests = env.get("LAB_BLKTESTS") or None
    cc = env.get("LAB_CC", "gcc").strip() or "gcc"
    if not re.fullmatch(r"[A-Za-z0-9_./+-]{1,200}", cc):
        raise UsageError(f"LAB_CC={cc!r}: a compiler's name or path (one word: gcc, clang, gcc-14, /usr/bin/gcc)")
    return Settings(accel, boot_timeout, cache, results, runtime, topologies, kernels_file, fstests, blktests, cc)


def settings() -> Settings:
    keys = (*KNOWN, "XDG_CACHE_HOME", "HOME")
    return _parse(tuple((k, os.environ[k]) for k in keys if k in os.environ))
