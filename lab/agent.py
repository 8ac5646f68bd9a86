"""The lab's command channel: QEMU's guest agent (qemu-ga) on a virtio-serial port.

Scenario commands and file copies go through it rather than SSH: no key exchange, no sshd session
and no login shell per connection, which under TCG are most of the cost of a short command (the
first command over SSH took 0.9 s after the guest was ready here). SSH stays for people (`lab ssh`)
and for commands with byte streams attached.

qemu-ga speaks QMP's JSON without a greeting. After a connect, or after a request that timed out,
the client sends a 0xFF byte (the agent drops any partial input it holds when it reads one) and
guest-sync-delimited, whose answer the agent precedes with 0xFF; qemu.qmp's reader cannot take that
byte, hence this small client."""

from __future__ import annotations

import logging
import base64
import json
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from lab.errors import LabError

LOG = logging.getLogger(__name__)

PORT_NAME = "org.qemu.guest_agent.0"
# What a command sees, as over SSH (sshd's default PATH for root, HOME, a login shell's names).
COMMAND_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/bash",
)
CHUNK = 1 << 20  # bytes per guest-file-read/write: well under the agent's message limits
SYNC_TIMEOUT = 2.0  # one resynchronisation attempt; connect() retries until its own deadline


class AgentError(LabError):
    """The agent refused a request (its error class and description), or the channel broke."""


class AgentTimeout(AgentError):
    """No answer in time: the guest is paused, wedged or gone."""


class CommandTimeout(AgentTimeout):
    """The agent answers, but the command ran past its own timeout (and was killed)."""


def shell_argv(command: str) -> list[str]:
    """A command line run as SSH runs it: root's login shell in root's home, in a session of its
    own (setsid), so that a timeout can kill the whole process group."""
    return ["/usr/bin/setsid", "/bin/bash", "-c", f"cd /root 2>/dev/null\n{command}"]


def exit_status(status: dict[str, Any]) -> int:
    """guest-exec-status -> an exit status as a shell reports it (128 + N for signal N)."""
    if "exitcode" in status:
        return int(status["exitcode"])
    if "signal" in status:
        return 128 + int(status["signal"])
    return -1


