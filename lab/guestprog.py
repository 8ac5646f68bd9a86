"""Guest-side test programs: C sources in scenarios/, built statically on the host once per source
hash (seconds on the host, far longer inside a TCG guest) and copied into the guest."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from lab.errors import LabError
from lab.paths import cache_dir, scenarios_dir

LOG = logging.getLogger(__name__)


def build(relative: str) -> Path:
    source = scenarios_dir() / relative
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "progs" / f"{source.stem}-{digest}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(str(out) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            cc = shutil.which("gcc") or shutil.which("cc")
            if not cc:
                raise LabError("no C compiler on the host (apt-get install gcc libc6-dev)")
            tmp = out.with_suffix(".tmp")
            res = subprocess.run([cc, "-O2", "-Wall", "-static", "-pthread", "-o", str(tmp), str(source)],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise LabError(f"building {relative} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
            os.replace(tmp, out)
    return out
