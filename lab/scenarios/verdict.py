"""Verdicts and expectations: PASS, FAIL or ERROR from the figures, then whether that outcome was
expected for this kernel, so CI can tell an expected failure from a regression or a finding."""

from __future__ import annotations

import errno as errno_mod
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

PASS, FAIL, ERROR = "PASS", "FAIL", "ERROR"
INTEGRITY_ERRNOS = {errno_mod.EILSEQ, errno_mod.EIO}


@dataclass
class ProgramResult:
    """One run of the guest program, parsed; error is set when its output could not be read."""

    raw: str
    data: dict | None
    error: str | None

    @property
    def errnos(self) -> dict[int, int]:
        return {int(k): v for k, v in (self.data or {}).get("errno", {}).items()}

    @property
    def integrity_errors(self) -> int:
        return sum(v for k, v in self.errnos.items() if k in INTEGRITY_ERRNOS)

    @property
    def other_errors(self) -> dict[int, int]:
        return {k: v for k, v in self.errnos.items() if k not in INTEGRITY_ERRNOS}

    @property
    def failed(self) -> int:
        return sum(self.errnos.values()) + (self.data or {}).get("short", 0)


def parse_program_output(text: str) -> ProgramResult:
    """The program prints one JSON object as its last line; anything else (a crash, a truncated
    line, an error object) makes the result unusable rather than a silent pass."""
    lines = [l for l in text.strip().splitlines() if l.strip()]
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
    for key in ("ops", "ok", "short", "errno"):
        if key not in data:
            return ProgramResult(text, None, f"output lacks {key!r}")
    if data["ops"] == 0:
        return ProgramResult(text, data, "no I/O was done")
    return ProgramResult(text, data, None)


def errno_name(code: int) -> str:
    return errno_mod.errorcode.get(code, str(code))


def judge(mutating: ProgramResult | None, control: ProgramResult | None) -> tuple[str, str]:
    """(verdict, reason). PASS needs zero integrity errors while mutating and zero errors at all in
    the control; anything that prevented a measurement is ERROR, never PASS."""
    for label, res in (("mutating run", mutating), ("control run", control)):
        if res is None:
            return ERROR, f"{label} did not happen"
        if res.error:
            return ERROR, f"{label}: {res.error}"
        if res.other_errors:
            names = ", ".join(f"{errno_name(k)} x{v}" for k, v in res.other_errors.items())
            return ERROR, f"{label} failed with errors unrelated to integrity: {names}"
    assert mutating is not None and control is not None
    if control.failed:
        return FAIL, f"control run (no mutation) had {control.failed} failed of {control.data['ops']}"
    if mutating.integrity_errors or mutating.failed:
        names = ", ".join(f"{errno_name(k)} x{v}" for k, v in mutating.errnos.items())
        short = f", short x{mutating.data['short']}" if mutating.data["short"] else ""
        return FAIL, f"{mutating.failed} of {mutating.data['ops']} operations failed while the buffer changed ({names}{short})"
    return PASS, f"0 of {mutating.data['ops']} operations failed with {mutating.data.get('mutations', 0)} buffer mutations"


def combine(verdicts: list[str]) -> str:
    if ERROR in verdicts or not verdicts:
        return ERROR
    return FAIL if FAIL in verdicts else PASS


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass(frozen=True)
class Expectation:
    verdict: str
    why: str


def expectation_for(rules_file: Path, target: str, release: str) -> Expectation | None:
    """First rule whose target and kernel range match. Ranges: kernel_from <= version < kernel_below."""
    if not rules_file.exists():
        return None
    version = kernel_version(release)
    for rule in tomllib.loads(rules_file.read_text()).get("expect", []):
        if rule.get("target", target) != target:
            continue
        if "kernel_from" in rule and version < kernel_version(rule["kernel_from"]):
            continue
        if "kernel_below" in rule and version >= kernel_version(rule["kernel_below"]):
            continue
        return Expectation(rule["verdict"], rule.get("why", ""))
    return None


def outcome(verdict: str, expected: Expectation | None) -> str:
    """How CI should read a verdict."""
    if verdict == ERROR:
        return "error"
    if expected is None:
        return "no expectation"
    if verdict == expected.verdict:
        return "as expected"
    return "unexpected pass (finding)" if verdict == PASS else "unexpected failure (regression)"


def outcome_ok(value: str) -> bool:
    return value in ("as expected", "no expectation")
