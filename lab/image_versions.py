"""The package versions an image recipe installs today, resolved without building: apt simulates the
recipe's install into an empty system from its own mirror and suite (a private apt root), the way
mmdebstrap installs it (the variant's base set first, then the recipe's packages, no recommends).
Measured against a built lab-trixie image: the same 259 packages at the same versions. The versions
feed the image's key, so a Debian point release or security update gives a new image, and runs,
nights and reports carry them."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab import aptroot
from lab.errors import LabError
from lab.paths import cache_dir
from lab.progress import warn

if TYPE_CHECKING:
    from lab.images import Recipe

LOG = logging.getLogger(__name__)

# mmdebstrap's variants as apt install arguments: what it installs before --include.
VARIANT_BASE = {
    "essential": ["?essential"],
    "apt": ["?essential", "apt"],
    "required": ["?essential", "?priority(required)", "apt"],
    "minbase": ["?essential", "?priority(required)", "apt"],
    "buildd": ["?essential", "?priority(required)", "apt", "build-essential"],
}
# `Inst libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64]) []`
_INST = re.compile(r"^Inst (\S+) \((\S+) ")


@dataclass(frozen=True)
class Resolved:
    versions: dict[str, str]
    resolved_at: str
    note: str = ""  # why these may not be today's versions (offline)

    @property
    def digest(self) -> str:
        return hashlib.sha256("".join(f"{p}={v}\n" for p, v in sorted(self.versions.items())).encode()).hexdigest()


def parse_simulation(output: str) -> dict[str, str]:
    """package -> version from `apt-get -s install` output."""
    return {m.group(1): m.group(2) for m in map(_INST.match, output.splitlines()) if m}


def installed_versions(rootdir: Path) -> dict[str, str]:
    """package -> version of what dpkg installed in a root file system (its status file)."""
    versions: dict[str, str] = {}
    package, installed = "", False
    for line in (rootdir / "var/lib/dpkg/status").read_text(errors="replace").splitlines() + [""]:
        if line.startswith("Package: "):
            package, installed = line.split(None, 1)[1], False
        elif line.startswith("Status: "):
            installed = line.endswith(" installed")
        elif line.startswith("Version: ") and package and installed:
            versions[package] = line.split(None, 1)[1]
    return versions


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """'pkg 1.0 -> 1.1', '+pkg 2.0', '-pkg 3.0' between two package sets, sorted by package."""
    out = []
    for pkg in sorted(set(before) | set(after)):
        old, new = before.get(pkg), after.get(pkg)
        if old == new:
            continue
        out.append(f"+{pkg} {new}" if old is None else f"-{pkg} {old}" if new is None else f"{pkg} {old} -> {new}")
    return out


def _apt_root(recipe: Recipe) -> Path:
    which = hashlib.sha256(f"{recipe.mirror} {recipe.suite}".encode()).hexdigest()[:8]
    return aptroot.make_root(cache_dir() / "apt-images" / f"{recipe.suite}-{which}", [(recipe.mirror, recipe.suite)])


def _simulate(root: Path, recipe: Recipe) -> dict[str, str]:
    base = VARIANT_BASE.get(recipe.variant)
    if base is None:
        raise LabError(f"image recipe {recipe.name}: variant {recipe.variant!r} cannot be resolved; "
                       f"one of {', '.join(VARIANT_BASE)}")
    # Two steps as mmdebstrap does: the base set alone picks its own alternatives (mawk for awk),
    # which the recipe's packages would otherwise satisfy differently (gawk).
    first = parse_simulation(aptroot.run_apt(root, "-s", "-q", "--no-install-recommends", "install", *base))
    second = parse_simulation(aptroot.run_apt(root, "-s", "-q", "--no-install-recommends", "install", *base, *recipe.packages))
    if not second:
        raise LabError(f"image recipe {recipe.name}: apt resolved no packages from {recipe.mirror} {recipe.suite}")
    return {**first, **second}


def resolve(recipe: Recipe, refresh: bool = False) -> Resolved:
    """The recipe's package versions from lists at most a day old (refresh: now). Offline, the last
    resolution stands, with a note saying so."""
    saved = cache_dir() / "images" / f"{recipe.name}.resolved.json"
    root = _apt_root(recipe)
    note = ""
    try:
        aptroot.update_lists(root, f"{recipe.suite} for image {recipe.name}", force=refresh)
    except LabError as exc:
        note = f"package lists not updated ({exc}); versions as of the last update"
        if aptroot.lists_age(root) is None:
            old = _load(saved, recipe)
            if old is None:
                raise LabError(f"image recipe {recipe.name}: cannot resolve its packages from {recipe.mirror} {recipe.suite} "
                               f"({exc}) and it was never resolved before") from None
            warn(f"image {recipe.name}: {note}")
            return Resolved(old.versions, old.resolved_at, note)
        warn(f"image {recipe.name}: {note}")
    stamp = root / "lists/.stamp"
    lists_time = stamp.stat().st_mtime if stamp.exists() else 0.0
    old = _load(saved, recipe)
    if old is not None and _lists_time(saved) == lists_time:
        return Resolved(old.versions, old.resolved_at, note)  # same lists, same answer: no apt run
    versions = _simulate(root, recipe)
    resolved_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lists_time or time.time()))
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps({"recipe_key": recipe.key, "lists_time": lists_time, "resolved_at": resolved_at,
                               "versions": versions}, indent=1, sort_keys=True))
    tmp.replace(saved)
    return Resolved(versions, resolved_at, note)


def _load(saved: Path, recipe: Recipe) -> Resolved | None:
    try:
        data = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None
    if data.get("recipe_key") != recipe.key or not isinstance(data.get("versions"), dict):
        return None
    return Resolved({str(k): str(v) for k, v in data["versions"].items()}, str(data.get("resolved_at", "")))


def _lists_time(saved: Path) -> float | None:
    try:
        return float(json.loads(saved.read_text()).get("lists_time"))
    except (OSError, ValueError, TypeError):
        return None
