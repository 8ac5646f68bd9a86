"""Turn a validated machine description into the exact QEMU argv. Pure: no files, no processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lab.agent import PORT_NAME as AGENT_PORT
from lab.errors import UsageError
from lab.qemu_caps import QemuCaps
from lab.topology.checks import switch_port_of
from lab.topology.model import Machine, Topology

MGMT_GUEST_ADDR = "10.0.2.15/24"
MGMT_GATEWAY = "10.0.2.2"


@dataclass(frozen=True)
class BootFiles:
    """What the lab prepared for one machine before launch."""

    kernel: Path
    initrd: Path
    root_overlay: Path
    modules_image: Path | None
    qmp_socket: Path
    console_log: Path
    namespace_images: dict[str, Path]  # drive id -> raw image
    link_sockets: dict[str, tuple[Path, Path]]  # link name -> (local, remote)
    ssh_pubkey_blob: str  # base64 part of the public key, passed on the kernel command line
    qmp_user_socket: Path | None = None  # a second monitor for `lab qmp` while the lab holds the first
    shares: dict[str, Path] = field(default_factory=dict)  # 9p mount tag -> host directory
    agent_socket: Path | None = None  # the guest agent's virtio-serial port, the lab's command channel


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    cpu: str | None = None  # the model the KVM probe booted with

    def argv(self, cpu_model: str | None) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", cpu_model or self.cpu or "host"]
        return ["-accel", "tcg,thread=multi", "-cpu", cpu_model or "max"]


QBOOT = Path("/usr/share/qemu/qboot.rom")


@dataclass
class MachinePlan:
    name: str
    argv: list[str]
    cmdline: str
    namespace_sizes: dict[str, int] = field(default_factory=dict)  # drive id -> bytes


def controller_serial(machine: str, ctrl) -> str:
    """The serial a controller shows the guest (the NVMe field holds 20 characters)."""
    return (ctrl.serial or f"lab-{machine}-{ctrl.id}")[:20]


def dry_run_files(topology: Topology, name: str) -> BootFiles:
    """Placeholder paths for rendering a machine's argv without preparing anything."""
    run = Path("$RUN")
    machine = topology.machines[name]
    links = {}
    for nic in machine.nics:
        peer = next(m for m, mm in topology.machines.items() if m != name and any(n.link == nic.link for n in mm.nics))
        links[nic.link] = (run / "links" / f"{nic.link}.{name}", run / "links" / f"{nic.link}.{peer}")
    return BootFiles(
        kernel=Path("$KERNEL"), initrd=Path("$INITRD"), root_overlay=run / name / "root.qcow2",
        modules_image=Path("$MODULES"), qmp_socket=run / name / "qmp.sock", console_log=run / name / "console.log",
        namespace_images={d: run / name / f"{d}.img" for d in namespace_drive_ids(machine)},
        link_sockets=links, ssh_pubkey_blob="$KEY", shares={s.tag: run / "shares" / name / s.tag for s in machine.shares},
        agent_socket=run / name / "agent.sock",
    )


def opt_path(path: Path | str) -> str:
    """A host path inside a QEMU option string: a comma there would start a new option."""
    return str(path).replace(",", ",,")


def mac_address(machine_index: int, nic_index: int) -> str:
    # Locally administered, QEMU's OUI; unique per (machine, nic) within one lab.
    return f"52:54:00:4c:{machine_index:02x}:{nic_index:02x}"


def namespace_drive_ids(machine: Machine) -> dict[str, int]:
    """drive id -> size, one per namespace, in document order."""
    out: dict[str, int] = {}
    for ctrl in machine.nvme:
        for j, ns in enumerate(ctrl.namespaces):
            out[f"{ctrl.id}n{ns.nsid or j + 1}"] = ns.size
    return out


def _prop_check(caps: QemuCaps, device: str, prop: str, path: str) -> None:
    if caps.properties.get(device) and not caps.has(device, prop):
        raise UsageError(
            f"{path}: this QEMU ({caps.version}) has no {device} property {prop!r}; "
            f"it has: {', '.join(sorted(p for p in caps.properties[device] if not p.startswith('x-'))[:40])}"
        )


def check_cpu_model(caps: QemuCaps, model: str | None, path: str) -> None:
    if model is None or not caps.cpu_models:
        return
    name = model.split(",", 1)[0]
    if name not in caps.cpu_models:
        close = sorted(m for m in caps.cpu_models if m.lower().startswith(name[:3].lower()))[:8]
        raise UsageError(f"{path}: this QEMU ({caps.version}) has no CPU model {name!r}"
                         + (f"; similar: {', '.join(close)}" if close else "; 'qemu-system-x86_64 -cpu help' lists them"))


