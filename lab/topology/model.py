"""The typed model a rendered topology document is validated into.

Field names follow QEMU's property names where one exists (ms, mset, pi, pil, pif, cmb_size_mb),
so that what a developer reads in QEMU's nvme documentation maps one to one.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from lab.units import parse_size
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

NAME_RE = r"^[a-z][a-z0-9-]{0,14}$"


Size = Annotated[int, BeforeValidator(parse_size)]


def _accepts(annotation: Any, kind: type) -> bool:
    """Whether a field's annotation admits values of `kind` (through Optional, Annotated, unions)."""
    if annotation is kind:
        return True
    return any(_accepts(arg, kind) for arg in typing.get_args(annotation) if not isinstance(arg, (int, str)))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic takes True for the literal 1 and 2.0 for 2: `pi: true` would be PI type 1.
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        if isinstance(value, bool) and not _accepts(field.annotation, bool):
            raise ValueError("a number or a name is needed here, not true/false")
        if isinstance(value, float) and not _accepts(field.annotation, float):
            raise ValueError("a whole number is needed here")
        return value


class Namespace(Strict):
    """An nvme-ns device. Defaults give a plain 4 KiB namespace without metadata."""

    nsid: int = Field(default=0, ge=0, le=1024, description="0 = numbered in order")
    size: Size = Field(default=1 << 30, ge=1 << 20, le=1 << 40)
    lba: Literal[512, 4096] = 4096
    ms: Literal[0, 8, 16, 64] = 0
    mset: Literal[0, 1] = 0
    pi: Literal[0, 1, 2, 3] = 0
    pil: Literal[0, 1] = 0
    pif: Literal[0, 2] = Field(default=0, description="0 = 16-bit guard (T10 DIF), 2 = 64-bit guard")

    @property
    def integrity_format(self) -> str | None:
        """What Linux shows in /sys/block/DEV/integrity/format for this namespace. Types 1 and 2
        share one profile (both check the reference tag), so type 2 reads as TYPE1."""
        if not self.pi:
            return None
        kind = 3 if self.pi == 3 else 1
        return f"T10-DIF-TYPE{kind}-CRC" if self.pif == 0 else f"EXT-DIF-TYPE{kind}-CRC64"

    @model_validator(mode="after")
    def _pi_needs_metadata(self) -> "Namespace":
        # Protection information lives in the metadata: 8 bytes for the 16-bit guard, 16 for 64-bit.
        need = 16 if self.pif == 2 else 8
        if self.pi and self.ms < need:
            raise ValueError(f"pi={self.pi} with pif={self.pif} needs ms >= {need} (got ms={self.ms})")
        if self.pif == 2 and self.lba == 512 and self.pi:
            raise ValueError("the 64-bit guard format (pif=2) needs lba=4096 in QEMU")
        return self


PortName = Annotated[str, Field(pattern=NAME_RE)]


class Nvme(Strict):
    """An NVMe controller, placed on its own root port, on the root complex, or on a switch."""

    id: Annotated[str, Field(pattern=r"^nvme[0-9]{1,2}$")]
    serial: str = Field(default="", max_length=20, pattern=r"^[A-Za-z0-9._-]*$")
    cmb_size_mb: int = Field(default=0, ge=0, le=1024)
    legacy_cmb: bool = False
    bus: str = Field(
        default="root-port",
        description="'root-port' (own pcie-root-port), 'root-complex' (directly on pcie.0) or a switch name",
    )
    port: int | None = Field(default=None, ge=0, le=31, description="downstream port on a switch")
    namespaces: list[Namespace] = Field(default_factory=list, max_length=16)


class Switch(Strict):
    """A PCIe switch: root port -> x3130-upstream -> xio3130-downstream ports."""

    name: PortName
    ports: int = Field(default=4, ge=1, le=32)


class Nic(Strict):
    """A NIC on a private link between two machines."""

    link: PortName
    address: str = Field(description="IPv4 address with prefix, e.g. 192.168.100.1/24")
    rdma: Literal["rxe", "siw", "none"] = "none"
    mtu: int = Field(default=1500, ge=576, le=9000)

    @field_validator("address")
    @classmethod
    def _cidr(cls, value: str) -> str:
        import ipaddress

        try:
            iface = ipaddress.IPv4Interface(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 address with prefix: {exc}") from None
        if "/" not in value:
            raise ValueError(f"{value!r} needs a prefix length, e.g. {value}/24")
        return str(iface)


class Share(Strict):
    """A host directory shared into the guest over virtio-9p (QEMU's -fsdev local). The lab makes
    it in the run directory, so what the guest wrote there is kept and the host can check it."""

    tag: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,30}$")]
    readonly: bool = False


class Machine(Strict):
    cpus: int = Field(default=2, ge=1, le=64)
    memory: Size = Field(default=2 << 30, ge=256 << 20, le=64 << 30)
    kernel: str | None = Field(default=None, description="kernel reference; --kernel overrides")
    image: str = "lab-trixie"
    append: str = Field(default="", description="extra kernel arguments")
    cpu_model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+(,[A-Za-z0-9_.-]+(=[A-Za-z0-9_.-]+)?)*$",
                                  description="QEMU -cpu model with optional properties (EPYC, max,family=23); "
                                              "default: max (TCG) or host (KVM)")
    init: Literal["lean", "systemd"] = "lean"
    firmware: Literal["qboot", "seabios"] = Field(
        default="qboot", description="qboot reaches the kernel about a second sooner than SeaBIOS under TCG"
    )
    use_cmb_sqes: bool | None = Field(
        default=None, description="nvme.use_cmb_sqes module parameter; None keeps the kernel default"
    )
    switches: list[Switch] = Field(default_factory=list, max_length=8)
    nvme: list[Nvme] = Field(default_factory=list, max_length=16)
    nics: list[Nic] = Field(default_factory=list, max_length=8)
    shares: list[Share] = Field(default_factory=list, max_length=8)
    lab_inside: bool = Field(default=False, description="after boot, put the lab (wheel, venv, this run's images and "
                                                        "kernels) into the machine: it runs its own guests, with KVM "
                                                        "where the CPU model offers svm or vmx")

    @model_validator(mode="after")
    def _lab_inside_has_its_share(self) -> "Machine":
        if self.lab_inside and not any(s.tag == "labcache" and s.readonly for s in self.shares):
            raise ValueError("lab_inside needs a read-only share with tag 'labcache' (the lab's wheel and cache reach the guest through it)")
        return self


class Link(Strict):
    """A private point-to-point Ethernet link (unix-socket dgram netdevs, no host address)."""

    name: PortName


class Topology(Strict):
    name: str
    description: str = ""
    machines: dict[Annotated[str, Field(pattern=NAME_RE)], Machine] = Field(min_length=1)
    links: list[Link] = Field(default_factory=list)
