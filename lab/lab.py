"""A running topology: prepares images, kernels and disks, launches every machine, waits until each
answers on its command channel, and tears everything down however the lab ends."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import accel as accel_mod
from lab import processes
from lab.errors import BootError, LabError
from lab import nested
from lab.images import Image, create_overlay, ensure_image
from lab.kernels.initramfs import ensure_initramfs
from lab.kernels.kernel import Kernel
from lab.kernels.pvh import pvh_image
from lab.kernel_log import first_crash
from lab.kernels.resolve import DEFAULT_KERNEL, resolve
from lab.machine import QemuMachine, boot_phases
from lab.paths import runtime_root
from lab.progress import info, step, warn
from lab.qemu_caps import probe
from lab.rundir import RunDir
from lab.settings import settings
from lab.sshkeys import ensure_key
from lab.topology.argv import Accel, BootFiles, machine_argv, namespace_drive_ids
from lab.topology.kernel_needs import check_kernel_fits
from lab.topology.render import Rendered

LOG = logging.getLogger(__name__)
BOOT_TIMEOUT_TCG = 240.0
BOOT_TIMEOUT_KVM = 60.0
# A guest that has printed nothing by then will not: seen once here (240 s of silence while its peer
# booted in 19 s). Ready-to-first-line is 4-6 s under TCG, so this is generous even on a busy host.
SILENCE_TCG = 60.0
SILENCE_KVM = 20.0
# Under TCG a boot whose console stops for this long before the ready marker, with no kernel problem
# in it, is the emulator's stall (each lean-init stage prints within seconds; the kernel's own hang
# detectors would print a report). Deterministic hangs of the kernel under test stall every attempt
# and end as ERROR all the same; every retried boot is recorded and named in the verdict line.
STALL_TCG = 120.0
# Boots are retried only for failures of the emulator (errors.INFRASTRUCTURE_PHASES), never for a
# panic, an oops or a console that keeps printing without reaching the ready marker.
BOOT_ATTEMPTS = 3


class Terminated(BaseException):
    """SIGTERM turned into an exception so that teardown runs as it does for Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def install_signal_handlers() -> None:
    # Python leaves SIGINT ignored when it starts with it ignored (a background job of a script):
    # the lab must still stop its guests on Ctrl-C or a SIGINT from a supervisor.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)


