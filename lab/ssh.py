"""SSH to a guest through fabric, with a timeout on every call: the channel for people (`lab ssh`,
`lab cp`) and for commands with byte streams attached. Scenario commands go through the guest
agent when the machine has one (lab.guest)."""

from __future__ import annotations

import logging
import select
import shlex
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote
from invoke.exceptions import CommandTimedOut

from lab.errors import GuestCommandError, Result

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
WATCHDOG_GRACE = 15.0  # beyond a command's own timeout, for connecting and opening the channel


class _InterruptibleRemote(Remote):
    """fabric's runner, except that Ctrl-C or SIGTERM stops waiting at once.

    invoke joins its output threads before it closes the channel, and those threads block until the
    remote command ends: an interrupted lab kept its guests running for as long as the command in
    them did (fstests' check: minutes). Closing the channel first lets the interrupt through."""

    def wait(self) -> None:
        try:
            super().wait()
        except BaseException:
            self.channel.close()
            raise

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        raise interrupt


def shell_join(argv: Sequence[object]) -> str:
    """A command line for the guest's shell from an argument list: every user value quoted."""
    return shlex.join(str(a) for a in argv)


class SshChannel:
    """One guest's SSH endpoint on 127.0.0.1, key-only, root."""

    def __init__(self, name: str, port: int, key_file: Path) -> None:
        self.name = name
        self.port = port
        self.key_file = key_file
        self._conn: Connection | None = None

    def _connection(self, connect_timeout: float = 10.0) -> Connection:
        if self._conn is None or not self._conn.is_connected:
            conn = Connection(
                host="127.0.0.1",
                port=self.port,
                user="root",
                config=Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False},
                                         "runners": {"remote": _InterruptibleRemote}}),
                connect_timeout=connect_timeout,
                connect_kwargs={
                    "key_filename": str(self.key_file),
                    "look_for_keys": False,
                    "allow_agent": False,
                    "banner_timeout": connect_timeout,
                    "auth_timeout": connect_timeout,
                },
            )
            # Guests are throw-away and their ports change every run: check their host key against
            # nothing rather than against the user's known_hosts, where a stale entry would refuse.
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            conn.client = client
            conn.open()
            self._conn = conn
        return self._conn

    def try_connect(self, timeout: float) -> bool:
        try:
            self._connection(timeout)
            return True
        except (OSError, paramiko.SSHException, EOFError):
            self.close()
            return False

    @contextmanager
    def _watchdog(self, seconds: float, what: str) -> Iterator[None]:
        """A guest that stops answering (paused, wedged) leaves paramiko waiting forever for a channel
        to open; past the deadline the connection is closed under it and the call fails."""
        fired = threading.Event()

        def abort() -> None:
            fired.set()
            self.close()

        timer = threading.Timer(seconds, abort)
        timer.daemon = True
        timer.start()
        try:
            yield
        except (OSError, paramiko.SSHException, EOFError, GuestCommandError) as exc:
            if fired.is_set():
                raise GuestCommandError(f"{self.name}: no answer within {seconds:.0f} s (the guest stopped responding): "
                                        f"{what[:120]}") from None
            raise exc
        finally:
            timer.cancel()

    def run(self, command: str | Sequence[object], timeout: float = DEFAULT_TIMEOUT, check: bool = False) -> Result:
        """Run a shell command line, or an argument list (quoted here), in the guest."""
        if not isinstance(command, str):
            command = shell_join(command)
        try:
            with self._watchdog(timeout + WATCHDOG_GRACE, command):
                res = self._connection().run(command, hide=True, warn=True, timeout=timeout)
        except CommandTimedOut:
            raise GuestCommandError(f"{self.name}: command timed out after {timeout:.0f} s: {command[:120]}") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise GuestCommandError(f"{self.name}: SSH failed ({exc.__class__.__name__}: {exc}) running: {command[:120]}") from None
        result = Result(command, res.exited, res.stdout, res.stderr)
        return result.checked(self.name) if check else result

    def stream(self, command: str | Sequence[object], stdin: BinaryIO | None, stdout: BinaryIO, stderr: BinaryIO,
               timeout: float | None = None) -> int:
        """Run a command with byte streams attached: `stdin` is copied until its end (then the
        remote side sees EOF), output is copied as it comes. Returns the exit status. Ctrl-C closes
        the channel at once."""
        if not isinstance(command, str):
            command = shell_join(command)
        try:
            transport = self._connection().client.get_transport()
            assert transport is not None
            chan = transport.open_session(timeout=10)
            chan.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise GuestCommandError(f"{self.name}: SSH failed ({exc.__class__.__name__}: {exc}) running: {command[:120]}") from None

        def feed() -> None:
            try:
                while stdin is not None and (data := stdin.read(1 << 16)):
                    chan.sendall(data)
            except (OSError, paramiko.SSHException):
                LOG.debug("stdin to the SSH channel stopped", exc_info=True)
                return
            chan.shutdown_write()

        threading.Thread(target=feed, daemon=True).start()
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while True:
                select.select([chan], [], [], 0.5)
                while chan.recv_ready():
                    stdout.write(chan.recv(1 << 16))
                while chan.recv_stderr_ready():
                    stderr.write(chan.recv_stderr(1 << 16))
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if deadline and time.monotonic() > deadline:
                    raise GuestCommandError(f"{self.name}: command timed out after {timeout:.0f} s: {command[:120]}")
            stdout.flush()
            stderr.flush()
            return chan.recv_exit_status()
        finally:
            chan.close()

    def put(self, local: Path, remote: str, timeout: float = 600.0) -> None:
        try:
            with self._watchdog(timeout, f"copying {local} to {remote}"):
                self._connection().put(str(local), remote)
        except (OSError, paramiko.SSHException) as exc:
            raise GuestCommandError(f"{self.name}: copying {local} to {remote} failed: {exc}") from None

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._watchdog(600.0, f"copying {remote} to {local}"):
                self._connection().get(remote, str(local))
        except (OSError, paramiko.SSHException) as exc:
            raise GuestCommandError(f"{self.name}: copying {remote} to {local} failed: {exc}") from None

    def fire_and_forget(self, command: str) -> None:
        """Start a command without waiting (poweroff: the connection dies with the guest)."""
        try:
            transport = self._connection(5).client.get_transport()
            if transport:
                channel = transport.open_session(timeout=5)
                channel.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError):
            LOG.debug("could not start a command over SSH (the machine is going away)", exc_info=True)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # paramiko raises many kinds on a dead transport; closing is best effort
                LOG.debug("closing the SSH connection failed", exc_info=True)
            self._conn = None

    def ssh_argv(self) -> list[str]:
        """An OpenSSH command line for interactive use."""
        return [
            "ssh", "-i", str(self.key_file), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "root@127.0.0.1",
        ]


def quote(value: str) -> str:
    return shlex.quote(value)
