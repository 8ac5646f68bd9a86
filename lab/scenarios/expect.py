"""What a scenario expects per kernel: `scenarios/<name>/expect.toml`, a list of rules; the first
rule whose keys match the case's facets (target, direction, placement, transport, ...) and whose
kernel range holds the guest's version gives the expected verdict and why. Suites' known-issues
files are the same format.

    [[expect]]
    target = "xfs"          # any facet the scenario gives its cases; a list matches any of its values
    pi = 1                  # or a topology parameter of the run (pi, pif, lba, ...)
    kernel_below = "7.0"    # kernel_from <= the guest's release < kernel_below, to the sublevel ("6.12.58")
    verdict = "FAIL"
    why = "..."
    signature = "guard check error"  # optional regex: a failure that does not match fails differently (new)
    expect_mechanism = "pins"   # expect_* keys are further expectations a scenario reads (pin-audit)
    link = "https://lore.kernel.org/..."   # optional: where the known issue is discussed

Every file is validated before anything boots: unknown keys or tables, wrong types and, where the
caller names them, the facet keys a rule may use and those it must have are one-line errors. A
release that does not parse matches no rule with a kernel range.

A case with no matching rule is expected to PASS. CI then reads a FAIL where FAIL was expected as
expected, a FAIL where PASS was expected as a regression and a PASS where FAIL was as a finding."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from lab.errors import UsageError
from lab.validation import describe

PASS, FAIL, ERROR, NOT_APPLICABLE, INFO, FLAKY = "PASS", "FAIL", "ERROR", "N/A", "INFO", "FLAKY"
RULE_KEYS = ("verdict", "why", "kernel_from", "kernel_below", "link", "signature")
_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Expectation:
    verdict: str
    why: str
    extra: dict[str, Any] = field(default_factory=dict)  # the rule's expect_* values, without the prefix
    link: str = ""  # where the known issue is discussed (a mailing-list thread, a bug)
    signature: str = ""  # a regex the failure's output or kernel log must match to be this known issue

    def fails_the_same_way(self, evidence: str) -> bool:
        return not self.signature or re.search(self.signature, evidence, re.MULTILINE) is not None


def kernel_version(release: str) -> tuple[int, int, int] | None:
    """(major, minor, sublevel) of a release ("6.12.117+deb13-amd64" -> (6, 12, 117)), or None."""
    m = _RELEASE.match(release.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def _release(value: str) -> str:
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", value):
        raise ValueError('must look like "7.0" or "6.12.58"')
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


Scalar = Union[StrictStr, StrictInt, StrictBool]


class Rule(BaseModel):
    """One [[expect]] table. Facet keys and expect_* keys are the extra fields."""

    model_config = ConfigDict(extra="allow", frozen=True)

    verdict: Literal["PASS", "FAIL"]
    why: StrictStr = ""
    link: StrictStr = ""
    kernel_from: Annotated[StrictStr, AfterValidator(_release)] | None = None
    kernel_below: Annotated[StrictStr, AfterValidator(_release)] | None = None
    signature: Annotated[StrictStr, AfterValidator(_regex)] | None = None

    @property
    def facets(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items() if not k.startswith("expect_")}

    @property
    def extra(self) -> dict[str, Any]:
        return {k.removeprefix("expect_"): v for k, v in (self.model_extra or {}).items() if k.startswith("expect_")}

    def matches(self, facets: dict[str, Any], release: str) -> bool:
        for key, want in self.facets.items():
            values = want if isinstance(want, list) else [want]
            if str(facets.get(key)) not in {str(v) for v in values}:
                return False
        if self.kernel_from is None and self.kernel_below is None:
            return True
        version = kernel_version(release)
        if version is None:  # an unparseable release is in no range
            return False
        if self.kernel_from is not None and version < (kernel_version(self.kernel_from) or (0, 0, 0)):
            return False
        if self.kernel_below is not None and version >= (kernel_version(self.kernel_below) or (0, 0, 0)):
            return False
        return True


def _check_facet_values(rule: Rule) -> str | None:
    for key, value in rule.facets.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int, bool)) for v in values):
            return f"{key}: a facet is a string, a number or a non-empty list of them"
    return None


@lru_cache(maxsize=64)
def load_rules(path: Path, facet_keys: frozenset[str] | None = None, required: tuple[str, ...] = ()) -> tuple[Rule, ...]:
    """The file's rules, validated. `facet_keys`: the keys a rule may match (others are typos, which
    would leave the rule silently inert); `required`: keys every rule must have, as strings (a
    known issue without `test` would match every test)."""
    if not path.exists():
        return ()
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"expect"})
    if unknown:
        raise UsageError(f"{path}: unknown table or key {unknown[0]!r} (a file holds [[expect]] tables only)")
    tables = data.get("expect", [])
    if not isinstance(tables, list):
        raise UsageError(f"{path}: 'expect' must be a list of [[expect]] tables")
    rules = []
    for i, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            raise UsageError(f"{path}: rule {i}: not a table")
        try:
            rule = Rule.model_validate(table)
        except ValidationError as exc:
            raise UsageError(f"{path}: rule {i}: {describe(exc)}") from None
        problem = _check_facet_values(rule)
        if problem:
            raise UsageError(f"{path}: rule {i}: {problem}")
        if facet_keys is not None:
            stray = sorted(k for k in rule.facets if k not in facet_keys)
            if stray:
                raise UsageError(f"{path}: rule {i}: unknown key {stray[0]!r} (a rule may match {', '.join(sorted(facet_keys))})")
        for key in required:
            if not isinstance(table.get(key), str) or not table[key]:
                raise UsageError(f"{path}: rule {i}: needs {key} = \"...\" (a string)")
        rules.append(rule)
    return tuple(rules)


def expectation_for(path: Path, facets: dict[str, Any], release: str, facet_keys: frozenset[str] | None = None,
                    required: tuple[str, ...] = ()) -> Expectation | None:
    """The first rule whose facet keys equal the case's and whose kernel range holds `release`."""
    for rule in load_rules(path, facet_keys, required):
        if rule.matches(facets, release):
            return Expectation(rule.verdict, rule.why, rule.extra, rule.link, rule.signature or "")
    return None


def outcome(verdict: str, expected: str | None) -> str:
    """How CI should read a case's verdict given what was expected (None: PASS)."""
    if verdict == ERROR:
        return "error"
    if verdict in (NOT_APPLICABLE, INFO):
        return "not applicable" if verdict == NOT_APPLICABLE else "recorded"
    if verdict == FLAKY:
        return "flaky"
    want = expected or PASS
    if verdict == want:
        return "as expected"
    return "unexpected pass (finding)" if verdict == PASS else "unexpected failure (regression)"


# A flaky case does not fail the run's exit status; every output names it.
OK_OUTCOMES = ("as expected", "not applicable", "recorded", "flaky")


def outcome_ok(value: str) -> bool:
    return value in OK_OUTCOMES
