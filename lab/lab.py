"""A running topology: prepares images, kernels and disks, launches every machine, waits until each
answers over SSH, and tears everything down however the lab ends."""

from __future__ import annotations

import json
import os
import re
import tempfile
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lab import accel as accel_mod
from lab.errors import BootError, LabError
from lab.images import Image, create_overlay, ensure_image
from lab.kernels.initramfs import ensure_initramfs
from lab.kernels.kernel import Kernel
from lab.kernels.pvh import pvh_image
from lab.kernels.resolve import DEFAULT_KERNEL, resolve
from lab.machine import QemuMachine
from lab.paths import runtime_root
from lab.progress import info, step, warn
from lab.qemu_caps import probe
from lab.rundir import RunDir
from lab.sshkeys import ensure_key
from lab.topology.argv import Accel, BootFiles, machine_argv, namespace_drive_ids
from lab.topology.render import Rendered

BOOT_TIMEOUT_TCG = 240.0
BOOT_TIMEOUT_KVM = 60.0
# Multi-threaded TCG (QEMU 7.2) now and then oopses a guest on int3 while the kernel patches its
# text in early boot (seen in about 1 boot in 50 here); a fresh boot does not repeat it.
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
    machines: dict[str, QemuMachine] = field(default_factory=dict)
    kernels: dict[str, Kernel] = field(default_factory=dict)
    images: dict[str, Image] = field(default_factory=dict)
    chosen_accel: Accel | None = None
    accel_reason: str = ""
    boot_seconds: dict[str, float] = field(default_factory=dict)
    runtime: Path | None = None
    boot_retries: int = 0

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
    def start(self) -> None:
        topo = self.rendered.topology
        caps = probe()
        key_file, key_blob = ensure_key()
        if self.run is None:
            self.run = RunDir.create("up", self.rendered.name)
        # Unique per lab, short (unix socket paths), 0700: mkdtemp gives all three.
        label = re.sub(r"[^A-Za-z0-9]+", "-", self.rendered.name)[:16]
        self.runtime = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=runtime_root()))
        for name, machine in topo.machines.items():
            ref = self.kernel_ref or machine.kernel or DEFAULT_KERNEL
            if ref not in {k.ref for k in self.kernels.values()}:
                self.kernels[name] = resolve(ref)
            else:
                self.kernels[name] = next(k for k in self.kernels.values() if k.ref == ref)
            if machine.image not in self.images:
                self.images[machine.image] = ensure_image(machine.image)
        first = next(iter(self.kernels.values()))
        boot_image = {n: pvh_image(k.vmlinuz, k.sha256) or k.vmlinuz for n, k in self.kernels.items()}
        initrds = {n: ensure_initramfs(k) for n, k in self.kernels.items()}
        first_name = next(iter(self.kernels))
        self.chosen_accel, self.accel_reason = accel_mod.choose(
            self.accel, caps.binary, caps.version, boot_image[first_name], first.sha256, initrds[first_name]
        )
        info(f"acceleration: {self.accel_reason}")
        self.run.update(
            topology={"name": self.rendered.name, "template": str(self.rendered.template), "params": self.rendered.params,
                      "rendered": self.rendered.text, "model": topo.model_dump()},
            qemu={"binary": caps.binary, "version": caps.version},
            accel={"name": self.chosen_accel.name, "reason": self.accel_reason},
            kernels={n: k.identity() for n, k in self.kernels.items()},
            images={n: {"recipe_key": i.key, "sha256": i.meta.get("sha256"), "path": str(i.path)} for n, i in self.images.items()},
            runtime=str(self.runtime),
        )
        links = self._link_sockets()
        argvs = {}
        for name, machine in topo.machines.items():
            mdir = self.run.machine_dir(name)
            rdir = self.runtime / name
            rdir.mkdir()
            overlay = rdir / "root.qcow2"
            create_overlay(self.images[machine.image].path, overlay)
            ns_images = {}
            for drive, size in namespace_drive_ids(machine).items():
                ns_images[drive] = rdir / f"{drive}.img"
                with open(ns_images[drive], "wb") as f:
                    f.truncate(size)  # sparse: costs nothing until the guest writes
            kernel = self.kernels[name]
            files = BootFiles(
                kernel=boot_image[name], initrd=initrds[name], root_overlay=overlay, modules_image=kernel.modules_image,
                qmp_socket=rdir / "qmp.sock", console_log=mdir / "console.log", namespace_images=ns_images,
                link_sockets=links.get(name, {}), ssh_pubkey_blob=key_blob,
            )
            plan = machine_argv(topo, name, files, caps, self.chosen_accel)
            argvs[name] = plan.argv
            self.machines[name] = QemuMachine(name, plan.argv, files.qmp_socket, files.console_log,
                                              mdir / "qemu-stderr.log", key_file)
        self.run.update(argv=argvs)
        timeout = self.boot_timeout or float(os.environ.get("LAB_BOOT_TIMEOUT", 0)) or (BOOT_TIMEOUT_KVM if self.chosen_accel.name == "kvm" else BOOT_TIMEOUT_TCG)
        with step(f"booting {', '.join(self.machines)} ({self.chosen_accel.name}, {', '.join(sorted({k.ref for k in self.kernels.values()}))})") as st:
            for attempt in range(1, BOOT_ATTEMPTS + 1):
                errors = self._launch_and_wait(timeout)
                if not errors:
                    break
                panicked = [n for n in errors if _guest_panicked(self.machines[n].console_log)]
                if attempt == BOOT_ATTEMPTS or not panicked:
                    raise BootError("\n".join(errors.values()))
                # Multi-threaded TCG occasionally crashes a guest kernel while it patches its own
                # text (an int3 oops in early boot). That is the emulator, not the kernel under
                # test: boot everything once more from fresh overlays and say so.
                warn(f"guest kernel panicked during boot on {', '.join(panicked)} (console kept as "
                     f"console.attempt{attempt}.log); booting again")
                self.boot_retries += 1
                self.stop_machines()
                for name, m in self.machines.items():
                    m.console_log.rename(m.console_log.with_name(f"console.attempt{attempt}.log"))
                    overlay = self.runtime / name / "root.qcow2"
                    overlay.unlink(missing_ok=True)
                    create_overlay(self.images[topo.machines[name].image].path, overlay)
                    m.reset()
            st.suffix = " (" + ", ".join(f"{n} {s:.1f} s" for n, s in self.boot_seconds.items()) + ")"
        self.run.update(boot_seconds=self.boot_seconds, boot_retries=self.boot_retries)
        self._write_state()

    def _launch_and_wait(self, timeout: float) -> dict[str, str]:
        """Launch every machine, wait for all; machine -> error for those that did not come up."""
        for m in self.machines.values():
            m.launch(self.die_with_parent)
        self._write_state()
        errors: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=len(self.machines)) as pool:
            futures = {n: pool.submit(m.wait_ready, timeout) for n, m in self.machines.items()}
            for n, fut in futures.items():
                try:
                    self.boot_seconds[n] = round(fut.result(), 2)
                except BootError as exc:
                    errors[n] = str(exc)
        return errors

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
        state = {
            "owner_pid": os.getpid(),
            "detached": not self.die_with_parent,
            "run": str(self.run.path) if self.run else None,
            "topology": self.rendered.name,
            "key_file": str(ensure_key()[0]),
            "machines": {
                n: {"pid": m.pid, "ssh_port": m.ssh_port, "qmp": str(m.qmp_socket), "console": str(m.console_log)}
                for n, m in self.machines.items()
            },
        }
        (self.runtime / "state.json").write_text(json.dumps(state, indent=2))

    # -- use ----------------------------------------------------------------------------------
    def guest(self, name: str):
        if name not in self.machines:
            raise LabError(f"no machine {name!r}; machines: {', '.join(self.machines)}")
        return self.machines[name].guest

    # -- stop ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Shut every machine down, in parallel, then remove the runtime directory. Never raises."""
        self.stop_machines()
        if self.runtime and self.runtime.exists():
            shutil.rmtree(self.runtime, ignore_errors=True)


def boot_summary(lab: Lab) -> str:
    lines = []
    for name, m in lab.machines.items():
        k = lab.kernels[name]
        lines.append(f"{name}: ssh port {m.ssh_port}, kernel {k.release}, ready in {lab.boot_seconds.get(name, 0):.1f} s")
    return "\n".join(lines)


def reap_stale_runtimes() -> list[str]:
    """Runtime dirs whose owner died (lab killed): kill their QEMU processes, remove the dirs."""
    cleaned = []
    for state_file in runtime_root().glob("*/state.json"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        machines_alive = any(_pid_alive(m.get("pid")) for m in state.get("machines", {}).values())
        if _pid_alive(state.get("owner_pid")) or (state.get("detached") and machines_alive):
            continue
        for m in state.get("machines", {}).values():
            pid = m.get("pid")
            if pid and _pid_alive(pid) and _is_qemu(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(state_file.parent, ignore_errors=True)
        cleaned.append(state_file.parent.name)
    return cleaned


def _guest_panicked(console: Path) -> bool:
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return False
    return "Kernel panic" in text and "LAB-READY" not in text


def _pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True


def _is_qemu(pid: int) -> bool:
    try:
        return "qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def wait_forever() -> None:
    while True:
        time.sleep(3600)
