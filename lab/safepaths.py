"""Paths and names that come from elsewhere (a CI artifact, a bundle, a night, a state file) are
checked here before the lab uses them: a name is a name, a path stays inside the tree it belongs
to after resolving, and no symlink leads out of a tree the lab copies or reads."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from lab.errors import UsageError

LOG = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,-]{0,159}")


def check_name(value: str, what: str) -> str:
    """A single path component of letters, digits and ._=+,- (no '/', no '..', no leading dot)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise UsageError(f"{what} {value!r} is not a plain name (letters, digits, . _ = + , -; no '/' or '..')")
    return value


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symlink resolved, is `root` or below it."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def child(root: Path, relative: str, what: str) -> Path:
    """root/relative when it stays inside root after resolving; else a usage error."""
    if not isinstance(relative, str) or os.path.isabs(relative):
        raise UsageError(f"{what} {relative!r} must be a path relative to {root}")
    path = root / relative
    if not inside(path, root):
        raise UsageError(f"{what} {relative!r} leads out of {root}")
    return path


def links_out_of(root: Path) -> list[Path]:
    """Symlinks under root whose targets resolve outside it (or dangle)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink() and (not p.exists() or not inside(p, root)):
                out.append(p)
    return out


def check_tree(root: Path, what: str) -> None:
    escaping = links_out_of(root)
    if escaping:
        target = os.readlink(escaping[0])
        raise UsageError(f"{what}: {escaping[0]} is a symlink to {target}, outside {root}; refusing to follow it")


def copy_tree(src: Path, dst: Path, what: str, ignore: Callable[..., object] | None = None) -> None:
    """Copy a tree from elsewhere: refused when a symlink in it leads out; links inside stay links."""
    check_tree(src, what)
    shutil.copytree(src, dst, symlinks=True, ignore=ignore)  # type: ignore[arg-type]