class AgentClient:
    """One connection to one guest's qemu-ga. Thread-safe: one request at a time; long commands
    do not hold the channel (guest-exec returns at once, the status is polled)."""

    def __init__(self, name: str, socket_path: Path) -> None:
        self.name = name
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.RLock()
        self._ids = random.Random(os.getpid() ^ id(self))
        self._answered = False  # once the agent answered, a refused connection means QEMU is gone

    # -- connection -------------------------------------------------------------------------
    def connect(self, timeout: float) -> None:
        """Until the agent answers guest-sync-delimited, or AgentTimeout after `timeout` s."""
        deadline = time.monotonic() + timeout
        last = "the agent did not answer"
        with self._lock:
            while True:
                try:
                    if self._sock is None:
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        sock.connect(str(self.socket_path))
                        self._sock, self._buf = sock, b""
                    self._sync(min(SYNC_TIMEOUT, max(0.1, deadline - time.monotonic())))
                    self._answered = True
                    return
                except (ConnectionRefusedError, FileNotFoundError) as exc:
                    # QEMU makes the socket before the guest runs and keeps it while it lives.
                    if self._answered:
                        raise AgentError(f"{self.name}: the guest agent's socket is gone (QEMU exited?): {exc}") from None
                    last = str(exc)
                except (OSError, AgentError) as exc:
                    last = str(exc)
                    # A timed-out sync keeps the socket: the agent may not have opened its port yet.
                    if not isinstance(exc, AgentTimeout):
                        self.close()
                if time.monotonic() >= deadline:
                    raise AgentTimeout(f"{self.name}: the guest agent did not answer within {timeout:.0f} s ({last})")
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.close()
                except OSError:
                    pass
            self._sock, self._buf = None, b""

    def _sync(self, timeout: float) -> None:
        token = self._ids.randrange(1, 1 << 31)
        self._send(b"\xff" + self._encode("guest-sync-delimited", {"id": token}))
        deadline = time.monotonic() + timeout
        while True:
            line = self._read_line(deadline)
            # Answers to requests before the sync (a timed-out command's, say) are dropped here.
            if line.get("return") == token:
                return

    # -- wire ---------------------------------------------------------------------------------
    @staticmethod
    def _encode(command: str, arguments: dict[str, Any] | None = None, ident: int | None = None) -> bytes:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        if ident is not None:
            msg["id"] = ident
        return json.dumps(msg).encode() + b"\n"

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise AgentError(f"{self.name}: the guest agent's socket failed: {exc}") from None

    def _read_line(self, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        while True:
            self._buf = self._buf.lstrip(b"\xff\r\n ")
            nl = self._buf.find(b"\n")
            if nl >= 0:
                raw, self._buf = self._buf[:nl], self._buf[nl + 1:]
                try:
                    msg = json.loads(raw.lstrip(b"\xff"))
                except ValueError:
                    continue  # the tail of a message cut by a reconnect
                if isinstance(msg, dict):
                    return msg
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentTimeout(f"{self.name}: no answer from the guest agent")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as exc:
                self.close()
                raise AgentError(f"{self.name}: the guest agent's socket failed: {exc}") from None
            if not data:
                self.close()
                raise AgentError(f"{self.name}: the guest agent closed the channel (QEMU exited?)")
            self._buf += data

    def request(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """One request and its answer. AgentTimeout when none comes in time (the channel is then
        resynchronised before the next request); AgentError for the agent's refusals."""
        with self._lock:
            if self._sock is None:
                self.connect(timeout)
            ident = self._ids.randrange(1, 1 << 31)
            self._send(self._encode(command, arguments, ident))
            deadline = time.monotonic() + timeout
            try:
                while True:
                    msg = self._read_line(deadline)
                    if msg.get("id") != ident:
                        continue
                    if "error" in msg:
                        err = msg["error"]
                        raise AgentError(f"{self.name}: guest agent: {command}: {err.get('desc', err)}")
                    return msg.get("return")
            except AgentTimeout:
                self._resync_later()
                raise AgentTimeout(f"{self.name}: the guest agent did not answer {command} within {timeout:.0f} s") from None

    def _resync_later(self) -> None:
        # A late answer to the abandoned request must not be read as the next one's: the id check
        # drops it, and a reconnect clears anything half-read.
        self.close()

    # -- commands -----------------------------------------------------------------------------
    def spawn(self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = 30.0) -> int:
        args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "env": list(COMMAND_ENV), "capture-output": True}
        if stdin:
            args["input-data"] = base64.b64encode(stdin).decode()
        return int(self.request("guest-exec", args, timeout=timeout)["pid"])

    def status(self, pid: int, timeout: float = 30.0) -> dict[str, Any]:
        return dict(self.request("guest-exec-status", {"pid": pid}, timeout=timeout))

    def execute(self, argv: Sequence[str], timeout: float, stdin: bytes | None = None,
                answer_timeout: float = 30.0) -> tuple[int, bytes, bytes, bool]:
        """Run argv and wait: (exit status, stdout, stderr, output truncated). Past `timeout` the
        command's process group is killed and AgentTimeout raised."""
        pid = self.spawn(argv, stdin, answer_timeout)
        started = time.monotonic()
        deadline = started + timeout
        pause = 0.002
        while True:
            st = self.status(pid, answer_timeout)
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", ""))
                err = base64.b64decode(st.get("err-data", ""))
                return exit_status(st), out, err, bool(st.get("out-truncated") or st.get("err-truncated"))
            if time.monotonic() > deadline:
                self.kill_group(pid)
                raise CommandTimeout(f"{self.name}: command timed out after {timeout:.0f} s")
            time.sleep(pause)
            # Short commands are seen to end within milliseconds; a long one is asked twice a second,
            # so an hour of fstests costs the guest no busy agent.
            pause = min(pause * 2, 0.05 if time.monotonic() - started < 10 else 0.5)

    def kill_group(self, pid: int) -> None:
        """SIGKILL a command's process group (shell_argv makes each command a session leader)."""
        try:
            killer = self.spawn(["/bin/kill", "-KILL", "--", f"-{pid}"], timeout=5.0)
            for _ in range(100):
                if self.status(killer, timeout=5.0).get("exited"):
                    break
                time.sleep(0.02)
            for _ in range(100):  # reap the killed command's entry in the agent
                if self.status(pid, timeout=5.0).get("exited"):
                    break
                time.sleep(0.02)
        except AgentError:
            LOG.debug("the agent stopped answering while a command was being ended", exc_info=True)

    # -- files --------------------------------------------------------------------------------
    def write_file(self, path: str, data: bytes, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        handle = self.request("guest-file-open", {"path": path, "mode": "w"})
        try:
            for off in range(0, len(data), CHUNK) or [0]:
                chunk = data[off:off + CHUNK]
                if not chunk:
                    break
                left = max(1.0, deadline - time.monotonic())
                self.request("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(chunk).decode()}, timeout=left)
        finally:
            self.request("guest-file-close", {"handle": handle})

    def read_file(self, path: str, timeout: float = 600.0) -> bytes:
        deadline = time.monotonic() + timeout
        handle = self.request("guest-file-open", {"path": path, "mode": "r"})
        parts = []
        try:
            while True:
                left = max(1.0, deadline - time.monotonic())
                got = self.request("guest-file-read", {"handle": handle, "count": CHUNK}, timeout=left)
                parts.append(base64.b64decode(got.get("buf-b64", "")))
                if got.get("eof") or not got.get("count"):
                    break
        finally:
            self.request("guest-file-close", {"handle": handle})
        return b"".join(parts)