@dataclass
class Lab:
    rendered: Rendered
    kernel_ref: str | None = None  # overrides every machine's kernel
    accel: str = "auto"
    run: RunDir | None = None
    boot_timeout: float | None = None
    die_with_parent: bool = True
    resolved: dict[str, Kernel] = field(default_factory=dict)  # kernel ref -> kernel, resolved beforehand
    machines: dict[str, QemuMachine] = field(default_factory=dict)
    kernels: dict[str, Kernel] = field(default_factory=dict)
    images: dict[str, Image] = field(default_factory=dict)
    chosen_accel: Accel | None = None
    accel_reason: str = ""
    boot_seconds: dict[str, float] = field(default_factory=dict)
    runtime: Path | None = None
    boot_retries: list[dict[str, Any]] = field(default_factory=list)  # one entry per failed attempt retried
    files: dict[str, BootFiles] = field(default_factory=dict)  # what each machine was started with (faults use it)
    prepare_seconds: float = 0.0  # from start() to the first QEMU launch
    gdb: bool = False  # a gdb stub per machine on a free local port, the kernel booted with nokaslr
    gdb_ports: dict[str, int] = field(default_factory=dict)
    _stall: float | None = None  # console stall seconds that count as the emulator's (TCG only)

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- start --------------------------------------------------------------------------------
    def _kernel(self, ref: str) -> Kernel:
        if ref not in self.resolved:
            self.resolved[ref] = resolve(ref)
        return self.resolved[ref]

    def start(self) -> None:
        """Kernels and images, the runtime directory, the accelerator, each machine's files and
        command line, then the boot: one named step each, the manifest written as they go."""
        began = time.monotonic()
        caps = probe()
        if self.run is None:
            self.run = RunDir.create("up", self.rendered.name)
        self._resolve_parts()
        # Unique per lab, short (unix socket paths), 0700: mkdtemp gives all three.
        label = re.sub(r"[^A-Za-z0-9]+", "-", self.rendered.name)[:16]
        self.runtime = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=runtime_root()))
        boot_image = {n: pvh_image(k.vmlinuz, k.sha256) or k.vmlinuz for n, k in self.kernels.items()}
        initrds = {n: ensure_initramfs(k) for n, k in self.kernels.items()}
        self._choose_accel(caps, boot_image, initrds)
        self._record_plan(caps)
        key_file, key_blob = ensure_key()
        links = self._link_sockets()
        argvs = {}
        assert self.chosen_accel is not None
        for name in self.rendered.topology.machines:
            files = self._machine_files(name, boot_image[name], initrds[name], links.get(name, {}), key_blob)
            plan = machine_argv(self.rendered.topology, name, files, caps, self.chosen_accel)
            if self.gdb:
                self.gdb_ports[name] = free_local_port()
                with_gdb(plan.argv, self.gdb_ports[name])
            argvs[name] = plan.argv
            self.machines[name] = QemuMachine(name, plan.argv, files.qmp_socket, files.console_log,
                                              self.run.machine_dir(name) / "qemu-stderr.log", key_file, agent_socket=files.agent_socket)
        # What the lab itself costs before QEMU starts (cache checks, overlays, disks): the bench's overhead.
        self.prepare_seconds = round(time.monotonic() - began, 3)
        self.run.update(argv=argvs, prepare_seconds=self.prepare_seconds)
        self._boot_all()
        self._write_state()
        for name, machine in self.rendered.topology.machines.items():
            if machine.lab_inside:
                nested.stage(self, name)
        if self.gdb:
            self._keep_kallsyms()

    def _keep_kallsyms(self) -> None:
        """The running kernel's symbol addresses (nokaslr: what gdb sees), kept per machine: Debian
        ships System.map only in its -dbg package."""
        from lab.transfer import download

        assert self.run is not None
        for name in self.machines:
            guest = self.guest(name)
            guest.run("grep -v '\\]$' /proc/kallsyms > /tmp/lab-kallsyms", timeout=120, check=True)
            download(guest, "/tmp/lab-kallsyms", self.run.machine_dir(name) / "kallsyms")

    def _resolve_parts(self) -> None:
        """Every machine's kernel and base image, and whether the kernel can drive the topology."""
        topo = self.rendered.topology
        for name, machine in topo.machines.items():
            self.kernels[name] = self._kernel(self.kernel_ref or machine.kernel or next(iter(settings().kernels), DEFAULT_KERNEL))
            if machine.image not in self.images:
                self.images[machine.image] = ensure_image(machine.image)
        check_kernel_fits(topo, self.kernels, self.rendered.name)

    def _choose_accel(self, caps: Any, boot_image: dict[str, Path], initrds: dict[str, Path]) -> None:
        first_name = next(iter(self.kernels))
        first = self.kernels[first_name]
        self.chosen_accel, self.accel_reason = accel_mod.choose(
            self.accel, caps.binary, caps.version, boot_image[first_name], first.sha256, initrds[first_name]
        )
        info(f"acceleration: {self.accel_reason}")

    def _record_plan(self, caps: Any) -> None:
        assert self.run is not None and self.chosen_accel is not None
        topo = self.rendered.topology
        self.run.update(
            topology={"name": self.rendered.name, "template": str(self.rendered.template), "params": self.rendered.params,
                      "rendered": self.rendered.text, "model": topo.model_dump()},
            qemu={"binary": caps.binary, "version": caps.version},
            accel={"name": self.chosen_accel.name, "cpu": self.chosen_accel.cpu, "reason": self.accel_reason},
            kernels={n: k.identity() for n, k in self.kernels.items()},
            images={n: i.identity() for n, i in self.images.items()},
            runtime=str(self.runtime),
        )

    def _machine_files(self, name: str, kernel_image: Path, initrd: Path, links: dict[str, tuple[Path, Path]],
                       key_blob: str) -> BootFiles:
        """A machine's runtime directory: its root overlay, sparse namespace images, shares kept in
        the run directory, and the sockets QEMU will listen on."""
        assert self.run is not None and self.runtime is not None
        machine = self.rendered.topology.machines[name]
        rdir = self.runtime / name
        rdir.mkdir()
        overlay = rdir / "root.qcow2"
        create_overlay(self.images[machine.image].path, overlay)
        ns_images = {}
        for drive, size in namespace_drive_ids(machine).items():
            ns_images[drive] = rdir / f"{drive}.img"
            with open(ns_images[drive], "wb") as f:
                f.truncate(size)  # sparse: costs nothing until the guest writes
        shares = {}
        for share in machine.shares:
            # In the run directory: what the guest leaves there is kept with the run's results.
            shares[share.tag] = self.run.path / "shares" / name / share.tag
            shares[share.tag].mkdir(parents=True, exist_ok=True)
        files = BootFiles(
            kernel=kernel_image, initrd=initrd, root_overlay=overlay, modules_image=self.kernels[name].modules_image,
            qmp_socket=rdir / "qmp.sock", console_log=self.run.machine_dir(name) / "console.log", namespace_images=ns_images,
            link_sockets=links, ssh_pubkey_blob=key_blob, qmp_user_socket=rdir / "qmp-user.sock",
            shares=shares, agent_socket=rdir / "agent.sock",
        )
        self.files[name] = files
        return files

    def _boot_all(self) -> None:
        assert self.chosen_accel is not None
        kvm = self.chosen_accel.name == "kvm"
        timeout = self.boot_timeout or settings().boot_timeout or (BOOT_TIMEOUT_KVM if kvm else BOOT_TIMEOUT_TCG)
        silence = SILENCE_KVM if kvm else SILENCE_TCG
        self._stall = None if kvm else STALL_TCG
        with step(f"booting {', '.join(self.machines)} ({self.chosen_accel.name}, {', '.join(sorted({k.ref for k in self.kernels.values()}))})") as st:
            self._boot(timeout, silence)
            st.suffix = " (" + ", ".join(f"{n} {s:.1f} s" for n, s in self.boot_seconds.items()) + ")"
            if self.boot_retries:
                st.suffix += f", after {len(self.boot_retries)} retried boot(s)"

    def _boot(self, timeout: float, silence: float) -> None:
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            failures = self._launch_and_wait(timeout, silence)
            self._record_boot(attempt, failures)
            if not failures:
                return
            error = BootError([f.evidence for f in failures.values()])
            if not error.infrastructure or attempt == BOOT_ATTEMPTS:
                raise error
            # The emulator failed, not the kernel under test: boot everything again from fresh
            # overlays, keep the failed consoles, and say so in the verdict line.
            warn(f"boot attempt {attempt} failed in the emulator ({error.evidence.detail}; console kept as "
                 f"console.attempt{attempt}.log); booting again")
            self.boot_retries.append({"attempt": attempt, "phase": error.phase, "detail": error.evidence.detail,
                                      "machines": sorted(failures)})
            self.stop_machines()
            topo = self.rendered.topology
            for name, m in self.machines.items():
                if m.console_log.exists():
                    m.console_log.rename(m.console_log.with_name(f"console.attempt{attempt}.log"))
                overlay = self.runtime / name / "root.qcow2"  # type: ignore[operator]
                overlay.unlink(missing_ok=True)
                create_overlay(self.images[topo.machines[name].image].path, overlay)
                m.reset()

    def _record_boot(self, attempt: int, failures: dict[str, BootError]) -> None:
        assert self.run is not None
        boots = self.run.manifest().get("boots", [])
        boots.append({
            "attempt": attempt,
            "machines": {n: {**(record := m.boot_record()), "phases": boot_phases(record), "ready_seconds": self.boot_seconds.get(n) if n not in failures else None,
                             "failure": vars(failures[n].evidence) | {"argv": None} if n in failures else None}
                         for n, m in self.machines.items()},
        })
        self.run.update(boots=boots, boot_seconds=self.boot_seconds, boot_retries=self.boot_retries)

    def _launch_and_wait(self, timeout: float, silence: float) -> dict[str, BootError]:
        """Launch every machine, wait for all; machine -> error for those that did not come up."""
        failures: dict[str, BootError] = {}
        for n, m in self.machines.items():
            try:
                m.launch(self.die_with_parent)
            except BootError as exc:
                failures[n] = exc
        self._write_state()
        waiting = {n: m for n, m in self.machines.items() if n not in failures}
        if waiting:
            with ThreadPoolExecutor(max_workers=len(waiting)) as pool:
                futures = {n: pool.submit(m.wait_ready, timeout, silence, self._stall) for n, m in waiting.items()}
                for n, fut in futures.items():
                    try:
                        self.boot_seconds[n] = round(fut.result(), 2)
                    except BootError as exc:
                        failures[n] = exc
        return failures

    def stop_machines(self) -> None:
        if self.machines:
            with ThreadPoolExecutor(max_workers=len(self.machines)) as pool:
                list(pool.map(lambda m: m.shutdown(), self.machines.values()))

    def _link_sockets(self) -> dict[str, dict[str, tuple[Path, Path]]]:
        """machine -> link -> (local socket, peer socket). The sockets live in the 0700 runtime dir."""
        assert self.runtime is not None
        topo = self.rendered.topology
        ends: dict[str, list[str]] = {}
        for name, machine in topo.machines.items():
            for nic in machine.nics:
                ends.setdefault(nic.link, []).append(name)
        out: dict[str, dict[str, tuple[Path, Path]]] = {}
        (self.runtime / "links").mkdir(exist_ok=True)
        for link, (a, b) in ends.items():
            sa = self.runtime / "links" / f"{link}.{a}"
            sb = self.runtime / "links" / f"{link}.{b}"
            out.setdefault(a, {})[link] = (sa, sb)
            out.setdefault(b, {})[link] = (sb, sa)
        return out

    def _write_state(self) -> None:
        if not self.runtime or not self.runtime.exists():
            return
        import os

        state = {
            "owner_pid": os.getpid(),
            "owner_started": processes.start_time(os.getpid()),
            "detached": not self.die_with_parent,
            "run": str(self.run.path) if self.run else None,
            "topology": self.rendered.name,
            "key_file": str(ensure_key()[0]),
            "machines": {
                n: {"pid": m.pid, "ssh_port": m.ssh_port, "qmp": str(m.qmp_socket.with_name("qmp-user.sock")),
                    "gdb_port": self.gdb_ports.get(n),
                    "console": str(m.console_log), "namespaces": self._namespaces(n)}
                for n, m in self.machines.items()
            },
        }
        (self.runtime / "state.json").write_text(json.dumps(state, indent=2))

    def _namespaces(self, name: str) -> dict[str, Any]:
        """drive id -> backing image and the namespace's model (what `lab fault pi` needs)."""
        files = self.files.get(name)
        if files is None:
            return {}
        machine = self.rendered.topology.machines[name]
        out = {}
        for ctrl in machine.nvme:
            for j, ns in enumerate(ctrl.namespaces):
                drive = f"{ctrl.id}n{ns.nsid or j + 1}"
                out[drive] = {"image": str(files.namespace_images[drive]), "model": ns.model_dump()}
        return out

    # -- use ----------------------------------------------------------------------------------
    def guest(self, name: str):
        if name not in self.machines:
            raise LabError(f"no machine {name!r}; machines: {', '.join(self.machines)}")
        guest = self.machines[name].guest
        if guest is None:
            raise LabError(f"machine {name!r} is not running")
        return guest

    # -- stop ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Shut every machine down, in parallel, then remove the runtime directory. Never raises."""
        try:
            self.stop_machines()
            if self.run is not None and self.machines:
                self.run.update(shutdown={n: {"stopped_by": m.stopped_by, "steps": m.shutdown_steps}
                                          for n, m in self.machines.items()})
        except Exception:
            LOG.debug("recording the shutdown failed", exc_info=True)
        if self.runtime and self.runtime.exists():
            shutil.rmtree(self.runtime, ignore_errors=True)


