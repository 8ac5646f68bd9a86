"""What a scenario expects per kernel: `scenarios/<name>/expect.toml`, a list of rules; the first
rule whose keys match the case's facets (target, direction, placement, transport, ...) and whose
kernel range holds the guest's version gives the expected verdict and why.

    [[expect]]
    target = "xfs"          # any facet the scenario gives its cases
    kernel_below = "7.0"    # kernel_from <= MAJOR.MINOR of `uname -r` < kernel_below
    verdict = "FAIL"
    why = "..."
    expect_mechanism = "pins"   # expect_* keys are further expectations a scenario reads (pin-audit)
    link = "https://lore.kernel.org/..."   # optional: where the known issue is discussed

A case with no matching rule is expected to PASS. CI then reads a FAIL where FAIL was expected as
expected, a FAIL where PASS was expected as a regression and a PASS where FAIL was as a finding."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lab.errors import UsageError

PASS, FAIL, ERROR, NOT_APPLICABLE, INFO = "PASS", "FAIL", "ERROR", "N/A", "INFO"
RULE_KEYS = ("verdict", "why", "kernel_from", "kernel_below", "link")


@dataclass(frozen=True)
class Expectation:
    verdict: str
    why: str
    extra: dict[str, Any] = field(default_factory=dict)  # the rule's expect_* values, without the prefix
    link: str = ""  # where the known issue is discussed (a mailing-list thread, a bug)


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@lru_cache(maxsize=32)
def load_rules(path: Path) -> tuple[dict[str, Any], ...]:
    if not path.exists():
        return ()
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    rules = data.get("expect", [])
    if not isinstance(rules, list):
        raise UsageError(f"{path}: 'expect' must be a list of [[expect]] tables")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or rule.get("verdict") not in (PASS, FAIL):
            raise UsageError(f"{path}: rule {i + 1} needs verdict = \"PASS\" or \"FAIL\"")
        for key in ("kernel_from", "kernel_below"):
            if key in rule and not re.fullmatch(r"\d+\.\d+", str(rule[key])):
                raise UsageError(f"{path}: rule {i + 1}: {key} must look like \"7.0\"")
    return tuple(rules)


def expectation_for(path: Path, facets: dict[str, Any], release: str) -> Expectation | None:
    """The first rule whose facet keys equal the case's and whose kernel range holds `release`."""
    version = kernel_version(release)
    for rule in load_rules(path):
        if any(str(facets.get(k)) != str(v) for k, v in rule.items() if k not in RULE_KEYS and not k.startswith("expect_")):
            continue
        if "kernel_from" in rule and version < kernel_version(rule["kernel_from"]):
            continue
        if "kernel_below" in rule and version >= kernel_version(rule["kernel_below"]):
            continue
        extra = {k.removeprefix("expect_"): v for k, v in rule.items() if k.startswith("expect_")}
        return Expectation(rule["verdict"], rule.get("why", ""), extra, str(rule.get("link", "")))
    return None


def outcome(verdict: str, expected: str | None) -> str:
    """How CI should read a case's verdict given what was expected (None: PASS)."""
    if verdict == ERROR:
        return "error"
    if verdict in (NOT_APPLICABLE, INFO):
        return "not applicable" if verdict == NOT_APPLICABLE else "recorded"
    want = expected or PASS
    if verdict == want:
        return "as expected"
    return "unexpected pass (finding)" if verdict == PASS else "unexpected failure (regression)"


OK_OUTCOMES = ("as expected", "not applicable", "recorded")


def outcome_ok(value: str) -> bool:
    return value in OK_OUTCOMES
