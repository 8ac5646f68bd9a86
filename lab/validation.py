"""One way to say what is wrong with a file or an option that failed its pydantic model: the path to
the first bad field (machines.vm.nvme[0].pi) and what is wrong with it, on one line."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def describe(err: ValidationError) -> str:
    """'field.path: what is wrong (got value)' for the first error, and how many more there are."""
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
