"""Where the lab keeps things: cache (images, kernels), results, run-time state."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Images, kernels, keys and probes. Outside the repository; LAB_CACHE overrides."""
    env = os.environ.get("LAB_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lab"
    base.mkdir(parents=True, exist_ok=True)
    return base


def results_dir() -> Path:
    """Run output; LAB_RESULTS overrides, default is results/ of the checkout."""
    env = os.environ.get("LAB_RESULTS")
    base = Path(env) if env else PROJECT_ROOT / "results"
    base.mkdir(parents=True, exist_ok=True)
    return base


def runtime_root() -> Path:
    """Sockets, overlays and state of live labs. Short paths: unix sockets allow 107 bytes."""
    env = os.environ.get("LAB_RUNTIME")
    base = Path(env) if env else Path("/tmp") / f"lab-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    return base


def topologies_dir() -> Path:
    return Path(os.environ.get("LAB_TOPOLOGIES", PROJECT_ROOT / "topologies"))


def images_dir() -> Path:
    return PROJECT_ROOT / "images"


def scenarios_dir() -> Path:
    return PROJECT_ROOT / "scenarios"


def repo_dir() -> Path:
    return PROJECT_ROOT
