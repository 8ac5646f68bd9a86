"""Named kernels: a small TOML file maps names to build requests, so `--kernel base --kernel
base+series` is the A/B of a series. Looked up in $LAB_KERNELS, ./lab-kernels.toml, then the
lab's own kernel/kernels.toml; relative paths in a file are relative to that file."""

from __future__ import annotations

import tomllib
from pathlib import Path

from lab.errors import UsageError
from lab.kernels.build import BuildRequest
from lab.paths import repo_dir

KEYS = ("source", "series", "config", "patches", "fragments")


def kernel_files() -> list[Path]:
    from lab.settings import settings

    files = []
    kernels_file = settings().kernels_file  # LAB_KERNELS, checked to be a file
    if kernels_file is not None:
        files.append(kernels_file)
    files += [Path.cwd() / "lab-kernels.toml", repo_dir() / "kernel" / "kernels.toml"]
    return [f for f in dict.fromkeys(files) if f.is_file()]


def parse_file(path: Path) -> dict[str, BuildRequest]:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    out: dict[str, BuildRequest] = {}
    for name, spec in data.items():
        if not isinstance(spec, dict):
            raise UsageError(f"{path}: [{name}] must be a table with source = ... (and series, config, patches)")
        unknown = set(spec) - set(KEYS)
        if unknown:
            raise UsageError(f"{path}: [{name}] unknown key(s) {', '.join(sorted(unknown))}; keys: {', '.join(KEYS)}")
        if not isinstance(spec.get("source"), str):
            raise UsageError(f"{path}: [{name}] needs source = \"linux-source-X.Y\" (or a tarball, tree or git PATH[@REF])")
        configs = spec.get("config", [])
        if isinstance(configs, str):
            configs = [configs]
        if spec.get("patches") is not None and not isinstance(spec["patches"], int):
            raise UsageError(f"{path}: [{name}] patches must be a number")
        out[name] = BuildRequest(
            source=_rel(path, spec["source"]),
            series=_rel(path, spec["series"]) if spec.get("series") else None,
            configs=tuple(_rel(path, c) for c in configs),
            patches=spec.get("patches"),
            name=name,
            fragments=tuple(spec["fragments"]) if spec.get("fragments") is not None else None,
        )
    return out


def _rel(base: Path, value: str) -> str:
    """Paths relative to the kernels file; package names, fragment names and message-ids as they are."""
    if value.startswith(("linux-source-", "/", "~")) or "/" not in value and not (base.parent / value).exists():
        return value
    head, sep, ref = value.partition("@")
    candidate = base.parent / head
    return str(candidate) + (sep + ref if sep else "") if candidate.exists() else value


def lookup(name: str) -> BuildRequest | None:
    for f in kernel_files():
        found = parse_file(f).get(name)
        if found:
            return found
    return None


def all_named() -> dict[str, tuple[Path, BuildRequest]]:
    out: dict[str, tuple[Path, BuildRequest]] = {}
    for f in reversed(kernel_files()):
        for name, req in parse_file(f).items():
            out[name] = (f, req)
    return out
