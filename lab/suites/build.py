"""`lab suite build`: a test suite's source built for the guest in the image's build root, cached by
(source commit or content hash, guest image key, build root key); a second request is instant."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lab.errors import UsageError
from lab.images import load_recipe
from lab.paths import cache_dir
from lab.progress import info, step
from lab.suites.buildroot import buildroot_for, buildroot_path, ensure_buildroot, load_buildroot, package_of, require_root, run_in_buildroot
from lab.suites.source import resolve_source, split_ref

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteKind:
    name: str
    layout: tuple[str, ...]  # files every tree of this suite has
    built: str               # a file only a built tree has
    make: tuple[str, ...]


SUITES = {
    "fstests": SuiteKind("fstests", ("check", "common/rc", "ltp/fsstress.c"), "ltp/fsstress", ("make", "-j2")),
    "blktests": SuiteKind("blktests", ("check", "common/rc", "common/nvme"), "src/loblksize", ("make", "-j2")),
}


@dataclass(frozen=True)
class SuiteTree:
    path: Path
    meta: dict[str, Any]

    @property
    def built_here(self) -> bool:
        """Built by the lab for the guest, as opposed to a tree the user built elsewhere."""
        return bool(self.meta.get("buildroot"))


def suite_kind(name: str) -> SuiteKind:
    if name not in SUITES:
        raise UsageError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
    return SUITES[name]


def check_layout(kind: SuiteKind, path: Path, what: str) -> None:
    missing = [f for f in kind.layout if not (path / f).is_file()]
    if missing:
        raise UsageError(f"{what}: no {kind.name} tree here (no {' or '.join(missing)})")


def build_suite(name: str, spec: str, image: str = "lab-trixie", rebuild: bool = False) -> SuiteTree:
    """The built tree for this source and guest image: from the cache, else staged and made in the build root."""
    kind = suite_kind(name)
    source = resolve_source(spec)
    image_key = load_recipe(image).key
    root_recipe = buildroot_for(image)
    if source.directory is not None and (source.directory / kind.built).exists():
        raise UsageError(f"{spec}: already built ({kind.built} is there); give its clean source or git checkout so it "
                         "is built for the guest, or pass the built tree to the scenario as it is")
    dest = cache_dir() / "suites" / f"{kind.name}-{source.key}-{image_key[:8]}-{root_recipe.key[:8]}"
    meta_path = dest / "suite.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if meta_path.is_file() and not rebuild:
            meta = json.loads(meta_path.read_text())
            info(f"{kind.name} for {image}: cached build of {source.key} in {dest / 'tree'}")
            return SuiteTree(dest / "tree", meta)
        shutil.rmtree(dest, ignore_errors=True)
        tree = dest / "tree"
        source.stage(tree)
        check_layout(kind, tree, spec)
        require_root()
        root = ensure_buildroot(root_recipe)
        log = dest / "build.log"
        started = time.monotonic()
        with step(f"building {kind.name} ({source.key}) in build root {root_recipe.name}; log {log}") as st:
            run_in_buildroot(root, tree, kind.make, log, st, what=f"make of {kind.name}")
        if not (tree / kind.built).exists():
            raise UsageError(f"{spec}: make finished but {kind.built} was not built; log: {log}")
        meta = {
            "suite": kind.name, "source": spec, "source_key": source.key, "commit": source.commit,
            "image": image, "image_key": image_key, "buildroot": root_recipe.name, "buildroot_key": root_recipe.key,
            "build_seconds": round(time.monotonic() - started, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        meta_path.write_text(json.dumps(meta, indent=2))
        return SuiteTree(tree, meta)


def suite_tree(name: str, spec: str, image: str = "lab-trixie") -> SuiteTree:
    """What a scenario runs: a tree the user built (used as it is; its libraries are checked in the
    guest), else the source built for the guest through build_suite."""
    kind = suite_kind(name)
    where, ref = split_ref(spec)
    path = Path(where).expanduser()
    if ref is None and path.is_dir() and (path / kind.built).exists():
        check_layout(kind, path, spec)
        return SuiteTree(path.resolve(), {"suite": kind.name, "source": spec, "prebuilt": True})
    return build_suite(name, spec, image)


def list_suites() -> list[dict[str, Any]]:
    out = []
    for meta in sorted((cache_dir() / "suites").glob("*/suite.json")):
        data = json.loads(meta.read_text())
        data["path"] = str(meta.parent / "tree")
        out.append(data)
    return out


def library_packages(tree: SuiteTree) -> Callable[[str], str | None] | None:
    """For a tree the lab built: which build-root package ships a library (for the guest's library check)."""
    if not tree.built_here:
        return None
    root = buildroot_path(load_buildroot(tree.meta["buildroot"]))
    return lambda library: package_of(root, library)
