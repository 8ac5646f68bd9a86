"""Guest root file systems: built once per recipe hash into a read-only base image, used through
per-run copy-on-write overlays so the base is never written to."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lab.errors import LabError, UsageError
from lab.image_versions import Resolved, changes, installed_versions, resolve
from lab.paths import cache_dir, images_dir
from lab.progress import run_logged, step, warn
from lab.units import file_sha256, parse_size

LOG = logging.getLogger(__name__)


# Bumped when the way an image is made changes (file system options), so old images are not reused.
BUILD_FORMAT = "ext4-nojournal-1"


@dataclass(frozen=True)
class Recipe:
    name: str
    directory: Path
    suite: str
    mirror: str
    variant: str
    size: int
    packages: tuple[str, ...]
    parent: Recipe | None = None  # `extends`: its packages and customize script come first

    @property
    def key(self) -> str:
        """Hash of every file in the recipe directory (and its parent's): the recipe's identity."""
        digest = hashlib.sha256(BUILD_FORMAT.encode())
        if self.parent is not None:
            digest.update(f"extends {self.parent.name} {self.parent.key}\0".encode())
        for path in sorted(p for p in self.directory.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(self.directory)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
        return digest.hexdigest()[:16]

    @property
    def customize_scripts(self) -> list[Path]:
        own = self.directory / "customize.sh"
        return [*(self.parent.customize_scripts if self.parent else []), *([own] if own.is_file() else [])]


def image_key(recipe: Recipe, resolved: Resolved) -> str:
    """The recipe's files and the versions of every package it installs: a Debian update moves it."""
    return hashlib.sha256(f"{recipe.key}\n{resolved.digest}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    recipe: Recipe
    path: Path
    meta: dict

    @property
    def key(self) -> str:
        return str(self.meta.get("image_key") or self.recipe.key)

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.meta.get("versions") or {})

    def identity(self) -> dict:
        """What a run's manifest records of its image."""
        return {"recipe": self.recipe.name, "recipe_key": self.recipe.key, "key": self.key, "sha256": self.meta.get("sha256"),
                "path": str(self.path), "suite": self.recipe.suite, "resolved_at": self.meta.get("resolved_at"),
                "packages": self.versions}


RECIPE_KEYS = {"suite", "mirror", "variant", "size", "extends"}


def load_recipe(name: str, _children: tuple[str, ...] = ()) -> Recipe:
    directory = images_dir() / name
    if not (directory / "recipe.toml").is_file():
        known = sorted(p.name for p in images_dir().iterdir() if (p / "recipe.toml").is_file())
        raise UsageError(f"unknown image recipe {name!r}; recipes in images/: {', '.join(known)}")
    try:
        data = tomllib.loads((directory / "recipe.toml").read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{directory / 'recipe.toml'}: not TOML ({exc})") from None
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise UsageError(f"{directory / 'recipe.toml'}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(RECIPE_KEYS))}")
    parent = None
    if "extends" in data:
        if data["extends"] in (*_children, name):
            raise UsageError(f"image recipe {name}: extends {data['extends']!r} in a loop")
        parent = load_recipe(str(data["extends"]), (*_children, name))
    packages_file = directory / "packages.txt"
    own = tuple(
        line.split("#", 1)[0].strip()
        for line in (packages_file.read_text().splitlines() if packages_file.is_file() else [])
        if line.split("#", 1)[0].strip()
    )

    def inherited(key: str, default: str | None = None) -> str:
        value = data.get(key, getattr(parent, key, None) if parent else default)
        if value is None:
            raise UsageError(f"{directory / 'recipe.toml'}: {key} is missing")
        return str(value)

    size = data.get("size")
    return Recipe(name, directory, inherited("suite"), inherited("mirror"), inherited("variant", "apt"),
                  parse_size(size) if size is not None else parent.size if parent else parse_size(inherited("size")),
                  tuple(dict.fromkeys([*(parent.packages if parent else ()), *own])), parent)


def image_path(recipe: Recipe, resolved: Resolved) -> Path:
    return cache_dir() / "images" / f"{recipe.name}-{image_key(recipe, resolved)}.img"


def ensure_image(name: str, refresh: bool = False) -> Image:
    """The base image for a recipe at today's package versions, built if the cache lacks it.
    Concurrent labs wait on a lock."""
    recipe = load_recipe(name)
    resolved = resolve(recipe, refresh=refresh)
    path = image_path(recipe, resolved)
    meta_path = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path.exists() and meta_path.exists()):
            _build(recipe, resolved, path, meta_path)
    return Image(recipe, path, json.loads(meta_path.read_text()))


class ImagesInBackground:
    """Builds the images missing from the cache in a helper thread while the caller does other work
    (a first run fetches its kernels meanwhile); join() waits and re-raises the build's error. The
    thread is a daemon, so a lab that stops on an error or a signal does not wait for mmdebstrap;
    the image lock keeps a later build from using a half-made image."""

    def __init__(self, names: Sequence[str]) -> None:
        self.error: BaseException | None = None
        missing = [n for n in dict.fromkeys(names) if not image_path(recipe := load_recipe(n), resolve(recipe)).exists()]
        self.thread = threading.Thread(target=self._build, args=(missing,), name="images", daemon=True) if missing else None
        if self.thread:
            self.thread.start()

    def _build(self, names: list[str]) -> None:
        try:
            for name in names:
                ensure_image(name)
        except BaseException as exc:  # noqa: B036 - handed to the caller by join()
            self.error = exc

    def join(self) -> None:
        if self.thread:
            self.thread.join()
        if self.error is not None:
            raise self.error


def _build(recipe: Recipe, resolved: Resolved, path: Path, meta_path: Path) -> None:
    for tool in ("mmdebstrap", "mkfs.ext4"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists() and not Path(f"/sbin/{tool}").exists():
            raise LabError(f"{tool} is not installed; run 'lab setup' to install the host packages")
    log = path.with_suffix(".log")
    log.write_text("")
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix=f"build-{recipe.name}-", dir=path.parent))
    try:
        rootdir = workdir / "root"
        tmp_image = workdir / "image.raw"
        with step(f"building image {recipe.name} ({recipe.suite}, {len(recipe.packages)} packages; log {log})") as st:
            run_logged(
                [
                    "mmdebstrap",
                    f"--variant={recipe.variant}",
                    f"--include={','.join(recipe.packages)}",
                    *(f"--customize-hook={script} \"$1\"" for script in recipe.customize_scripts),
                    recipe.suite,
                    str(rootdir),
                    recipe.mirror,
                ],
                log, st, what="mmdebstrap",
            )
            installed = installed_versions(rootdir)
            if changes(resolved.versions, installed):
                warn(f"image {recipe.name}: the mirror moved while it was built ({'; '.join(changes(resolved.versions, installed)[:5])}); "
                     "the next run resolves again and rebuilds it")
            st.update("mkfs.ext4 -d")
            with open(tmp_image, "wb") as f:
                f.truncate(recipe.size)
            run_logged(
                # No journal: the root is a throw-away overlay, and replaying a journal costs a second under TCG.
                ["mkfs.ext4", "-q", "-F", "-L", "labroot", "-O", "^has_journal", "-E", "root_owner=0:0", "-d", str(rootdir), str(tmp_image)],
                log, st, what="mkfs.ext4",
            )
            st.update("hashing the image")
            sha = file_sha256(tmp_image)
        os.chmod(tmp_image, 0o444)
        os.replace(tmp_image, path)
        meta = {
            "recipe": recipe.name,
            "recipe_key": recipe.key,
            "suite": recipe.suite,
            "image_key": image_key(recipe, resolved),
            "packages": list(recipe.packages),
            "resolved_at": resolved.resolved_at,
            # What dpkg installed: the truth of this image (the key comes from the resolution, which
            # matches it unless the mirror moved between the two).
            "versions": installed,
            "resolution_differs": changes(resolved.versions, installed),
            "sha256": sha,
            "size": recipe.size,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - started, 1),
        }
        meta_path.write_text(json.dumps(meta, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def create_overlay(base: Path, overlay: Path) -> None:
    """A qcow2 overlay whose backing file is the read-only base: all guest writes land here."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)],
        check=True, capture_output=True, text=True,
    )


def list_images() -> list[dict]:
    out = []
    for meta in sorted((cache_dir() / "images").glob("*.json")):
        if meta.name.endswith(".resolved.json"):
            continue  # a recipe's package resolution, not an image
        data = json.loads(meta.read_text())
        data["path"] = str(meta.with_suffix(".img"))
        out.append(data)
    return out