def agent_argv(socket: Path | None) -> list[str]:
    """The guest agent's port: virtio-serial (virtio_console is built into Debian's kernels and the
    lab's), named as qemu-ga expects, its host end a unix socket in the runtime directory."""
    if socket is None:
        return []
    return [
        "-chardev", f"socket,id=lab-agent,path={opt_path(socket)},server=on,wait=off",
        "-device", "virtio-serial-pci,id=lab-serial",
        "-device", f"virtserialport,bus=lab-serial.0,chardev=lab-agent,name={AGENT_PORT}",
    ]


def kernel_cmdline(topology: Topology, name: str, files: BootFiles) -> str:
    machine = topology.machines[name]
    index = list(topology.machines).index(name)
    parts = [
        "console=ttyS0,115200", "quiet",
        "panic=-1",  # with -no-reboot a panic ends QEMU instead of hanging the lab
        "rdinit=/init",
        "random.trust_cpu=on",
        "mitigations=off",
        # The crypto API's self-tests of every algorithm the kernel registers: 0.6 s of the packaged
        # kernels' boot under TCG here, and nothing the lab tests (PI guards use lib/crc, not the API).
        "cryptomgr.notests",
        # No address-space randomisation in the guest's processes: TCG keys its translated code by
        # virtual address, so with ASLR every exec translates bash, libc and ld.so again; without it
        # the translations are reused (bash -c true: 260-360 ms -> 80-120 ms on a loaded host here).
        # What the lab tests does not depend on where a mapping lands within its page alignment.
        "norandmaps",
        "no_timer_check",
        "8250.nr_uarts=1",
        f"lab.host={name}",
        f"lab.init={machine.init}",
        f"lab.key={files.ssh_pubkey_blob}",
        f"lab.nic={mac_address(index, 0)},mgmt,{MGMT_GUEST_ADDR},{MGMT_GATEWAY}",
    ]
    for i, nic in enumerate(machine.nics, start=1):
        parts.append(f"lab.nic={mac_address(index, i)},{nic.link},{nic.address},,{nic.mtu},{nic.rdma}")
    if machine.use_cmb_sqes is not None:
        parts.append(f"nvme.use_cmb_sqes={'1' if machine.use_cmb_sqes else '0'}")
    if machine.append:
        parts.append(machine.append)
    return " ".join(p for p in parts if p)


def machine_argv(topology: Topology, name: str, files: BootFiles, caps: QemuCaps, accel: Accel) -> MachinePlan:
    """The machine's whole QEMU command line, in the order QEMU reads it: the machine itself, its
    disks, its NICs and shares, then the PCIe tree (switches, root ports) and the NVMe devices."""
    machine = topology.machines[name]
    index = list(topology.machines).index(name)
    cmdline = kernel_cmdline(topology, name, files)
    check_cpu_model(caps, machine.cpu_model, f"machines.{name}.cpu_model")
    argv = [*_base_argv(machine, name, files, caps, accel, cmdline), *_network_argv(machine, index, files),
            *_share_argv(machine, files)]
    chassis = _Chassis()
    argv += _switch_argv(machine, chassis)
    nvme, sizes = _nvme_argv(topology, name, files, caps, chassis)
    return MachinePlan(name=name, argv=argv + nvme, cmdline=cmdline, namespace_sizes=sizes)


class _Chassis:
    """PCIe chassis numbers, one per root port or switch level, handed out in order."""

    def __init__(self) -> None:
        self.next = 1

    def take(self) -> int:
        self.next += 1
        return self.next - 1


def _base_argv(machine: Machine, name: str, files: BootFiles, caps: QemuCaps, accel: Accel, cmdline: str) -> list[str]:
    argv = [
        caps.binary,
        "-name", f"lab-{name},debug-threads=on",
        "-machine", "q35",
        *accel.argv(machine.cpu_model),
        "-smp", str(machine.cpus),
        "-m", f"{machine.memory >> 20}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-qmp", f"unix:{opt_path(files.qmp_socket)},server=on,wait=off",
        *(["-qmp", f"unix:{opt_path(files.qmp_user_socket)},server=on,wait=off"] if files.qmp_user_socket else []),
        "-chardev", f"file,id=console,path={opt_path(files.console_log)}",
        "-serial", "chardev:console",
        *(["-bios", str(QBOOT)] if machine.firmware == "qboot" else []),
        "-kernel", str(files.kernel),
        "-initrd", str(files.initrd),
        "-append", cmdline,
        "-device", "virtio-rng-pci",
        # The guest kernel publishes its vmcoreinfo here, so `lab dump` writes a vmcore drgn and
        # crash can open without being told the kernel's layout (KASLR offset, page tables).
        "-device", "vmcoreinfo",
        *agent_argv(files.agent_socket),
        # Root: a copy-on-write overlay over the read-only base image.
        "-drive", f"file={opt_path(files.root_overlay)},format=qcow2,if=none,id=root,discard=unmap",
        "-device", "virtio-blk-pci,drive=root,serial=lab-root",
    ]
    if files.modules_image:
        argv += [
            "-drive", f"file={opt_path(files.modules_image)},format=raw,if=none,id=modules,readonly=on",
            "-device", "virtio-blk-pci,drive=modules,serial=lab-modules",
        ]
    return argv


