"""The lab's command channel against a real qemu-ga (the host's, listening on a unix socket rather
than a virtio-serial port: the same protocol and the same command and file code in the agent).
Only the RPCs the lab uses are left enabled. The guest side is covered by every integration test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import lab.agent as agent_mod
from lab.agent import AgentClient, AgentError, AgentTimeout, CommandTimeout, exit_status, shell_argv
from lab.errors import GuestCommandError
from lab.guest import Guest

QEMU_GA = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
# Everything but what the lab uses: this agent runs on the host.
BLOCKED = ("guest-shutdown,guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw,guest-fstrim,"
           "guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,guest-set-time,guest-set-user-password,"
           "guest-set-vcpus,guest-set-memory-blocks,guest-network-get-interfaces")


@pytest.fixture
def qga(tmp_path):
    if not os.path.exists(QEMU_GA):
        pytest.fail("qemu-ga is missing: apt-get install qemu-guest-agent (.ci/run installs it)")
    sock = tmp_path / "qga.sock"
    proc = subprocess.Popen([QEMU_GA, "-m", "unix-listen", "-p", str(sock), "-t", str(tmp_path), "-f", str(tmp_path / "pid"),
                             "-b", BLOCKED], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        if sock.exists():
            break
        time.sleep(0.02)
    yield proc, sock
    proc.kill()
    proc.wait()


def test_commands_their_status_and_output(qga):
    _, sock = qga
    client = AgentClient("host", sock)
    client.connect(10)
    rc, out, err, cut = client.execute(shell_argv("echo out; echo err >&2; pwd; echo $HOME; exit 3"), timeout=10)
    assert (rc, out, err, cut) == (3, b"out\n/root\n/root\n", b"err\n", False)
    rc, out, _, _ = client.execute(["/bin/cat"], timeout=10, stdin=b"\x00\xffbinary in")
    assert (rc, out) == (0, b"\x00\xffbinary in")
    assert client.execute(shell_argv("kill -TERM $$"), timeout=10)[0] == 128 + signal.SIGTERM
    with pytest.raises(AgentError, match="guest-exec"):
        client.execute(["/no/such/program"], timeout=10)


def test_a_command_past_its_timeout_is_killed_with_its_children(qga, tmp_path):
    _, sock = qga
    client = AgentClient("host", sock)
    marker = tmp_path / "child-alive"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="timed out after 1 s"):
        client.execute(shell_argv(f"(sleep 3; touch {marker}) & sleep 60"), timeout=1)
    assert time.monotonic() - started < 10
    time.sleep(3.5)
    assert not marker.exists(), "the command's background child survived the timeout"


def test_a_stopped_agent_times_out_and_the_channel_recovers(qga):
    proc, sock = qga
    client = AgentClient("host", sock)
    client.connect(10)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(AgentTimeout, match="did not answer guest-exec within 1 s"):
            client.spawn(shell_argv("echo late"), timeout=1)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    # The late answer to the abandoned request must not be taken for the next one's.
    rc, out, _, _ = client.execute(shell_argv("echo now"), timeout=10)
    assert (rc, out) == (0, b"now\n")


def test_connect_waits_for_an_agent_that_is_not_listening_yet(tmp_path):
    client = AgentClient("host", tmp_path / "absent.sock")
    started = time.monotonic()
    with pytest.raises(AgentTimeout, match="did not answer within 1 s"):
        client.connect(1)
    assert time.monotonic() - started < 5


def test_files_in_chunks_and_errors(qga, tmp_path, monkeypatch):
    _, sock = qga
    monkeypatch.setattr(agent_mod, "CHUNK", 1000)  # many chunks, one short last one
    client = AgentClient("host", sock)
    data = os.urandom(10_500)
    client.write_file(str(tmp_path / "f"), data)
    assert (tmp_path / "f").read_bytes() == data
    assert client.read_file(str(tmp_path / "f")) == data
    client.write_file(str(tmp_path / "empty"), b"")
    assert client.read_file(str(tmp_path / "empty")) == b""
    with pytest.raises(AgentError, match="No such file"):
        client.read_file(str(tmp_path / "missing"))


def test_guest_facade_over_the_agent(qga, tmp_path):
    _, sock = qga
    guest = Guest("host", 1, tmp_path / "key", agent_socket=sock)
    assert guest.try_connect(10) and guest.channel == "agent"
    res = guest.run(["printf", "%s|", "a b", "$HOME", "it's"])
    assert res.ok and res.stdout == "a b|$HOME|it's|"  # an argument list is quoted, never expanded
    with pytest.raises(GuestCommandError, match="exited 4: bad"):
        guest.run("echo bad >&2; exit 4", check=True)
    with pytest.raises(GuestCommandError, match="command timed out after 1 s"):
        guest.run("sleep 30", timeout=1)
    with pytest.raises(GuestCommandError, match="16 MiB limit"):
        guest.run("head -c 17M /dev/zero")
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho tool\n")
    script.chmod(0o750)
    into = tmp_path / "into"
    into.mkdir()
    guest.put(script, str(into))  # a directory: the file goes into it, keeping its mode
    assert (into / "tool.sh").read_text() == script.read_text()
    assert (into / "tool.sh").stat().st_mode & 0o777 == 0o750
    guest.get(str(into / "tool.sh"), tmp_path / "back" / "tool.sh")
    assert (tmp_path / "back" / "tool.sh").read_bytes() == script.read_bytes()
    with pytest.raises(GuestCommandError, match="copying"):
        guest.get(str(tmp_path / "missing"), tmp_path / "x")


def test_exit_status_from_the_agent():
    assert exit_status({"exited": True, "exitcode": 0}) == 0
    assert exit_status({"exited": True, "signal": 9}) == 137
    assert exit_status({"exited": True}) == -1


def test_shell_argv_runs_in_root_home_in_its_own_session():
    argv = shell_argv("true")
    assert argv[:3] == ["/usr/bin/setsid", "/bin/bash", "-c"] and argv[3].startswith("cd /root") and argv[3].endswith("\ntrue")
    assert Path(argv[0]).name == "setsid"


def test_directories_in_and_out_through_the_agent(qga, tmp_path):
    from lab.transfer import download, upload

    _, sock = qga
    guest = Guest("host", 1, tmp_path / "key", agent_socket=sock)
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (src / "sub" / "run.sh").chmod(0o755)
    remote = tmp_path / "remote"
    remote.mkdir()
    assert upload(guest, src, str(remote)) == f"{remote}/tree"  # into an existing directory, like cp -r
    assert (remote / "tree" / "sub" / "run.sh").stat().st_mode & 0o111
    back = download(guest, str(remote / "tree"), tmp_path / "back")
    assert (back / "a.txt").read_text() == "a\n" and (back / "sub" / "run.sh").exists()
    assert not list(Path("/tmp").glob(f"lab-upload-{os.getpid()}.tar"))  # the staged tarballs are removed


def test_an_agent_that_went_away_fails_at_once(qga):
    proc, sock = qga
    client = AgentClient("host", sock)
    client.connect(10)
    proc.kill()
    proc.wait()
    sock.unlink(missing_ok=True)
    started = time.monotonic()
    with pytest.raises(AgentError, match="socket"):
        client.execute(shell_argv("true"), timeout=10)
    with pytest.raises(AgentError, match="socket is gone"):
        client.execute(shell_argv("true"), timeout=10)
    assert time.monotonic() - started < 3  # not 30 s of retries per command
