"""The lab inside a kvm-host machine installs its wheel offline, over Debian's Python packages plus
the wheels of FROM_PYPI: every dependency in pyproject.toml must be one or the other, or the nested
pip fails (as it did when shtab became a dependency)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from lab.nested import FROM_PYPI

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_NAMES = {"pyyaml": "python3-yaml", "qemu.qmp": "python3-qemu.qmp"}


def test_every_dependency_reaches_the_nested_venv():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps]
    packages = set((ROOT / "images/lab-kvm-host/packages.txt").read_text().split())
    missing = [n for n in names if n not in FROM_PYPI and DEBIAN_NAMES.get(n, f"python3-{n}") not in packages]
    assert not missing, f"add to lab/nested.py FROM_PYPI or to images/lab-kvm-host/packages.txt: {missing}"
