"""One QEMU process: launch with QMP on a unix socket, console to a file, SSH readiness, and a
shutdown that escalates from guest poweroff to QMP quit to signals. Modelled on QEMU's
python/qemu/machine and labgrid's QEMUDriver, smaller."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from lab.errors import BootError, LabError
from lab.ssh import Guest

PR_SET_PDEATHSIG = 1
READY_MARKER = "LAB-READY"
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL QEMU when the lab dies, even by SIGKILL, so no guest
    outlives it. A new session keeps the terminal's Ctrl-C for the lab, which shuts down cleanly."""
    os.setsid()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def console_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    tail = [l for l in text.splitlines() if l.strip()][-lines:]
    return "\n    ".join(tail) or "(console is empty)"


class QemuMachine:
    def __init__(self, name: str, argv: list[str], qmp_socket: Path, console_log: Path, stderr_log: Path,
                 key_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.qmp_socket = qmp_socket
        self.console_log = console_log
        self.stderr_log = stderr_log
        self.key_file = key_file
        self.proc: subprocess.Popen | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.ssh_port: int | None = None
        self.guest: Guest | None = None
        self.launched_at = 0.0
        self.ready_at = 0.0

    def reset(self) -> None:
        """Forget a stopped process so that launch() can start the machine again."""
        self.proc = None
        self.qmp = None
        self.ssh_port = None
        self.guest = None
        self.qmp_socket.unlink(missing_ok=True)

    # -- launch -----------------------------------------------------------------------------
    def launch(self, die_with_parent: bool = True) -> None:
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_log, "ab") as err:
            self.launched_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if die_with_parent else os.setsid,
            )
        self._connect_qmp()
        self.ssh_port = self._forwarded_port()
        self.guest = Guest(self.name, self.ssh_port, self.key_file)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _connect_qmp(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BootError(f"{self.name}: QEMU exited at start (exit {self.proc.returncode}): {self._stderr_tail()}")
            if self.qmp_socket.exists():
                qmp = QEMUMonitorProtocol(str(self.qmp_socket))
                try:
                    qmp.connect()
                    self.qmp = qmp
                    return
                except OSError:
                    qmp.close()
            time.sleep(0.02)
        raise BootError(f"{self.name}: no QMP socket after {timeout:.0f} s")

    def hmp(self, command: str) -> str:
        if not self.qmp:
            raise LabError(f"{self.name}: QMP is not connected")
        return self.qmp.cmd("human-monitor-command", **{"command-line": command})

    def qmp_cmd(self, command: str, **args):
        if not self.qmp:
            raise LabError(f"{self.name}: QMP is not connected")
        return self.qmp.cmd(command, **args)

    def _forwarded_port(self) -> int:
        # The lab asks slirp for port 0 and reads back what it got: no race between two labs.
        text = self.hmp("info usernet")
        for line in text.splitlines():
            if "HOST_FORWARD" in line:
                fields = line.split()
                return int(fields[3])
        raise BootError(f"{self.name}: no SSH forwarding in 'info usernet': {text!r}")

    def _stderr_tail(self) -> str:
        try:
            return " | ".join(self.stderr_log.read_text(errors="replace").strip().splitlines()[-5:]) or "(no output)"
        except OSError:
            return "(no output)"

    # -- readiness --------------------------------------------------------------------------
    def wait_ready(self, timeout: float) -> float:
        """Until SSH answers and stage 2 has finished (/run/lab/ready). Returns seconds since launch."""
        assert self.guest is not None
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise BootError(
                    f"{self.name}: QEMU exited during boot (exit {self.proc.returncode}); console {self.console_log}:\n"
                    f"    {console_tail(self.console_log)}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootError(
                    f"{self.name}: no SSH after {timeout:.0f} s; console {self.console_log}:\n    {console_tail(self.console_log)}"
                )
            # Stage 2 prints the marker once sshd, drivers and RDMA are up. Connecting before it would
            # only meet slirp, which accepts and then waits out the SSH banner timeout.
            if READY_MARKER in self._console_text_tail() and self.guest.try_connect(min(10.0, left)):
                self.ready_at = time.monotonic()
                return self.ready_at - self.launched_at
            time.sleep(0.05)

    def _console_text_tail(self) -> str:
        try:
            with open(self.console_log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- shutdown ---------------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> None:
        """Guest poweroff, then QMP quit, then SIGTERM, then SIGKILL. Never raises."""
        if self.proc is None:
            return
        if self.alive() and self.guest is not None:
            # sysrq-o powers off at once; the root is a throw-away overlay so a clean unmount buys nothing.
            self.guest.fire_and_forget("sync; echo o > /proc/sysrq-trigger")
            self._wait(timeout / 2)
        if self.guest is not None:
            self.guest.close()
        if self.alive() and self.qmp is not None:
            try:
                self.qmp.cmd("quit")
            except Exception:
                pass
            self._wait(timeout / 4)
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                break
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                break
            self._wait(timeout / 4 if sig == signal.SIGTERM else 5)
        if self.proc.poll() is None:
            self.proc.wait()

    def _wait(self, seconds: float) -> None:
        try:
            self.proc.wait(timeout=max(seconds, 0.1))
        except subprocess.TimeoutExpired:
            pass


def qemu_version_of(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"