def free_local_port() -> int:
    """A TCP port nobody listens on now (QEMU binds it a moment later; a clash fails the boot loudly)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_gdb(argv: list[str], port: int) -> None:
    """QEMU's gdb stub on 127.0.0.1:port, and a kernel without KASLR so System.map's addresses hold."""
    argv += ["-gdb", f"tcp:127.0.0.1:{port}"]
    at = argv.index("-append") + 1
    argv[at] += " nokaslr"


def gdb_hint(lab: Lab, name: str) -> str:
    kernel = lab.kernels[name]
    vmlinux = kernel.vmlinuz.parent / "vmlinux"
    kallsyms = lab.run.machine_dir(name) / "kallsyms" if lab.run else None
    where = (f"gdb -q {vmlinux} -ex 'target remote 127.0.0.1:{lab.gdb_ports[name]}'" if vmlinux.is_file()
             else f"gdb -q -ex 'target remote 127.0.0.1:{lab.gdb_ports[name]}'")
    symbols = (f"symbols: {vmlinux}" if vmlinux.is_file() else
               f"no vmlinux with debug info for {kernel.ref} (for a Debian kernel: lab kernel fetch --debug-symbols {kernel.ref})")
    return f"{name}: {where}\n  {symbols}\n  addresses: {kallsyms} (the running kernel's, nokaslr)"


def boot_summary(lab: Lab) -> str:
    lines = []
    for name, m in lab.machines.items():
        k = lab.kernels[name]
        lines.append(f"{name}: ssh port {m.ssh_port}, kernel {k.release}, ready in {lab.boot_seconds.get(name, 0):.1f} s")
        if name in lab.gdb_ports:
            lines.append(gdb_hint(lab, name))
    return "\n".join(lines)


def read_state(state_file: Path) -> dict | None:
    """A live lab's state.json, or None when it is unreadable or not what the lab writes."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("machines"), dict):
        return None
    if not all(isinstance(m, dict) for m in state["machines"].values()):
        return None
    return state


