"""One guest as the lab drives it: commands and files through the guest agent (lab.agent) when the
machine has one, SSH (lab.ssh) otherwise and for commands with byte streams attached. SSH connects
on first use only, so a scenario that never needs it never pays for its handshake."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import BinaryIO, Sequence


from lab.agent import AgentClient, AgentError, AgentTimeout, CommandTimeout, shell_argv
from lab.errors import GuestCommandError, Result
from lab.ssh import DEFAULT_TIMEOUT, WATCHDOG_GRACE, SshChannel, shell_join

LOG = logging.getLogger(__name__)

__all__ = ["Guest", "GuestCommandError", "Result", "shell_join", "DEFAULT_TIMEOUT"]

ANSWER_TIMEOUT = 30.0  # the agent answers a request in milliseconds; silence this long is a stopped guest
SSH_CONNECT_WINDOW = 30.0  # sshd starts beside the agent and may still be coming up


class Guest:
    def __init__(self, name: str, port: int, key_file: Path, agent_socket: Path | None = None) -> None:
        self.name = name
        self.port = port
        self.key_file = key_file
        self.ssh = SshChannel(name, port, key_file)
        self.agent = AgentClient(name, agent_socket) if agent_socket else None

    def drop_agent(self) -> None:
        """Use SSH for everything (the guest started no agent)."""
        if self.agent is not None:
            self.agent.close()
        self.agent = None

    @property
    def channel(self) -> str:
        return "agent" if self.agent else "ssh"

    # -- readiness -----------------------------------------------------------------------------
    def try_connect(self, timeout: float) -> bool:
        """True once the command channel answers (the agent's sync, or an SSH login)."""
        if self.agent is None:
            return self.ssh.try_connect(timeout)
        try:
            self.agent.connect(timeout)
            return True
        except AgentError:
            return False

    def wait_for_ssh(self) -> SshChannel:
        """The SSH channel, connected: retried for a while, since sshd starts beside the agent."""
        deadline = time.monotonic() + SSH_CONNECT_WINDOW
        while not self.ssh.try_connect(min(10.0, max(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise GuestCommandError(f"{self.name}: SSH did not answer on port {self.port} within {SSH_CONNECT_WINDOW:.0f} s")
            time.sleep(0.2)
        return self.ssh

    # -- commands ------------------------------------------------------------------------------
    def run(self, command: str | Sequence[object], timeout: float = DEFAULT_TIMEOUT, check: bool = False) -> Result:
        """Run a shell command line, or an argument list (quoted here), in the guest."""
        if not isinstance(command, str):
            command = shell_join(command)
        if self.agent is None:
            return self.wait_for_ssh().run(command, timeout=timeout, check=check)
        answer = min(timeout + WATCHDOG_GRACE, ANSWER_TIMEOUT)
        try:
            rc, out, err, truncated = self.agent.execute(shell_argv(command), timeout=timeout, answer_timeout=answer)
        except CommandTimeout:
            raise GuestCommandError(f"{self.name}: command timed out after {timeout:.0f} s: {command[:120]}") from None
        except AgentTimeout:
            raise GuestCommandError(f"{self.name}: no answer within {answer:.0f} s (the guest stopped responding): "
                                    f"{command[:120]}") from None
        except AgentError as exc:
            raise GuestCommandError(f"{self.name}: the guest agent failed ({exc}) running: {command[:120]}") from None
        if truncated:
            raise GuestCommandError(f"{self.name}: the output of '{command[:120]}' passed the guest agent's 16 MiB limit "
                                    "and was cut: write it to a file and copy that out")
        result = Result(command, rc, out.decode(errors="replace"), err.decode(errors="replace"))
        return result.checked(self.name) if check else result

    def stream(self, command: str | Sequence[object], stdin: BinaryIO | None, stdout: BinaryIO, stderr: BinaryIO,
               timeout: float | None = None) -> int:
        """A command with byte streams attached, over SSH (see SshChannel.stream)."""
        return self.wait_for_ssh().stream(command, stdin, stdout, stderr, timeout=timeout)

    def fire_and_forget(self, command: str) -> None:
        """Start a command without waiting (poweroff: the channel dies with the guest)."""
        if self.agent is None:
            self.ssh.fire_and_forget(command)
            return
        try:
            self.agent.spawn(shell_argv(command), timeout=5.0)
        except AgentError:
            LOG.debug("%s: could not start %r through the agent (the guest is going away)", self.name, command, exc_info=True)

    # -- files ---------------------------------------------------------------------------------
    def put(self, local: Path, remote: str, timeout: float = 600.0) -> None:
        """Copy a local file to `remote` (into it when it is a directory), keeping its mode."""
        if self.agent is None:
            self.wait_for_ssh().put(local, remote, timeout=timeout)
            return
        try:
            data = Path(local).read_bytes()
            mode = os.stat(local).st_mode & 0o7777
        except OSError as exc:
            raise GuestCommandError(f"{self.name}: cannot read {local}: {exc.strerror}") from None
        target = remote if remote.startswith("/") else f"/root/{remote}"
        try:
            try:
                self.agent.write_file(target, data, timeout=timeout)
            except AgentError as exc:
                if "directory" not in str(exc).lower():
                    raise
                target = f"{target.rstrip('/')}/{Path(local).name}"
                self.agent.write_file(target, data, timeout=timeout)
            rc, _, err, _ = self.agent.execute(["/bin/chmod", f"{mode:o}", target], timeout=30.0)
            if rc != 0:
                raise AgentError(err.decode(errors="replace").strip())
        except AgentError as exc:
            raise GuestCommandError(f"{self.name}: copying {local} to {remote} failed: {exc}") from None

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        if self.agent is None:
            self.wait_for_ssh().get(remote, local)
            return
        source = remote if remote.startswith("/") else f"/root/{remote}"
        try:
            data = self.agent.read_file(source)
        except AgentError as exc:
            raise GuestCommandError(f"{self.name}: copying {remote} to {local} failed: {exc}") from None
        local.write_bytes(data)

    # -- end -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
        self.ssh.close()

    def ssh_argv(self) -> list[str]:
        return self.ssh.ssh_argv()
