"""A private apt configuration in the lab's cache: its own sources, lists, status and archives, so
resolving and downloading Debian packages never reads or writes the host's apt state. Kernels use
one over several suites; each image recipe gets one over its own mirror and suite."""

from __future__ import annotations

import fcntl
import subprocess
import time
from pathlib import Path

from lab.errors import LabError
from lab.progress import run_logged, step

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE = 24 * 3600


def make_root(root: Path, sources: list[tuple[str, str]]) -> Path:
    """root with sources.list for (mirror, suite) pairs (main only) and an empty dpkg status: apt
    resolves as for an empty system."""
    for sub in ("lists/partial", "cache/archives/partial", "etc"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    text = "".join(f"deb [signed-by={KEYRING}] {url} {suite} main\n" for url, suite in sources)
    listfile = root / "etc/sources.list"
    if not listfile.exists() or listfile.read_text() != text:
        listfile.write_text(text)
        (root / "lists/.stamp").unlink(missing_ok=True)
    (root / "status").touch()
    return root


def apt_options(root: Path) -> list[str]:
    # Every directory apt reads or writes is ours: the host's sources, lists and status stay untouched.
    return [
        "-o", f"Dir::Etc::sourcelist={root / 'etc/sources.list'}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::Etc::preferences={root / 'etc/preferences'}",
        "-o", "Dir::Etc::preferencesparts=-",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::State::status={root / 'status'}",
        "-o", f"Dir::Cache={root / 'cache'}",
        "-o", "APT::Sandbox::User=root",
        "-o", "Debug::NoLocking=1",
        "-o", "Acquire::Retries=3",
    ]


def run_apt(root: Path, *args: str, check: bool = True) -> str:
    res = subprocess.run(["apt-cache" if args[0] in ("pkgnames", "show", "policy") else "apt-get", *apt_options(root), *args],
                         capture_output=True, text=True)
    if check and res.returncode != 0:
        raise LabError(f"apt {' '.join(args[:2])} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return res.stdout


def lists_age(root: Path) -> float | None:
    """Seconds since the lists were last updated, None when never."""
    stamp = root / "lists/.stamp"
    return time.time() - stamp.stat().st_mtime if stamp.exists() else None


def update_lists(root: Path, what: str, force: bool = False) -> None:
    """apt-get update when the lists are older than a day (or force)."""
    stamp = root / "lists/.stamp"
    if not force and stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE:
        return
    # apt runs without its own locking here (Debug::NoLocking): two labs updating at once take turns.
    asked = time.time()
    with open(root / "update.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            fresh = time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
            if (fresh and not force) or stamp.stat().st_mtime >= asked:
                return  # fresh enough, or another lab updated them while this one waited
        log = root / "update.log"
        with step(f"updating the lab's private apt lists ({what})") as st:
            run_logged(["apt-get", *apt_options(root), "-q", "update"], log, st, what="apt-get update")
        # apt-get update exits 0 when a mirror does not answer: its log says so, and the lists stay as they were.
        failed = [line.strip() for line in log.read_text(errors="replace").splitlines()
                  if line.startswith(("Err:", "W: Failed to fetch", "E: Failed to fetch"))]
        if failed:
            raise LabError(f"apt-get update could not fetch the package lists ({failed[0][:160]}; log {log})")
        stamp.touch()
