"""Kernel configuration from fragments: the lab's own (kernel/fragments) plus the user's, applied on
top of allnoconfig, then checked: every option a fragment asked for must be in the final .config,
and one that did not stick is reported with the dependency that kept it out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.errors import UsageError
from lab.paths import repo_dir

FRAGMENTS_DIR = repo_dir() / "kernel" / "fragments"
# The lab's fragments, in the order they are merged (later wins).
DEFAULT_FRAGMENTS = ("base", "nvme-pi", "p2pdma", "xfs", "nfs-rdma", "9p")

_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Fragment:
    name: str
    text: str


def fragment(spec: str) -> Fragment:
    """A lab fragment by name (kernel/fragments/NAME.config) or a path to the user's own."""
    path = Path(spec).expanduser()
    if not path.is_file() and "/" not in spec:
        path = FRAGMENTS_DIR / f"{spec.removesuffix('.config')}.config"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in FRAGMENTS_DIR.glob("*.config")))
        raise UsageError(f"config fragment {spec!r}: no such file (the lab's fragments: {known})")
    text = path.read_text()
    parse_config(text, origin=str(path))  # one-line error on a malformed line, before anything runs
    return Fragment(spec if path.parent != FRAGMENTS_DIR else path.stem, text)


def default_fragments() -> list[Fragment]:
    return [fragment(name) for name in DEFAULT_FRAGMENTS]


def parse_config(text: str, origin: str = "config") -> dict[str, str]:
    """CONFIG_X=value lines and '# CONFIG_X is not set' (as 'n'); other comments ignored."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = _SET_RE.match(line)
        if m:
            values[m.group(1)] = m.group(2)
            continue
        m = _UNSET_RE.match(line)
        if m:
            values[m.group(1)] = "n"
            continue
        if line.startswith("#"):
            continue
        raise UsageError(f"{origin}:{number}: not a kernel config line: {line!r}")
    return values


def merge(fragments: list[Fragment]) -> dict[str, str]:
    """Requested values, later fragments overriding earlier ones (as merge_config.sh does)."""
    merged: dict[str, str] = {}
    for frag in fragments:
        merged.update(parse_config(frag.text, frag.name))
    return merged


def render_allconfig(requested: dict[str, str]) -> str:
    """The KCONFIG_ALLCONFIG file allnoconfig starts from."""
    lines = []
    for key, value in requested.items():
        lines.append(f"# {key} is not set" if value == "n" else f"{key}={value}")
    return "\n".join(lines) + "\n"


def unmet(requested: dict[str, str], final: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """(option, asked, got) for every requested value the final .config does not have."""
    out: list[tuple[str, str, str | None]] = []
    for key, want in requested.items():
        got = final.get(key)
        if want == "n":
            if got not in (None, "n"):
                out.append((key, want, got))
        elif got != want:
            out.append((key, want, got))
    return out


# -- why an option did not stick ------------------------------------------------------------------
_CONFIG_START = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
_BLOCK_END = re.compile(r"^\s*(config|menuconfig|choice|endchoice|menu|endmenu|if|endif|comment|source)\b")
_DEPENDS = re.compile(r"^\s*depends\s+on\s+(.+?)\s*(?:#.*)?$")
_SYMBOL = re.compile(r"\b([A-Z][A-Z0-9_]+)\b")


def kconfig_dependencies(kconfig_text: str, option: str) -> list[str]:
    """The 'depends on' expressions of `option` (CONFIG_ prefix optional) in one Kconfig file's text,
    including those of enclosing 'if' blocks."""
    name = option.removeprefix("CONFIG_")
    deps: list[str] = []
    if_stack: list[str] = []
    inside = False
    help_indent: int | None = None  # inside a help text: its keyword's indentation
    for line in kconfig_text.splitlines():
        stripped = line.strip()
        if help_indent is not None:
            if not stripped or _indent(line) > help_indent:
                continue
            help_indent = None
        if stripped in ("help", "---help---"):
            help_indent = _indent(line)
            continue
        m = _CONFIG_START.match(line)
        if m:
            inside = m.group(1) == name
            if inside:
                deps.extend(if_stack)
            continue
        if stripped.startswith("if ") and not line.startswith((" ", "\t")):
            if_stack.append(stripped[3:].split("#")[0].strip())
            inside = False
            continue
        if stripped == "endif" or stripped.startswith("endif "):
            if if_stack:
                if_stack.pop()
            inside = False
            continue
        if inside and _BLOCK_END.match(line) and not _DEPENDS.match(line):
            inside = False
            continue
        if inside:
            d = _DEPENDS.match(line)
            if d:
                deps.append(d.group(1))
    return deps


def _indent(line: str) -> int:
    return len(line.expandtabs(8)) - len(line.expandtabs(8).lstrip())


def explain(option: str, deps: list[str], final: dict[str, str]) -> str:
    """'depends on PCI && ZONE_DEVICE [ZONE_DEVICE=n]': each dependency with the symbols it names that
    are off in the final config."""
    if not deps:
        return "no unmet 'depends on' found; it may be a choice member, selected only by other options, or need a value"
    parts = []
    for expr in deps:
        off = [s for s in dict.fromkeys(_SYMBOL.findall(expr)) if final.get(f"CONFIG_{s}", "n") in ("n", "")]
        parts.append(f"depends on {expr}" + (f" [{', '.join(f'{s}=n' for s in off)}]" if off else ""))
    return "; ".join(parts)


def find_kconfig_definitions(tree: Path, option: str) -> list[Path]:
    """Kconfig files of the source tree that define the option."""
    name = option.removeprefix("CONFIG_")
    pattern = re.compile(rf"^\s*(?:menu)?config\s+{re.escape(name)}\s*$", re.MULTILINE)
    found = []
    for path in tree.rglob("Kconfig*"):
        if path.is_file() and "Documentation" not in path.parts:
            try:
                if pattern.search(path.read_text(errors="replace")):
                    found.append(path)
            except OSError:
                continue
    return found


def check(requested: dict[str, str], final: dict[str, str], tree: Path) -> list[str]:
    """One line per requested option that did not stick, with its unmet dependency."""
    problems = []
    for key, want, got in unmet(requested, final):
        files = find_kconfig_definitions(tree, key)
        if not files:
            problems.append(f"{key}={want}: no such option in this kernel tree")
            continue
        deps = [d for f in files for d in kconfig_dependencies(f.read_text(errors="replace"), key)]
        problems.append(f"{key}={want} did not stick (got {got or 'unset'}): {explain(key, deps, final)}")
    return problems