def machines_alive(runtime: Path, state: dict) -> bool:
    return any(processes.is_ours(m.get("pid"), str(runtime)) for m in state["machines"].values())


def reap_stale_runtimes() -> list[str]:
    """Runtime dirs whose owner died (lab killed): kill their QEMU processes, remove the dirs.
    Only processes whose command line names that runtime dir are killed."""
    cleaned = []
    for state_file in runtime_root().glob("*/state.json"):
        state = read_state(state_file)
        runtime = state_file.parent
        if state is None:
            continue
        owner_alive = processes.same_process(state.get("owner_pid"), state.get("owner_started"))
        if owner_alive or (state.get("detached") and machines_alive(runtime, state)):
            continue
        for m in state["machines"].values():
            processes.kill_if_ours(m.get("pid"), str(runtime))
        shutil.rmtree(runtime, ignore_errors=True)
        cleaned.append(runtime.name)
    return cleaned


def wait_while_up(lab: Lab, poll: float = 2.0) -> str | None:
    """Until Ctrl-C (the caller's KeyboardInterrupt) or a machine's QEMU exits: then a one-line
    account of it (a guest that panicked, or a QEMU that died, must not leave `lab up` waiting on a
    lab that is gone)."""
    while True:
        for name, machine in lab.machines.items():
            if not machine.alive():
                try:
                    crash = first_crash(machine.console_log.read_text(errors="replace"))
                except OSError:
                    crash = None
                return f"{name}: QEMU exited while the lab was up" + (f" (console: {crash.line})" if crash else "")
        time.sleep(poll)
