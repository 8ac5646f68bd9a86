"""Faults a real system meets, injected through QMP and the host's view of the guest's disks:

    link      a NIC's link down or up (QMP set_link): an RDMA or TCP path that flaps
    remove    an NVMe controller removed (QMP device_del) while I/O runs: a surprise unplug
    pi        protection information corrupted on the backing store: the guard, application or
              reference tag of one block flipped behind the guest's back
    stop      the guest stops answering (QMP stop): a hung VM, found by the lab within a deadline
    cont      the guest runs again (QMP cont)

Usable from scenarios (functions of a Lab) and from the CLI on a running lab (`lab fault MACHINE
KIND ...`). Every fault returns a record of what was done, when, and what QEMU answered; scenarios
put it in their results next to what the guest did."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError, UsageError
from lab.topology.model import Namespace

LOG = logging.getLogger(__name__)

KINDS = ("link", "remove", "pi", "stop", "cont")
PI_FIELDS = ("guard", "app", "ref")


@dataclass
class FaultRecord:
    machine: str
    kind: str
    target: str
    at: float = field(default_factory=time.time)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "kind": self.kind, "target": self.target,
                "at": time.strftime("%H:%M:%S", time.localtime(self.at)) + f".{int(self.at * 1000) % 1000:03d}", **self.detail}


def pi_location(ns: Namespace, lba: int, what: str) -> tuple[int, int]:
    """(byte offset in the namespace's backing file, length) of one PI field of one block.

    QEMU keeps the data of nlbas = size / (lba + ms) blocks first and their metadata after it
    (mset=0), ms bytes per block; the PI tuple is the last 8 (16-bit guard) or 16 (64-bit guard)
    bytes of the metadata unless pil=1 puts it first. Tuple: guard (2 or 8 bytes), application
    tag (2), reference tag (4, or 6 with the 64-bit guard)."""
    if not ns.pi:
        raise UsageError("this namespace has no protection information")
    if ns.mset:
        raise UsageError("extended LBAs (mset=1) interleave data and metadata; the lab corrupts separate metadata only")
    if what not in PI_FIELDS:
        raise UsageError(f"PI field {what!r}: choose {', '.join(PI_FIELDS)}")
    nlbas = ns.size // (ns.lba + ns.ms)
    if not 0 <= lba < nlbas:
        raise UsageError(f"block {lba} is outside the namespace (0-{nlbas - 1})")
    tuple_size = 16 if ns.pif == 2 else 8
    start = nlbas * ns.lba + lba * ns.ms + (0 if ns.pil else ns.ms - tuple_size)
    guard = 8 if ns.pif == 2 else 2
    offsets = {"guard": (0, guard), "app": (guard, 2), "ref": (guard + 2, tuple_size - guard - 2)}
    off, length = offsets[what]
    return start + off, length


def corrupt_pi(image: Path, ns: Namespace, lba: int, what: str = "guard") -> dict[str, Any]:
    """Flip every bit of one PI field of one block in the backing file (QEMU reads it from there)."""
    offset, length = pi_location(ns, lba, what)
    with open(image, "r+b") as f:
        f.seek(offset)
        before = f.read(length)
        if len(before) != length:
            raise LabError(f"{image}: too short for block {lba}'s metadata")
        after = bytes(b ^ 0xFF for b in before)
        f.seek(offset)
        f.write(after)
    return {"lba": lba, "field": what, "offset": offset, "before": before.hex(), "after": after.hex()}


def link(qmp_cmd, netdev: str, up: bool) -> dict[str, Any]:
    qmp_cmd("set_link", name=netdev, up=up)
    return {"netdev": netdev, "up": up}


def remove_device(qmp_cmd, device: str) -> dict[str, Any]:
    qmp_cmd("device_del", id=device)
    return {"device": device}


def wait_removed(qmp_cmd, device: str, timeout: float = 30.0) -> bool:
    """Whether QEMU finished unplugging `device` (it waits for the guest's acknowledgement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = qmp_cmd("qom-list", path="/machine/peripheral")
        if not any(entry.get("name") == device for entry in tree):
            return True
        time.sleep(0.5)
    return False


def stop(qmp_cmd) -> dict[str, Any]:
    qmp_cmd("stop")
    return {"status": qmp_cmd("query-status").get("status")}


def cont(qmp_cmd) -> dict[str, Any]:
    qmp_cmd("cont")
    return {"status": qmp_cmd("query-status").get("status")}


def inject_live(directory: Path, name: str, machine: dict[str, Any], kind: str, *, link_name: str | None = None, up: bool = False,
                down: bool = False, device: str | None = None, drive: str | None = None, lba: int = 0,
                pi_field: str = "guard") -> dict[str, Any]:
    """A fault in a machine of a lab that is up (`lab fault`), from its state: QMP through the
    machine's user monitor socket, PI corruption in its namespace image (which must be inside the
    lab's runtime directory after resolving: a state file naming runtime/../elsewhere is refused)."""
    from lab.live import qmp_call
    from lab.safepaths import inside

    socket_path = str(machine.get("qmp"))

    def qmp_cmd(command: str, **arguments: Any) -> Any:
        reply = qmp_call(socket_path, command, arguments)
        if "error" in reply:
            raise LabError(f"{name}: QMP {command}: {reply['error'].get('desc')}")
        return reply["return"]

    if kind == "link":
        if not link_name or up == down:
            raise UsageError("lab fault MACHINE link --link NAME (--down | --up)")
        return link(qmp_cmd, f"link-{link_name}", up)
    if kind == "remove":
        if not device:
            raise UsageError("lab fault MACHINE remove --device ID (an NVMe controller id of the topology, e.g. nvme0)")
        return remove_device(qmp_cmd, device)
    if kind == "pi":
        namespaces = machine.get("namespaces") or {}
        drive = drive or next(iter(namespaces), None)
        if drive not in namespaces:
            raise UsageError(f"--drive {drive}: {name} has {', '.join(namespaces) or 'no NVMe namespaces'}")
        entry = namespaces[drive]
        image = Path(str(entry.get("image")))
        if not inside(image, Path(directory)) or image.is_symlink() or not image.is_file():
            raise UsageError(f"{image} is not a namespace image in this lab's runtime directory {directory}")
        return corrupt_pi(image, Namespace.model_validate(entry["model"]), lba, pi_field)
    if kind == "stop":
        return stop(qmp_cmd)
    if kind == "cont":
        return cont(qmp_cmd)
    raise UsageError(f"fault kind {kind!r}: one of {', '.join(KINDS)}")
