"""What the command groups share: the topology, boot and lab-selection parent parsers, the -p
parameters, the acceleration choice and whole-number arguments."""

from __future__ import annotations

import argparse
from typing import Any

from lab.errors import UsageError
from lab.settings import ACCELS


def params(args: argparse.Namespace) -> dict[str, Any]:
    from lab.topology.render import parse_params

    return parse_params(getattr(args, "param", None))


def accel(value: str | None) -> str:
    from lab.settings import settings

    accel = value or settings().accel
    if accel not in ACCELS:
        raise UsageError(f"--accel {accel!r}: choose auto, kvm or tcg")
    return accel


def topology_parent(default: str | None = "nvme-pi") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if default:
        p.add_argument("topology", nargs="?", default=default, help=f"topology name or template path (default: {default})")
    else:
        p.add_argument("topology", help="topology name or template path")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="template parameter (repeatable, each name once)")
    return p


def boot_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--kernel", metavar="REF", help="debian:X.Y, build:KEY, a named kernel or a bzImage path (default: debian:7.3)")
    p.add_argument("--accel", choices=ACCELS, help="auto tests KVM by booting a probe and falls back to TCG "
                   "(default: $LAB_ACCEL or auto)")
    return p


def lab_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--lab", help="run id (or part of it) when several labs are up")
    return p


def whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    return value
