"""Verdicts, and the one parser of guest-program output every scenario uses.

A guest program prints one JSON object as its last line. Anything else (no output, a crash, a
truncated line, an error object, missing keys, or a result saying nothing was done) makes the
result unusable, and an unusable result is an ERROR verdict, never a PASS."""

from __future__ import annotations

import errno as errno_mod
import json
from dataclasses import dataclass
from typing import Any, Sequence

from lab.scenarios.expect import ERROR, FAIL, FLAKY, INFO, NOT_APPLICABLE, PASS  # noqa: F401 - the vocabulary

COUNTED = (PASS, FAIL, ERROR, FLAKY)


@dataclass
class ProgramResult:
    """One run of a guest program, parsed; error is set when its output could not be used."""

    raw: str
    data: dict[str, Any] | None
    error: str | None

    @property
    def errnos(self) -> dict[int, int]:
        return {int(k): v for k, v in (self.data or {}).get("errno", {}).items()}

    @property
    def failed(self) -> int:
        return sum(self.errnos.values()) + (self.data or {}).get("short", 0)


def parse_program_output(text: str, required: Sequence[str] = ("ops", "ok", "short", "errno"),
                         count: str | None = "ops") -> ProgramResult:
    """`required` keys must be present; `count` names the key (a number or a list) that says how
    much was done: zero or empty means nothing was tested."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ProgramResult(text, None, "no output")
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        return ProgramResult(text, None, f"unreadable output ({exc.msg} at column {exc.colno}): {lines[-1][:80]!r}")
    if not isinstance(data, dict):
        return ProgramResult(text, None, "output is not a JSON object")
    if "error" in data:
        return ProgramResult(text, data, str(data["error"]))
    for key in required:
        if key not in data:
            return ProgramResult(text, None, f"output lacks {key!r}")
    if count is not None:
        done = data.get(count)
        if done in (0, None) or (isinstance(done, (list, dict)) and not done):
            return ProgramResult(text, data, f"nothing was done ({count} is {done!r})")
    return ProgramResult(text, data, None)


def errno_name(code: int | str) -> str:
    try:
        return errno_mod.errorcode.get(int(code), str(code))
    except ValueError:
        return str(code)


def errno_list(counts: dict[int, int]) -> str:
    return ", ".join(f"{errno_name(k)} x{v}" for k, v in sorted(counts.items()))


def aggregate(cases: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """A sub-run's verdict from its cases: ERROR if one is in error or nothing was asserted, FAIL if
    one failed, PASS otherwise. N/A and INFO cases assert nothing and do not count."""
    if not cases:
        return ERROR, "no case ran"
    errors = [(n, c) for n, c in cases.items() if c["verdict"] == ERROR]
    if errors:
        name, case = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return ERROR, f"{name}: {case['reason']}{more}"
    counted = [c for c in cases.values() if c["verdict"] in COUNTED]
    if not counted:
        kinds = sorted({c["verdict"] for c in cases.values()})
        # The first case's reason says why (a missing driver, a test that never runs here).
        name, case = next(((n, c) for n, c in cases.items() if c["verdict"] != INFO), next(iter(cases.items())))
        return ERROR, f"nothing was tested: all {len(cases)} case(s) were {'/'.join(kinds)}; first: {name}: {case['reason']}"
    failed = [(n, c) for n, c in cases.items() if c["verdict"] == FAIL]
    flaky = [n for n, c in cases.items() if c["verdict"] == FLAKY]
    also = f"; {len(flaky)} flaky (failed, then passed when run again): {', '.join(flaky[:3])}" if flaky else ""
    if failed:
        name, case = failed[0]
        return FAIL, f"{len(failed)} of {len(counted)} case(s) failed; first: {name}: {case['reason']}{also}"
    return PASS, f"{len(counted) - len(flaky)} case(s) passed{also}"


def combine(verdicts: list[str]) -> str:
    if ERROR in verdicts or not verdicts:
        return ERROR
    return FAIL if FAIL in verdicts else PASS
