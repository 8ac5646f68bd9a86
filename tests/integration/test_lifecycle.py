"""No QEMU outlives the lab: killed mid-boot, interrupted, timed out; two labs side by side;
lab up / ssh / qmp / down."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import qemu_pids_matching


def _lab_cmd(*argv, env=None):
    return [sys.executable, "-m", "lab", *argv]


def _ignore_sigint():
    # As a background job of a shell script the lab starts with SIGINT ignored; it must still stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _spawn(tmp_path, *argv, extra_env=None):
    env = dict(os.environ, LAB_RESULTS=str(tmp_path), **(extra_env or {}))
    return subprocess.Popen(_lab_cmd(*argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigint)


def _wait_for_qemu(marker: str, timeout: float = 180) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = qemu_pids_matching(marker)
        if pids:
            return pids
        time.sleep(0.1)
    raise AssertionError("QEMU never started")


def _gone(marker: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not qemu_pids_matching(marker):
            return True
        time.sleep(0.1)
    return False


def test_sigkill_mid_boot_leaves_no_qemu(tmp_path):
    proc = _spawn(tmp_path, "inspect", "nvme-pi", "--kernel", "debian:7.3")
    pids = _wait_for_qemu(str(tmp_path))
    time.sleep(2)  # mid-boot: QEMU runs, the guest is not up yet
    proc.kill()
    proc.wait()
    assert _gone(str(tmp_path)), f"QEMU {pids} outlived a SIGKILLed lab"


def test_sigint_mid_boot_stops_guests_and_keeps_results(tmp_path):
    proc = _spawn(tmp_path, "inspect", "nvme-pi", "--kernel", "debian:7.3")
    _wait_for_qemu(str(tmp_path))
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _gone(str(tmp_path), 5)
    consoles = list(tmp_path.glob("*/machines/vm/console.log"))
    assert consoles and consoles[0].stat().st_size > 0


def test_boot_timeout_reports_console_tail(tmp_path):
    # 1 s: the kernel alone takes 1.6 s to reach /init under TCG here (3 s was once too short to
    # boot and is now long enough to reach the ready marker on a quiet host).
    proc = _spawn(tmp_path, "inspect", "nvme-pi", "--kernel", "debian:7.3", extra_env={"LAB_BOOT_TIMEOUT": "1"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "not ready after 1 s" in err and "[phase ready]" in err and "console" in err
    assert "Traceback" not in err
    assert list(tmp_path.glob("*/machines/vm/console.log"))
    assert _gone(str(tmp_path), 5)


def test_two_labs_at_once_get_their_own_ports_and_dirs(lab_boot):
    a = lab_boot("nvme-pi", kernel="debian:7.3", fresh=True)
    b = lab_boot("nvme-pi", kernel="debian:7.3", fresh=True)
    assert a.machines["vm"].ssh_port != b.machines["vm"].ssh_port
    assert a.runtime != b.runtime and a.run.path != b.run.path
    assert a.guest("vm").run("hostname", check=True).stdout.strip() == "vm"
    assert b.guest("vm").run("hostname", check=True).stdout.strip() == "vm"


def test_up_ssh_qmp_down(tmp_path):
    env = dict(os.environ, LAB_RESULTS=str(tmp_path))
    run = lambda *a, **k: subprocess.run(_lab_cmd(*a), env=env, capture_output=True, text=True, timeout=300, **k)  # noqa: E731
    up = run("up", "nvme-pi", "--kernel", "debian:7.3", "--detach")
    try:
        assert up.returncode == 0, up.stderr
        ssh = run("ssh", "vm", "--", "cat", "/sys/block/nvme0n1/integrity/format")
        assert ssh.returncode == 0 and ssh.stdout.strip() == "T10-DIF-TYPE1-CRC", ssh.stderr
        qmp = run("qmp", "vm", "query-status")
        assert qmp.returncode == 0, qmp.stderr
        assert json.loads(qmp.stdout)["return"]["status"] == "running"
        bad = run("qmp", "vm", "no-such-command")
        assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["class"] == "CommandNotFound"
        # Files in and out, directories too, and stdin through ssh.
        tree = tmp_path / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "a.txt").write_text("alpha\n")
        (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
        assert run("cp", str(tree), "vm:/root").returncode == 0
        listing = run("ssh", "vm", "--", "find /root/tree -type f | sort; md5sum /root/tree/sub/b.bin")
        assert "/root/tree/a.txt\n/root/tree/sub/b.bin" in listing.stdout
        piped = subprocess.run(_lab_cmd("ssh", "vm", "--", "cat > /root/piped && wc -c < /root/piped"), env=env,
                               input="x" * 100000, capture_output=True, text=True, timeout=120)
        assert piped.returncode == 0 and piped.stdout.strip() == "100000", piped.stderr
        back = tmp_path / "back"
        back.mkdir()
        assert run("cp", "vm:/root/tree", str(back)).returncode == 0
        assert (back / "tree" / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()
        assert run("cp", "vm:/root/piped", str(back / "piped")).returncode == 0
        assert (back / "piped").read_text() == "x" * 100000
        assert run("ssh", "vm", "--", "exit 7").returncode == 7
        missing = run("cp", "vm:/no/such/file", str(back))
        assert missing.returncode == 2 and "vm:/no/such/file: no such file or directory" in missing.stderr
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert _gone(str(tmp_path), 10)


def test_up_in_the_foreground_ends_when_its_guest_panics(tmp_path):
    """`lab up` waiting for Ctrl-C must not outlive its guest: a kernel panic ends it with exit 1,
    the panic line, and the run directory kept."""
    env = dict(os.environ, LAB_RESULTS=str(tmp_path))
    up = _spawn(tmp_path, "up", "nvme-pi", "--kernel", "debian:7.3")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "guests are up" not in (line := up.stdout.readline()):
            assert line or up.poll() is None, up.stderr.read()
        crash = subprocess.run(_lab_cmd("ssh", "vm", "--", "echo c > /proc/sysrq-trigger"), env=env, capture_output=True,
                               text=True, timeout=120)
        assert crash.returncode != 0
        rc = up.wait(timeout=60)
        err = up.stderr.read()
    finally:
        if up.poll() is None:
            up.kill()
    assert rc == 1 and "vm: QEMU exited while the lab was up (console: Kernel panic - not syncing: sysrq triggered crash" in err, err
    manifest = json.loads(next(tmp_path.glob("*up-nvme-pi*/manifest.json")).read_text())
    assert manifest["status"] == "failed"
    assert _gone(str(tmp_path), 10)


def test_dump_writes_a_vmcore_drgn_reads(tmp_path):
    """`lab dump` of a running guest: drgn opens the vmcore through its vmcoreinfo (no debug info
    needed) and reads the kernel's release out of init_uts_ns in the guest's memory."""
    import re

    import drgn

    env = dict(os.environ, LAB_RESULTS=str(tmp_path))
    run = lambda *a: subprocess.run(_lab_cmd(*a), env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    up = run("up", "nvme-pi", "--kernel", "debian:7.3", "-p", "memory=512M", "--detach")
    try:
        assert up.returncode == 0, up.stderr
        release = run("ssh", "vm", "--", "uname", "-r").stdout.strip()
        vmcore = tmp_path / "vmcore"
        dumped = run("dump", "vm", "-o", str(vmcore))
        assert dumped.returncode == 0, dumped.stderr
        assert f"{vmcore}: elf, 512 MiB of 512 MiB guest memory" in dumped.stdout
        again = run("dump", "vm", "-o", str(vmcore))
        assert again.returncode == 2 and "exists; the lab does not overwrite files" in again.stderr
    finally:
        assert run("down").returncode == 0
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    with open(vmcore, "rb") as f:
        head = f.read(1 << 20)  # the ELF notes, vmcoreinfo among them, come first
    info = dict(re.findall(rb"^([A-Z_()a-z0-9]+)=(\S+)$", head[head.index(b"OSRELEASE="):].split(b"\0")[0], re.MULTILINE))
    assert info[b"OSRELEASE"].decode() == release
    uts = int(info[b"SYMBOL(init_uts_ns)"], 16)
    # struct uts_namespace starts with struct new_utsname: sysname[65], nodename[65], release[65].
    assert prog.read(uts, 5) == b"Linux" and prog.read(uts + 130, 65).split(b"\0")[0].decode() == release


def test_up_with_gdb_prints_a_command_line_that_reads_kernel_memory(tmp_path):
    """`lab up --gdb`: a gdb stub per machine; gdb in batch mode, attached as printed, reads the
    kernel's release out of init_uts_ns at the address the kept kallsyms gives."""
    import re
    import shlex

    env = dict(os.environ, LAB_RESULTS=str(tmp_path))
    run = lambda *a: subprocess.run(_lab_cmd(*a), env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    up = run("up", "nvme-pi", "--kernel", "debian:7.3", "--gdb", "--detach")
    try:
        assert up.returncode == 0, up.stderr
        command = re.search(r"^vm: (gdb -q .*)$", up.stdout, re.MULTILINE).group(1)
        kallsyms = Path(re.search(r"addresses: (\S+) \(the running kernel's, nokaslr\)", up.stdout).group(1))
        addr = next(line.split()[0] for line in kallsyms.read_text().splitlines() if line.endswith(" init_uts_ns"))
        release = run("ssh", "vm", "--", "uname", "-r").stdout.strip()
        gdb = subprocess.run([*shlex.split(command), "-batch", "-ex", f"x/s 0x{addr}+130"], capture_output=True, text=True,
                             timeout=120)
        assert f'"{release}"' in gdb.stdout, gdb.stdout + gdb.stderr
        assert "nokaslr" in run("ssh", "vm", "--", "cat", "/proc/cmdline").stdout
    finally:
        assert run("down").returncode == 0


def test_debian_debug_symbols_let_gdb_read_a_kernel_variable_by_name(tmp_path):
    """`lab kernel fetch --debug-symbols debian:7.3` keeps the -dbg package's vmlinux (the 1.2 GB
    download is streamed; only vmlinux and the real System.map stay); `lab up --gdb` then names it, and
    gdb prints init_uts_ns.name.release by its name, with the kernel's types."""
    import re
    import shlex

    env = dict(os.environ, LAB_RESULTS=str(tmp_path))
    run = lambda *a, timeout=300: subprocess.run(_lab_cmd(*a), env=env, capture_output=True, text=True, timeout=timeout)  # noqa: E731
    fetched = run("kernel", "fetch", "--debug-symbols", "debian:7.3", timeout=1800)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    vmlinux = Path(re.search(r"debug symbols (\S+)$", fetched.stdout, re.MULTILINE).group(1))
    assert vmlinux.name == "vmlinux" and vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert (vmlinux.parent / "System.map").stat().st_size > 1_000_000, "the real System.map, not the placeholder"
    up = run("up", "nvme-pi", "--kernel", "debian:7.3", "--gdb", "--detach")
    try:
        assert up.returncode == 0, up.stderr
        assert f"symbols: {vmlinux}" in up.stdout
        command = re.search(r"^vm: (gdb -q .*)$", up.stdout, re.MULTILINE).group(1)
        release = run("ssh", "vm", "--", "uname", "-r").stdout.strip()
        gdb = subprocess.run([*shlex.split(command), "-batch", "-ex", "p init_uts_ns.name.release"], capture_output=True,
                             text=True, timeout=600)
        assert re.search(rf'= "{re.escape(release)}"', gdb.stdout), gdb.stdout[-2000:] + gdb.stderr[-2000:]
    finally:
        assert run("down").returncode == 0
