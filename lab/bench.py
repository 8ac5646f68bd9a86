"""`lab bench boot`: time from launch to the first guest command through the lab, against bare QEMU
started with the same argv, so the lab's own overhead is a measured figure."""

from __future__ import annotations

import logging
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import paramiko

from lab.errors import UsageError
from lab.agent import AgentClient, shell_argv
from lab.images import create_overlay
from lab.lab import Lab
from lab.machine import READY_MARKER, boot_phases, die_with_parent
from lab.paths import runtime_root
from lab.rundir import RunDir
from lab.sshkeys import ensure_key

LOG = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bare_boot(argv: list[str], overlay: Path, base: Path, console: Path, key: Path, agent: Path | None) -> float:
    """Same argv, no lab: a fixed forwarded port, poll the console, then run `true` over the same
    channel the lab uses (the guest agent's socket, or SSH with paramiko)."""
    overlay.unlink(missing_ok=True)
    create_overlay(base, overlay)
    port = _free_port()
    argv = [a.replace("hostfwd=tcp:127.0.0.1:0-:22", f"hostfwd=tcp:127.0.0.1:{port}-:22") for a in argv]
    console.write_text("")
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    try:
        while READY_MARKER not in console.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() - started > 240:
                raise RuntimeError("bare QEMU did not boot")
            time.sleep(0.05)
        if agent is not None:
            client = AgentClient("bare", agent)
            client.connect(30)
            client.execute(shell_argv("true"), timeout=30)
            elapsed = time.monotonic() - started
            client.close()
            return elapsed
        ssh = paramiko.SSHClient()
        ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        ssh.connect("127.0.0.1", port=port, username="root", key_filename=str(key), look_for_keys=False, allow_agent=False, timeout=10)
        _, out, _ = ssh.exec_command("true")
        out.channel.recv_exit_status()
        elapsed = time.monotonic() - started
        ssh.close()
        return elapsed
    finally:
        proc.kill()
        proc.wait()


def print_phases(phases: list[dict[str, float]]) -> None:
    """Median seconds per boot phase over the runs (a phase missing in a run is left out of its median)."""
    names = list(dict.fromkeys(name for run in phases for name in run))
    print(f"boot phases, median of {len(phases)} run(s):")
    for name in names:
        values = [run[name] for run in phases if name in run]
        print(f"  {name:30} {statistics.median(values):6.2f} s  [{min(values):.2f}-{max(values):.2f}]")


def bench_boot(template: Lab, runs: int = 3) -> int:
    machines = list(template.rendered.topology.machines)
    if len(machines) != 1:
        # The bare-QEMU half boots one machine alone: a machine linked to a peer cannot.
        raise UsageError(f"lab bench boot measures a one-machine topology; {template.rendered.name} has {len(machines)} "
                         f"({', '.join(machines)}): use nvme-pi or p2p-switch")
    lab_times: list[float] = []
    bare_times: list[float] = []
    phases: list[dict[str, float]] = []
    key, _ = ensure_key()
    run = RunDir.create("bench", "boot")
    for i in range(runs):
        lab = Lab(template.rendered, kernel_ref=template.kernel_ref, accel=template.accel, run=run)
        started = time.monotonic()
        with lab:
            name = next(iter(lab.machines))
            lab.guest(name).run("true", check=True)
            lab_times.append(time.monotonic() - started)
            launch_to_cmd = time.monotonic() - lab.machines[name].launched_at
            phases.append(boot_phases(lab.machines[name].boot_record(), launch_to_cmd))
            argv = lab.machines[name].argv
            overlay = Path(next(a for a in argv if "root.qcow2" in a).split("file=")[1].split(",")[0])
            base = lab.images[lab.rendered.topology.machines[name].image].path
            channel = lab.guest(name).channel
        # Runtime dir is gone after the lab stopped: give the bare run its own copy of the paths.
        bare_dir = Path(tempfile.mkdtemp(prefix="bench-bare-", dir=runtime_root()))
        bare_argv = [a.replace(str(overlay.parent), str(bare_dir)) for a in argv]
        for a in bare_argv:
            if ".img," in a and "nvme" in a:
                img = Path(a.split("file=")[1].split(",")[0])
                with open(img, "wb") as f:
                    f.truncate(1 << 30)
        console = bare_dir / "console.log"
        bare_argv = [f"file,id=console,path={console}" if a.startswith("file,id=console") else a for a in bare_argv]
        bare_argv = [a.replace(str(lab.machines[name].qmp_socket), str(bare_dir / "qmp.sock")) for a in bare_argv]
        agent = bare_dir / "agent.sock" if channel == "agent" else None
        try:
            bare_times.append(_bare_boot(bare_argv, bare_dir / "root.qcow2", base, console, key, agent))
        finally:
            shutil.rmtree(bare_dir, ignore_errors=True)  # sparse namespace images and the overlay
        print(f"run {i + 1}: lab {lab_times[-1]:.1f} s (preparation {lab.prepare_seconds:.2f} s, launch to first command "
              f"{launch_to_cmd:.1f} s), bare QEMU {bare_times[-1]:.1f} s, both over {channel}", flush=True)
    lab_med, bare_med = statistics.median(lab_times), statistics.median(bare_times)
    overhead = 100.0 * (lab_med - bare_med) / bare_med
    print_phases(phases)
    print(f"first guest command: lab {lab_med:.1f} s (median of {runs}), bare QEMU {bare_med:.1f} s; lab overhead {overhead:+.1f} %")
    run.finish("done", bench={"lab_seconds": lab_times, "bare_seconds": bare_times, "overhead_percent": overhead,
                              "phases": phases})
    return 0
