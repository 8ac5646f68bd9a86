"""What keeps the lab from hurting the host: the LAB_* settings checked by name, the runtime root
checked before use, and signals sent only to processes the lab can prove are its own."""

from __future__ import annotations

import os
import signal
import tempfile
import subprocess
import sys
import tarfile
import time

import pytest

from lab import processes
from lab.errors import UsageError
from lab.paths import check_private_dir, runtime_root
from lab.settings import settings


@pytest.mark.parametrize("name,value,message", [
    ("LAB_ACCEL", "warp", "LAB_ACCEL='warp': choose auto, kvm or tcg"),
    ("LAB_BOOT_TIMEOUT", "abc", "not a number of seconds"),
    ("LAB_BOOT_TIMEOUT", "nan", "positive, finite"),
    ("LAB_BOOT_TIMEOUT", "-3", "positive, finite"),
    ("LAB_BOOT_TIMEOUT", "0", "positive, finite"),
    ("LAB_CACHE", "", "LAB_CACHE is set but empty"),
    ("LAB_RESULTS", " ", "LAB_RESULTS is set but empty"),
    ("LAB_RUNTIME", "/tmp/" + "x" * 80, "too long for the unix sockets"),
    ("LAB_TOPOLOGIES", "/nonexistent/topologies", "no such directory"),
    ("LAB_KERNELS", "/nonexistent/kernels.toml", "no such file"),
])
def test_settings_are_checked_by_name(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError) as info:
        settings()
    assert name in str(info.value) and message in str(info.value)


def test_valid_lab_variables_are_read_into_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_BOOT_TIMEOUT", "90")
    monkeypatch.setenv("LAB_ACCEL", "tcg")
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "c"))
    s = settings()
    assert (s.boot_timeout, s.accel, s.cache) == (90.0, "tcg", tmp_path / "c")


@pytest.fixture
def short_tmp():
    """Runtime roots must be short (unix socket paths): a directory right under /tmp."""
    import shutil

    path = tempfile.mkdtemp(prefix="lt-", dir="/tmp")
    yield __import__("pathlib").Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_runtime_root_must_be_private(monkeypatch, short_tmp):
    tmp_path = short_tmp
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "rt"
    link.symlink_to(target)
    monkeypatch.setenv("LAB_RUNTIME", str(link))
    with pytest.raises(UsageError, match="is a symlink"):
        runtime_root()
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o755)
    with pytest.raises(UsageError, match="mode 755, not 700"):
        check_private_dir(loose)
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        check_private_dir(afile)
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("LAB_RUNTIME", str(fresh))
    assert runtime_root() == fresh and (fresh.stat().st_mode & 0o777) == 0o700


def test_signals_only_reach_the_labs_own_qemu(tmp_path):
    """A recorded PID now held by another process (PID reuse) is never signalled."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    while not processes.cmdline(sleeper.pid):
        time.sleep(0.01)
    try:
        assert processes.pid_alive(sleeper.pid)
        assert not processes.is_ours(sleeper.pid, str(tmp_path))  # not a QEMU of this runtime dir
        assert not processes.kill_if_ours(sleeper.pid, str(tmp_path))
        assert sleeper.poll() is None
        started = processes.start_time(sleeper.pid)
        assert processes.same_process(sleeper.pid, started)
        assert not processes.same_process(sleeper.pid, (started or 0) + 1)  # same PID, another process
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not processes.pid_alive(sleeper.pid) and not processes.pid_alive(True) and not processes.pid_alive("12")


def test_a_qemu_of_this_runtime_dir_is_recognised(tmp_path):
    # A process whose command line names qemu-system and the runtime dir, like the lab's own guests.
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text(f"#!/bin/sh\nexec sleep 60 # {tmp_path}/vm/qmp.sock\n")
    fake.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "qemu-system-x86_64", f"-qmp unix:{tmp_path}/vm/qmp.sock"])
    while not processes.cmdline(proc.pid):  # Popen may return before the exec has replaced the command line
        time.sleep(0.01)
    try:
        assert processes.is_ours(proc.pid, str(tmp_path))
        assert not processes.is_ours(proc.pid, str(tmp_path / "other"))
        assert processes.kill_if_ours(proc.pid, str(tmp_path), signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_reaper_leaves_foreign_processes_alone(short_tmp, monkeypatch):
    """A stale state file whose recorded PIDs now belong to other programs: the reaper removes the
    directory and kills nothing."""
    import json

    from lab.lab import reap_stale_runtimes

    monkeypatch.setenv("LAB_RUNTIME", str(short_tmp / "rt"))
    root = runtime_root()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = root / "nvme-pi-abc"
        stale.mkdir()
        (stale / "state.json").write_text(json.dumps({"owner_pid": other.pid, "owner_started": 1, "machines": {
            "vm": {"pid": other.pid, "ssh_port": 1, "qmp": "x"}}}))
        assert reap_stale_runtimes() == ["nvme-pi-abc"]
        time.sleep(0.2)
        assert other.poll() is None and not stale.exists()
        (root / "garbage").mkdir()
        (root / "garbage" / "state.json").write_text("{not json")
        assert reap_stale_runtimes() == []  # unreadable state: left alone, no traceback
    finally:
        other.kill()
        other.wait()


def test_a_failed_build_step_names_apts_error_line(tmp_path):
    from lab.errors import LabError
    from lab.progress import run_logged

    script = "echo 'I: installing'; echo 'E: Unable to locate package no-such-package'; echo 'E: setup failed'; exit 25"
    with pytest.raises(LabError) as info:
        run_logged(["sh", "-c", script], tmp_path / "log", what="mmdebstrap")
    first = str(info.value).splitlines()[0]
    assert first.startswith("mmdebstrap failed (exit 25): E: Unable to locate package no-such-package; log: ")
    assert "E: setup failed" in str(info.value)


def _tar_with(tmp_path, *infos):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in infos:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r")


@pytest.mark.parametrize("name,kind,linkname,message", [
    ("../evil", tarfile.REGTYPE, "", "outside"),
    ("/etc/evil", tarfile.REGTYPE, "", "outside"),
    ("dev", tarfile.CHRTYPE, "", "not a file"),
    ("ln", tarfile.SYMTYPE, "/etc/passwd", "leaves"),
    ("ln", tarfile.SYMTYPE, "../../x", "leaves"),
])
def test_a_guest_tar_cannot_write_outside_the_target(tmp_path, name, kind, linkname, message):
    from lab.errors import LabError
    from lab.transfer import checked_members

    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    data = b"x" if kind == tarfile.REGTYPE else None
    info.size = len(data or b"")
    with _tar_with(tmp_path, (info, data)) as tar, pytest.raises(LabError, match=message):
        checked_members(tar, tmp_path)


def test_a_guest_tar_of_files_and_inner_links_is_accepted(tmp_path):
    from lab.transfer import checked_members

    f = tarfile.TarInfo("./sub/a.txt")
    f.size, f.mode = 1, 0o4777
    link = tarfile.TarInfo("./sub/l")
    link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
    with _tar_with(tmp_path, (f, b"a"), (link, None)) as tar:
        members = checked_members(tar, tmp_path)
        assert [m.name for m in members] == ["./sub/a.txt", "./sub/l"] and members[0].mode == 0o755
        tar.extractall(tmp_path, members=members)
    assert (tmp_path / "sub/l").read_text() == "a"
