"""Acting on PIDs recorded in a state file without hurting anything else: a PID is reused by the
kernel once its process is gone, so every signal the lab sends is preceded by a check that the
process is still the one the lab started (its command line holds the lab's runtime directory, or
its start time matches the one recorded)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_ours(pid: object, marker: str) -> bool:
    """A live QEMU whose command line names `marker` (this lab's runtime directory)."""
    return pid_alive(pid) and bool(marker) and marker in cmdline(int(pid)) and "qemu-system" in cmdline(int(pid))  # type: ignore[call-overload]


def same_process(pid: object, started: object) -> bool:
    """The process recorded as (pid, start time) is still that process."""
    return pid_alive(pid) and isinstance(started, int) and start_time(int(pid)) == started  # type: ignore[call-overload]


def kill_if_ours(pid: object, marker: str, sig: int = signal.SIGKILL) -> bool:
    if not is_ours(pid, marker):
        return False
    try:
        os.kill(int(pid), sig)  # type: ignore[call-overload]
        return True
    except ProcessLookupError:
        return False
