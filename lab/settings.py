"""The lab's settings, read and validated in one place: built-in defaults, then a person's config file
(`~/.config/lab/config.toml`, or `$LAB_CONFIG`), then `LAB_*` variables; a command's flags override
all three. Every value is checked by name when it is read, so a typo is one line naming the key or
variable and where it came from, before anything is built or booted. `settings()` re-reads the
environment and the file on each call (cheap) because tests and `lab` subprocesses change them; the
parsed result is cached per snapshot. `Settings.sources` says where each value came from (`lab config show`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from lab.errors import UsageError

Accel = Literal["auto", "kvm", "tcg"]
ACCELS: tuple[str, ...] = get_args(Accel)  # the one list of accelerators every option and check uses
# Variables the lab reads; anything else starting with LAB_ is left alone (tests use their own).
KNOWN = ("LAB_ACCEL", "LAB_BOOT_TIMEOUT", "LAB_CACHE", "LAB_RESULTS", "LAB_RUNTIME", "LAB_TOPOLOGIES",
         "LAB_KERNELS", "LAB_FSTESTS", "LAB_BLKTESTS", "LAB_CC", "LAB_CONFIG")
# The config file's keys and the variable each one stands for (None: the file only).
FILE_KEYS: dict[str, str | None] = {
    "accel": "LAB_ACCEL", "boot_timeout": "LAB_BOOT_TIMEOUT", "cache": "LAB_CACHE", "results": "LAB_RESULTS",
    "runtime": "LAB_RUNTIME", "topologies": "LAB_TOPOLOGIES", "named_kernels": "LAB_KERNELS", "fstests": "LAB_FSTESTS",
    "blktests": "LAB_BLKTESTS", "cc": "LAB_CC", "kernels": None, "review.base": None,
}
# What each key is for (lab config show, the generated configuration page).
FILE_KEY_HELP: dict[str, str] = {
    "accel": "auto, kvm or tcg: auto boots a KVM probe once and falls back to TCG",
    "boot_timeout": "seconds a guest may take to its first command (default: 60 under KVM, 240 under TCG)",
    "cache": "images, kernels, suite builds, build trees and ccache (default: ~/.cache/lab)",
    "results": "where run directories go (default: results/ of the checkout, or ./results)",
    "runtime": "sockets and overlays of running labs (default: /tmp/lab-UID; at most 40 characters)",
    "topologies": "a directory of topology templates used instead of the shipped ones",
    "named_kernels": "a lab-kernels.toml of named kernels (default: ./lab-kernels.toml when present)",
    "fstests": "the fstests tree nfs-fstests uses: a source tree, repository[@REF] or git URL[@REF]",
    "blktests": "the blktests tree the blktests scenario uses (the same forms)",
    "cc": "the compiler kernel builds use, through ccache when it is installed",
    "kernels": "the kernels scenarios and lab up use when no --kernel is given (default: each scenario's own)",
    "review.base": "what lab review applies a series to when no --base is given",
}
DEFAULT_REVIEW_BASE = "linux-source-7.3"
_RELATIVE_TO_FILE = ("cache", "results", "runtime", "topologies", "named_kernels")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+=,/@~-]{0,299}$")
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
    kernels: tuple[str, ...] = ()  # a person's default kernels (config file); () = each scenario's own
    review_base: str = DEFAULT_REVIEW_BASE
    config_file: Path | None = None  # the file read, if any
    sources: tuple[tuple[str, str], ...] = ()  # (key, "default" | "file PATH" | "environment LAB_X")


def _path(name: str, value: str, must_exist: bool = False, what: str = "a directory") -> Path:
    if not value.strip():
        raise UsageError(f"{name} is set but empty; unset it or give {what}")
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


def config_path(env: dict[str, str]) -> tuple[Path | None, bool]:
    """The config file and whether it must exist ($LAB_CONFIG must; the default place may be absent)."""
    if "LAB_CONFIG" in env:
        return _path("LAB_CONFIG", env["LAB_CONFIG"], what="a file"), True
    xdg = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(xdg) / "lab" / "config.toml", False


def _flatten(data: dict[str, Any], label: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = inner
        else:
            flat[key] = value
    unknown = sorted(k for k in flat if k not in FILE_KEYS)
    if unknown:
        raise UsageError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(FILE_KEYS)})")
    return flat


def read_config(path: Path, label: str) -> dict[str, Any]:
    """The file's keys, flattened (`[review] base` is `review.base`), each of the right type."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{label}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{label}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    flat = _flatten(data, label)
    for key, value in flat.items():
        if key == "kernels":
            if not isinstance(value, list) or not value or len(value) > 16 or not all(isinstance(v, str) and _REF_RE.match(v) for v in value):
                raise UsageError(f"{label}: kernels must be a list of 1 to 16 kernel references (\"debian:7.3\", \"build:KEY\", a name)")
        elif key == "boot_timeout":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{label}: boot_timeout must be a number of seconds")
        elif not isinstance(value, str):
            raise UsageError(f"{label}: {key} must be a string")
        elif key == "review.base" and not _REF_RE.match(value):
            raise UsageError(f"{label}: review.base {value!r}: a source such as linux-source-7.3 or a path")
    return flat


@lru_cache(maxsize=8)
def _parse(snapshot: tuple[tuple[str, str], ...], file_stamp: tuple[str, float] | None = None) -> Settings:
    env = dict(snapshot)
    where: dict[str, str] = {}
    cfg_path, must_exist = config_path(env)
    file_values: dict[str, Any] = {}
    read_path = None
    if cfg_path is not None and (must_exist or cfg_path.exists()):
        if not cfg_path.is_file() and str(cfg_path) != "/dev/null":
            raise UsageError(f"LAB_CONFIG={env.get('LAB_CONFIG')}: no such file" if must_exist else f"{cfg_path}: not a file")
        file_values = read_config(cfg_path, str(cfg_path))
        read_path = cfg_path
    # A file value stands where its variable is unset; the variable's name labels its errors either way.
    for key, value in file_values.items():
        var = FILE_KEYS[key]
        if var is not None and var not in env:
            if key in _RELATIVE_TO_FILE and cfg_path is not None:
                # A relative directory in the file means one beside the file, wherever lab runs from.
                value = str(cfg_path.parent / Path(str(value)).expanduser())
            env[var] = str(value)
            where[var] = f"file {cfg_path}"
    for var, _ in snapshot:
        if var in KNOWN:
            where.setdefault(var, f"environment {var}")
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
    kernels = tuple(file_values.get("kernels", ()))
    review_base = str(file_values.get("review.base", DEFAULT_REVIEW_BASE))
    sources = tuple((key, where.get(var, "default") if var else (f"file {cfg_path}" if key in file_values else "default"))
                    for key, var in FILE_KEYS.items())
    return Settings(accel, boot_timeout, cache, results, runtime, topologies, kernels_file, fstests, blktests, cc,
                    kernels, review_base, read_path, sources)


def _file_stamp(snapshot: tuple[tuple[str, str], ...]) -> tuple[str, float] | None:
    path, _ = config_path(dict(snapshot))
    try:
        return (str(path), path.stat().st_mtime) if path else None
    except OSError:
        return None


def settings() -> Settings:
    keys = (*KNOWN, "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "HOME")
    snapshot = tuple((k, os.environ[k]) for k in keys if k in os.environ)
    return _parse(snapshot, _file_stamp(snapshot))
