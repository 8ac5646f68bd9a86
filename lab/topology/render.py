"""Template -> YAML -> validated Topology, with one-line errors that name the template and path.

Templates (shipped ones, the user's, and those inside bundles) render in Jinja's immutable sandbox:
a template cannot reach Python internals, files outside its own directory, or the host. Parameter
values reach the template as plain data: numbers, booleans, or short strings of characters that
cannot start a new YAML key or document, so `-p` can change a value but never the structure."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import yaml
from pydantic import ValidationError

from lab.errors import UsageError
from lab.paths import topologies_dir
from lab.topology.checks import check_references
from lab.topology.model import Topology
from lab.validation import describe

SUFFIX = ".yaml.j2"
MAX_TEMPLATE_BYTES = 256 << 10
MAX_RENDERED_BYTES = 1 << 20
MAX_NAME = 200
# A parameter string may hold what sizes, CPU models, placements and paths need, and nothing that
# YAML reads as structure: no whitespace or newline, no quotes, no '#', no flow brackets.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9/._][A-Za-z0-9._+,=/@:-]{0,199}$")
_SAFE_RAW = re.compile(r"^[A-Za-z0-9._+,=/@:-]{0,200}$")
_PLAIN = ("a value is a number, true/false, or letters, digits and . _ + , = / @ : - (not first), "
          "at most 200 characters: no spaces, quotes or newlines")


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
    if not name or len(name) > MAX_NAME or "\0" in name:
        raise TopologyError(f"topology name {name[:40]!r}{'...' if len(name) > 40 else ''}: not a name or a path "
                            f"(empty, longer than {MAX_NAME} characters, or with a NUL)")
    as_path = Path(name)
    if as_path.suffix in (".j2", ".yaml", ".yml") or "/" in name:
        if not as_path.exists():
            raise TopologyError(f"topology template {name}: no such file")
        if not as_path.is_file():
            raise TopologyError(f"topology template {name}: not a file")
        return as_path
    found = available(directory)
    if not found:
        raise TopologyError(f"no topologies found in {directory or topologies_dir()} (an install without the lab's data? "
                            f"LAB_TOPOLOGIES names another directory)")
    if name not in found:
        raise TopologyError(f"unknown topology {name!r}; shipped: {', '.join(found)}")
    return found[name]


def parse_value(key: str, raw: str) -> Any:
    """One -p value: a YAML scalar (1 -> int, on -> bool, 2G -> str), checked to be plain data."""
    if not _SAFE_RAW.match(raw):
        raise UsageError(f"parameter {key}={raw[:60]!r}: {_PLAIN}")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)) or value is None:
        value = raw
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise UsageError(f"parameter {key}={raw!r}: not a finite number")
    if isinstance(value, str) and value and not _SAFE_VALUE.match(value):
        raise UsageError(f"parameter {key}={raw[:60]!r}: {_PLAIN}")
    return value


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """-p key=value pairs; values are read as YAML scalars so pi=1 is an int and x=on a bool."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier() or len(key) > 64:
            raise UsageError(f"parameter {pair[:60]!r} is not key=value")
        if key in params:
            raise UsageError(f"parameter {key} is given twice (-p {key}=...); give each parameter once")
        params[key] = parse_value(key, raw)
    return params


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters from a file (a bundle, a matrix) get the same checks as -p values."""
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise UsageError(f"parameter name {key!r} is not a name")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
                raise UsageError(f"parameter {key}: not a finite number")
            continue
        if not isinstance(value, str) or (value and not _SAFE_VALUE.match(value)):
            raise UsageError(f"parameter {key}={str(value)[:60]!r}: not a plain number, boolean or simple string")
    return params


def _environment(directory: Path) -> jinja2.Environment:
    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _read_template(template: Path, label: str) -> str:
    try:
        data = template.read_bytes()
    except OSError as exc:
        raise TopologyError(f"{label}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise TopologyError(f"{label}: {len(data)} bytes; a topology template is at most {MAX_TEMPLATE_BYTES >> 10} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TopologyError(f"{label}: not a text file (not UTF-8)") from None
    if "\0" in text:
        raise TopologyError(f"{label}: not a text file (contains NUL bytes)")
    return text


def template_parameters(template: Path) -> list[str]:
    """The variables a template reads: the only names -p may set."""
    label = _label(template)
    env = _environment(template.parent)
    try:
        ast = env.parse(_read_template(template, label))
    except jinja2.TemplateSyntaxError as exc:
        raise TopologyError(f"{label}:{exc.lineno}: template syntax error: {exc.message}") from None
    return sorted(jinja2.meta.find_undeclared_variables(ast))


def render(name: str, params: dict[str, Any] | None = None, directory: Path | None = None) -> Rendered:
    template = find_template(name, directory)
    label = _label(template)
    params = check_params(dict(params or {}))
    known = template_parameters(template)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise TopologyError(
            f"{label}: unknown parameter {', '.join(unknown)}; this template takes: {', '.join(known) or 'none'}"
        )
    env = _environment(template.parent)
    try:
        text = env.from_string(_read_template(template, label)).render(**params)
    except jinja2.UndefinedError as exc:
        raise TopologyError(f"{label}: {exc.message} (set it with -p NAME=VALUE)") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TopologyError(f"{label}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.sandbox.SecurityError as exc:
        raise TopologyError(f"{label}: refused by the template sandbox: {exc}") from None
    except jinja2.TemplateNotFound as exc:
        raise TopologyError(f"{label}: includes {exc.name!r}, which is not a template next to it") from None
    except jinja2.TemplateError as exc:
        raise TopologyError(f"{label}: {exc}") from None
    except RecursionError:
        raise TopologyError(f"{label}: the template recurses without end (an include or macro calls itself)") from None
    except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, OverflowError, MemoryError) as exc:
        raise TopologyError(f"{label}: the template raised {exc.__class__.__name__}: {str(exc)[:120]}") from None
    if len(text) > MAX_RENDERED_BYTES:
        raise TopologyError(f"{label}: renders to {len(text)} bytes; a topology is at most {MAX_RENDERED_BYTES >> 10} KiB")
    return Rendered(template.name[: -len(SUFFIX)] if template.name.endswith(SUFFIX) else template.stem,
                    template, params, text, validate_text(text, label))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def validate_text(text: str, label: str) -> Topology:
    try:
        document = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1} of the rendered YAML" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TopologyError(f"{label}:{where}: YAML error: {problem}") from None
    except RecursionError:
        raise TopologyError(f"{label}: the rendered YAML nests too deeply") from None
    if not isinstance(document, dict):
        raise TopologyError(f"{label}: the rendered document must be a mapping with 'name' and 'machines'")
    try:
        topology = Topology.model_validate(document)
    except ValidationError as exc:
        raise TopologyError(f"{label}: {describe(exc)}") from None
    problem = check_references(topology)
    if problem:
        raise TopologyError(f"{label}: {problem}")
    return topology


def _label(template: Path) -> str:
    try:
        return str(template.resolve().relative_to(topologies_dir().resolve().parent))
    except ValueError:
        return str(template)
