"""Template -> YAML -> validated Topology, with one-line errors that name the template and path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml
from pydantic import ValidationError

from lab.errors import UsageError
from lab.paths import topologies_dir
from lab.topology.checks import check_references
from lab.topology.model import Topology

SUFFIX = ".yaml.j2"


class TopologyError(UsageError):
    pass


@dataclass(frozen=True)
class Rendered:
    name: str
    template: Path
    params: dict[str, Any]
    text: str
    topology: Topology


def available(directory: Path | None = None) -> dict[str, Path]:
    directory = directory or topologies_dir()
    return {p.name[: -len(SUFFIX)]: p for p in sorted(directory.glob(f"*{SUFFIX}"))}


def find_template(name: str, directory: Path | None = None) -> Path:
    """A shipped name, or a path to a template file of the user's own."""
    as_path = Path(name)
    if as_path.suffix in (".j2", ".yaml", ".yml") and as_path.exists():
        return as_path
    found = available(directory)
    if name not in found:
        raise TopologyError(f"unknown topology {name!r}; shipped: {', '.join(found) or 'none'}")
    return found[name]


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """-p key=value pairs; values are read as YAML scalars so pi=1 is an int and x=on a bool."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"parameter {pair!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        params[key] = value if isinstance(value, (int, float, str, bool)) or value is None else raw
    return params


def _environment(directory: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def template_parameters(template: Path) -> list[str]:
    """The variables a template reads: the only names -p may set."""
    env = _environment(template.parent)
    ast = env.parse(template.read_text())
    return sorted(jinja2.meta.find_undeclared_variables(ast))


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _describe_validation(err: ValidationError) -> str:
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = format_loc(tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif "input" in first and first["type"] not in ("model_type", "dict_type"):
        shown = repr(first["input"])
        if len(shown) < 60:
            msg += f" (got {shown})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}"


def render(name: str, params: dict[str, Any] | None = None, directory: Path | None = None) -> Rendered:
    template = find_template(name, directory)
    label = _label(template)
    params = dict(params or {})
    known = template_parameters(template)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise TopologyError(
            f"{label}: unknown parameter {', '.join(unknown)}; this template takes: {', '.join(known) or 'none'}"
        )
    env = _environment(template.parent)
    try:
        text = env.get_template(template.name).render(**params)
    except jinja2.UndefinedError as exc:
        raise TopologyError(f"{label}: {exc.message} (set it with -p NAME=VALUE)") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TopologyError(f"{label}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TopologyError(f"{label}: {exc}") from None
    return Rendered(template.name[: -len(SUFFIX)], template, params, text, validate_text(text, label))


def validate_text(text: str, label: str) -> Topology:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1} of the rendered YAML" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TopologyError(f"{label}:{where}: YAML error: {problem}") from None
    if not isinstance(document, dict):
        raise TopologyError(f"{label}: the rendered document must be a mapping with 'name' and 'machines'")
    try:
        topology = Topology.model_validate(document)
    except ValidationError as exc:
        raise TopologyError(f"{label}: {_describe_validation(exc)}") from None
    problem = check_references(topology)
    if problem:
        raise TopologyError(f"{label}: {problem}")
    return topology


def _label(template: Path) -> str:
    try:
        return str(template.resolve().relative_to(topologies_dir().resolve().parent))
    except ValueError:
        return str(template)
