"""Scenario options declared once, as pydantic fields with their validators and help; the CLI's
`lab run SCENARIO` flags, bundles and bisect all come from the same declaration.

    class Options(ScenarioOptions):
        duration: Seconds = opt(20.0, "seconds of I/O per mutating run")
        targets: list[Target] = opt(["xfs"], "repeatable", flag="--target")

A field becomes `--field-name` (or `flag=`), a list field is repeatable, a bool field with
`negate=` becomes a switch that turns it off. Values from the command line are strings; pydantic
turns them into the declared types and refuses what does not fit, so `--duration nan`,
`--use-cmb-sqes banana` and `--kernel ''` are one-line usage errors before anything starts."""

from __future__ import annotations

import argparse
import math
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from lab.errors import UsageError
from lab.kernels.resolve import kernel_ref
from lab.settings import Accel
from lab.units import parse_size
from lab.validation import format_loc

def _finite(value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise ValueError("must be a finite number")
    return value


KernelRef = Annotated[str, AfterValidator(kernel_ref)]
Seconds = Annotated[float, Field(gt=0, le=7 * 86400), AfterValidator(_finite)]


SizeBytes = Annotated[int, BeforeValidator(parse_size)]


def opt(default: Any = None, help: str = "", *, flag: str | None = None, metavar: str | None = None,
        negate: str | None = None, hidden: bool = False, **constraints: Any) -> Any:
    """A scenario option: its default, help text and CLI spelling, plus pydantic constraints."""
    extra: dict[str, Any] = {"help": help, "flag": flag, "metavar": metavar, "negate": negate, "hidden": hidden}
    if isinstance(default, list):
        return Field(default_factory=lambda: list(default), json_schema_extra=extra, **constraints)
    return Field(default=default, json_schema_extra=extra, **constraints)


class ScenarioOptions(BaseModel):
    """What every scenario takes: the kernels (one sub-run each), the topology and its parameters."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    kernels: list[KernelRef] = opt([], "kernel, repeatable: debian:X.Y, build:KEY, build:source=..., a name "
                                   "from lab-kernels.toml, or a bzImage path (default: the scenario's)",
                                   flag="--kernel", metavar="REF", max_length=16)
    topology: str | None = opt(None, "topology name or template path (default: the scenario's)", max_length=1024)
    params: dict[str, Any] = opt({}, "topology parameter KEY=VALUE, repeatable", flag="-p", metavar="KEY=VALUE")
    accel: Accel = opt("auto", "auto boots a KVM probe once and falls back to TCG; kvm or tcg force one "
                       "(default: $LAB_ACCEL or auto)")
    repeat: int = opt(1, "run the cases N times in each boot and report the failure rate with its 95 % interval "
                      "(default: 1)", metavar="N", ge=1, le=10000)
    max_subruns: int = opt(500, "refuse a run whose kernels and -p lists cross to more sub-runs (default: 500)",
                           metavar="N", ge=1, le=1000000)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _extra(field: Any) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _choices(annotation: Any) -> list[str] | None:
    inner = typing.get_args(annotation)[0] if _is_list(annotation) else annotation
    args = [a for a in typing.get_args(inner) if a is not type(None)]
    if typing.get_origin(inner) is not Literal and len(args) == 1:  # X | None
        inner = args[0]
    while typing.get_origin(inner) is Annotated:
        inner = typing.get_args(inner)[0]
    if typing.get_origin(inner) is Literal:
        return [str(v) for v in typing.get_args(inner)]
    return None


def add_arguments(parser: argparse.ArgumentParser, options: type[ScenarioOptions]) -> None:
    """One flag per field, from the field's declaration."""
    for name, field in options.model_fields.items():
        if name == "params":
            parser.add_argument("-p", "--param", action="append", dest="params", metavar="KEY=VALUE",
                                help="topology parameter (pi, pif, ms, lba, ns_size, ...), repeatable")
            continue
        extra = _extra(field)
        help_text = argparse.SUPPRESS if extra.get("hidden") else (extra.get("help") or "").replace("%", "%%")
        if _is_bool(field.annotation):
            if extra.get("negate"):
                parser.add_argument(extra["negate"], dest=name, action="store_const", const=False, help=help_text)
            else:
                parser.add_argument(extra.get("flag") or "--" + name.replace("_", "-"), dest=name,
                                    action="store_const", const=True, help=help_text)
            continue
        flag = extra.get("flag") or "--" + name.replace("_", "-")
        choices = _choices(field.annotation)
        metavar = extra.get("metavar") or ("{" + ",".join(choices) + "}" if choices else name.upper())
        parser.add_argument(flag, dest=name, action="append" if _is_list(field.annotation) else "store",
                            metavar=metavar, help=help_text)
    parser.set_defaults(_options=options)


def from_args(options: type[ScenarioOptions], args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> ScenarioOptions:
    """The options model from parsed flags (flags not given keep the declared defaults)."""
    from lab.topology.render import parse_params

    data: dict[str, Any] = dict(defaults or {})
    for name in options.model_fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "params":
            value = parse_params(value)
        data[name] = value
    return validate(options, data)


def validate(options: type[ScenarioOptions], data: dict[str, Any]) -> ScenarioOptions:
    """Options from a dict (flags, a bundle, a matrix cell): one-line errors that name the flag."""
    try:
        return options.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = first["loc"]
        field = options.model_fields.get(str(loc[0])) if loc else None
        flag = (_extra(field).get("negate") or _extra(field).get("flag") or "--" + str(loc[0]).replace("_", "-")) if field else format_loc(loc)
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            raise UsageError(f"unknown option {loc[0]!r}") from None
        shown = first.get("input")
        got = f" (got {shown!r})" if shown is not None and not isinstance(shown, (dict, list)) and len(repr(shown)) < 80 else ""
        raise UsageError(f"{flag}: {msg}{got}") from None
