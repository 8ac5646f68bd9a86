"""Where the lab keeps things: cache (images, kernels), results, run-time state."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lab.errors import UsageError
from lab.settings import settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The lab's data (topologies, image recipes and boot stages, guest programs, kernel fragments, known
# issues, the nightly matrix): in a checkout (or an editable install) the directories at its top;
# in an installed wheel, the copy the build put in the package (lab/_data, symlinks in the checkout).
_PACKAGED = Path(__file__).resolve().parent / "_data"
DATA_ROOT = PROJECT_ROOT if (PROJECT_ROOT / "topologies").is_dir() and (PROJECT_ROOT / "pyproject.toml").is_file() else _PACKAGED
INSTALLED = DATA_ROOT == _PACKAGED


def _make_dir(path: Path, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the {what} directory {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise UsageError(f"the {what} path {path} is not a directory")
    return path


def cache_dir() -> Path:
    """Images, kernels, keys and probes. Outside the repository; LAB_CACHE overrides."""
    return _make_dir(settings().cache, "cache")


def results_path() -> Path:
    """Where run output goes, without making it (what `lab config show` and completion name): LAB_RESULTS,
    else results/ of the checkout, or of the current directory for an installed lab (never site-packages)."""
    default = Path.cwd() / "results" if INSTALLED else PROJECT_ROOT / "results"
    return settings().results or default


def results_dir() -> Path:
    """Run output, made when missing."""
    return _make_dir(results_path(), "results")


def check_private_dir(path: Path) -> None:
    """A directory that holds QMP sockets and overlays must be ours alone: owned by this user, a
    real directory (not a symlink someone planted), mode 0700."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"runtime directory {path} is a symlink; remove it or set LAB_RUNTIME")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"runtime directory {path} is not a directory; remove it or set LAB_RUNTIME")
    if st.st_uid != os.getuid():
        raise UsageError(f"runtime directory {path} belongs to uid {st.st_uid}, not to you; set LAB_RUNTIME")
    if stat.S_IMODE(st.st_mode) != 0o700:
        raise UsageError(f"runtime directory {path} has mode {stat.S_IMODE(st.st_mode):o}, not 700; "
                         f"chmod 700 it or set LAB_RUNTIME")


def runtime_root() -> Path:
    """Sockets, overlays and state of live labs. Short paths: unix sockets allow 107 bytes."""
    base = settings().runtime
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(f"cannot create the runtime directory {base}: {exc.strerror}") from None
    check_private_dir(base)
    return base


def topologies_dir() -> Path:
    return settings().topologies or DATA_ROOT / "topologies"


def images_dir() -> Path:
    return DATA_ROOT / "images"


def scenarios_dir() -> Path:
    return DATA_ROOT / "scenarios"


def repo_dir() -> Path:
    """Where kernel/ and matrix/ are: the checkout, or the installed package's data."""
    return DATA_ROOT
