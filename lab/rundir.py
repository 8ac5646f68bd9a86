"""A run's results directory: written as the run goes, so a crash or Ctrl-C keeps what was gathered."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from lab import __version__
from lab.paths import INSTALLED, PROJECT_ROOT, results_dir

LOG = logging.getLogger(__name__)


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return res.stdout.strip() + ("-dirty" if dirty else "") if res.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def process_identity(pid: int) -> str | None:
    """boot id, pid and start time of a process: a pid alone is reused, after a reboot or not."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command's closing paren
    return f"{boot}:{pid}:{start}"


def abandoned(m: dict[str, Any]) -> bool:
    """A manifest still 'running' whose lab process is gone (killed by SIGKILL, the host rebooted)."""
    owner = m.get("owner")
    if m.get("status") != "running" or not isinstance(owner, str) or owner.count(":") != 2:
        return False
    if m.get("host", {}).get("hostname") not in (None, socket.gethostname()):
        return False  # another machine's run: nothing to tell from here
    return process_identity(int(owner.split(":")[1])) != owner


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifest_path = path / "manifest.json"

    @classmethod
    def create(cls, kind: str, label: str) -> "RunDir":
        label = re.sub(r"[^A-Za-z0-9.+-]+", "-", Path(label).name.removesuffix(".yaml.j2"))[:40]
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{label}-{secrets.token_hex(2)}"
        path = results_dir() / run_id
        path.mkdir(parents=True)
        run = cls(path)
        run.write_manifest({
            "id": run_id, "kind": kind, "label": label, "status": "running", "owner": process_identity(os.getpid()),
            "lab": {"version": __version__, "commit": _git_commit(), "installed": INSTALLED},
            "host": {"hostname": socket.gethostname(), "kernel": os.uname().release, "cpus": os.cpu_count()},
            "started": now(),
        })
        return run

    def child(self, name: str, **fields: Any) -> "RunDir":
        """A sub-run (one kernel of an A/B run) with its own manifest and machine logs."""
        path = self.path / name
        path.mkdir(parents=True, exist_ok=True)
        sub = RunDir(path)
        parent = self.manifest()
        sub.write_manifest({"id": f"{self.id}/{name}", "kind": parent.get("kind"), "label": name, "status": "running",
                            "lab": parent.get("lab"), "host": parent.get("host"), "started": now(), **fields})
        return sub

    @property
    def id(self) -> str:
        return self.path.name

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def write_manifest(self, data: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self.manifest_path)

    def update(self, **fields: Any) -> None:
        data = self.manifest()
        data.update(fields)
        self.write_manifest(data)

    def machine_dir(self, name: str) -> Path:
        d = self.path / "machines" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write(self, relative: str, content: str | bytes) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        return target

    def finish(self, status: str, **fields: Any) -> None:
        self.update(status=status, finished=now(), **fields)