def _network_argv(machine: Machine, index: int, files: BootFiles) -> list[str]:
    """The management NIC (user networking, SSH forwarded from loopback) and one NIC per private link."""
    argv = [
        "-netdev", "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:0-:22",
        "-device", f"virtio-net-pci,netdev=mgmt,mac={mac_address(index, 0)}",
    ]
    for i, nic in enumerate(machine.nics, start=1):
        local, remote = files.link_sockets[nic.link]
        netdev = f"link-{nic.link}"
        argv += [
            "-netdev",
            f"dgram,id={netdev},local.type=unix,local.path={opt_path(local)},remote.type=unix,remote.path={opt_path(remote)}",
            "-device", f"virtio-net-pci,netdev={netdev},mac={mac_address(index, i)}",
        ]
    return argv


def _share_argv(machine: Machine, files: BootFiles) -> list[str]:
    argv: list[str] = []
    for share in machine.shares:
        fsdev = f"fs-{share.tag}"
        argv += [
            "-fsdev", f"local,id={fsdev},path={opt_path(files.shares[share.tag])},security_model=none"
                      + (",readonly=on" if share.readonly else ""),
            "-device", f"virtio-9p-pci,fsdev={fsdev},mount_tag={share.tag}",
        ]
    return argv


def _switch_argv(machine: Machine, chassis: _Chassis) -> list[str]:
    """Each PCIe switch: a root port, its upstream port, and its downstream ports."""
    argv: list[str] = []
    for sw in machine.switches:
        argv += [
            "-device", f"pcie-root-port,id={sw.name}-rp,bus=pcie.0,chassis={chassis.take()},slot=0",
            "-device", f"x3130-upstream,id={sw.name}-up,bus={sw.name}-rp",
        ]
        downstream = chassis.take()
        for port in range(sw.ports):
            argv += ["-device", f"xio3130-downstream,id={sw.name}-dp{port},bus={sw.name}-up,chassis={downstream},slot={port}"]
    return argv


def _nvme_argv(topology: Topology, name: str, files: BootFiles, caps: QemuCaps, chassis: _Chassis) -> tuple[list[str], dict[str, int]]:
    """Every NVMe controller on its bus (the root complex, a root port of its own, or a switch's
    downstream port) with its namespaces; the namespace sizes by drive id."""
    machine = topology.machines[name]
    base = f"machines.{name}"
    argv: list[str] = []
    placement = switch_port_of(topology, name)
    sizes: dict[str, int] = {}
    for i, ctrl in enumerate(machine.nvme):
        path = f"{base}.nvme[{i}]"
        if ctrl.bus == "root-port":
            argv += ["-device", f"pcie-root-port,id={ctrl.id}-rp,bus=pcie.0,chassis={chassis.take()},slot=0"]
            bus = f"{ctrl.id}-rp"
        elif ctrl.bus == "root-complex":
            bus = "pcie.0"
        else:
            switch, port = placement[ctrl.id]
            bus = f"{switch}-dp{port}"
        props = [f"nvme,id={ctrl.id}", f"bus={bus}", f"serial={controller_serial(name, ctrl)}"]
        if ctrl.cmb_size_mb:
            _prop_check(caps, "nvme", "cmb_size_mb", f"{path}.cmb_size_mb")
            props.append(f"cmb_size_mb={ctrl.cmb_size_mb}")
        if ctrl.legacy_cmb:
            _prop_check(caps, "nvme", "legacy-cmb", f"{path}.legacy_cmb")
            props.append("legacy-cmb=on")
        argv += ["-device", ",".join(props)]
        for j, ns in enumerate(ctrl.namespaces):
            nsid = ns.nsid or j + 1
            drive = f"{ctrl.id}n{nsid}"
            sizes[drive] = ns.size
            argv += ["-drive", f"file={opt_path(files.namespace_images[drive])},format=raw,if=none,id={drive},aio=threads"]
            nsprops = [f"nvme-ns,drive={drive}", f"bus={ctrl.id}", f"nsid={nsid}", f"logical_block_size={ns.lba}",
                       f"physical_block_size={ns.lba}"]
            for prop in ("ms", "mset", "pi", "pil", "pif"):
                value = getattr(ns, prop)
                if value:
                    _prop_check(caps, "nvme-ns", prop, f"{path}.namespaces[{j}].{prop}")
                    nsprops.append(f"{prop}={value}")
            argv += ["-device", ",".join(nsprops)]
    return argv, sizes
