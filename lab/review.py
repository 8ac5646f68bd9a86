"""`lab review SERIES`: what a reviewer of a P2PDMA or PI series does by hand, in one command. The
files the series touches pick the checks (scenarios/review.toml, extendable with --map); the plan is
printed before anything is built; the base and base + series are built with the lab's fragments;
each check runs on both; every case that got worse is bisected to its first patch (by failure rate
with --repeat); the reply is plain text under 80 columns, beside results.json.
Exit status: 0 nothing got worse, 1 a regression, 2 bad input, 3 inconclusive."""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import textwrap
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from lab.errors import LabError, UsageError
from lab.kernels import build
from lab.kernels.series import Series, load_series
from lab.paths import DATA_ROOT
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios import framework
from lab.scenarios.options import validate
from lab.scenarios.verdict import ERROR, FAIL, PASS
from lab.stats import Rate, separated
from lab.validation import describe

LOG = logging.getLogger(__name__)

DEFAULT_MAP = DATA_ROOT / "scenarios" / "review.toml"
WIDTH = 72  # mail: quoted twice it still fits 80 columns
_DIFF_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.MULTILINE)
# Worse means further right; ERROR is not a verdict on the kernel (the check did not happen).
_RANK = {PASS: 0, "FLAKY": 1, FAIL: 2, "N/A": 0}


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    scenario: StrictStr
    paths: list[StrictStr] = Field(min_length=1)
    why: StrictStr = ""
    options: dict[str, Any] = {}

    def matches(self, path: str) -> bool:
        return any(path.startswith(p) if p.endswith("/") or not any(c in p for c in "*?[") else fnmatch.fnmatch(path, p)
                   for p in self.paths)


class ReviewMap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    check: list[Check] = Field(min_length=1)


def load_map(path: Path) -> list[Check]:
    """The checks of a review map, each scenario's options validated now (a typo fails before any build)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--map {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not TOML ({exc})") from None
    from pydantic import ValidationError

    try:
        checks = ReviewMap.model_validate(data).check
    except ValidationError as exc:
        raise UsageError(f"{path}: {describe(exc)}") from None
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise UsageError(f"{path}: check names repeat ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    for check in checks:
        try:
            cls = framework.get(check.scenario)
        except LabError as exc:
            raise UsageError(f"{path}: check {check.name}: {exc}") from None
        try:
            validate(cls.Options, dict(check.options))
        except UsageError as exc:
            raise UsageError(f"{path}: check {check.name}: {exc}") from None
    return checks


def touched_files(series: Series) -> list[str]:
    """Every file a patch of the series changes (both names of a rename), in order of first touch."""
    files: dict[str, None] = {}
    for patch in series.patches:
        for a, b in _DIFF_RE.findall(patch.raw.decode(errors="replace")):
            files.setdefault(a)
            files.setdefault(b)
    return list(files)


@dataclass
class Planned:
    check: Check
    files: list[str]


@dataclass
class Plan:
    series: Series
    files: list[str]
    chosen: list[Planned]
    skipped: list[Check]

    def text(self) -> str:
        picked = "picked by b4, reviewers' trailers applied" if self.series.picker == "b4" else "picked by the lab's own picker"
        lines = [f"series: {len(self.series.patches)} patch(es) from {self.series.origin} ({picked}), touching {len(self.files)} file(s)"]
        lines += [f"  {p.title}" for p in self.series.patches]
        if self.chosen:
            lines.append("checks:")
            lines += [f"  {p.check.name:14} {p.check.why} (touched: {', '.join(p.files[:3])}{' ...' if len(p.files) > 3 else ''})"
                      for p in self.chosen]
        else:
            lines.append("checks: none (no touched file is under a path of the review map)")
        if self.skipped:
            lines.append("not run: " + ", ".join(c.name for c in self.skipped))
        return "\n".join(lines)


def plan(series: Series, checks: list[Check]) -> Plan:
    files = touched_files(series)
    chosen, skipped = [], []
    for check in checks:
        hits = [f for f in files if check.matches(f)]
        (chosen.append(Planned(check, hits)) if hits else skipped.append(check))
    return Plan(series, files, chosen, skipped)


@dataclass
class Change:
    check: str
    scenario: str
    case: str
    base: str
    series: str
    detail: str
    worse: bool  # False: not comparable (an ERROR on either side)
    bisect: dict[str, Any] | None = None


def _cases(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: c for name, c in (section.get("cases") or {}).items() if isinstance(c, dict)}


def _rate(case: dict[str, Any]) -> Rate | None:
    rate = case.get("rate")
    return Rate(int(rate["failed"]), int(rate["runs"])) if isinstance(rate, dict) and rate.get("runs") else None


def _detail(case: dict[str, Any]) -> str:
    failed = case.get("failed")
    if isinstance(failed, list) and failed and isinstance(failed[0], dict):
        first = failed[0]
        return f"{len(failed)} sub-case(s) failed, first {first.get('name')}: {str(first.get('error', ''))[:160]}"
    return str(case.get("reason", ""))[:200]


def compare(check: Check, outcome: framework.Outcome, base_ref: str, series_ref: str) -> list[Change]:
    """Per case, what changed from the base's sub-run to the series'. A case is worse when its verdict
    is (PASS -> FAIL/FLAKY), or, with rates, when the series' interval is clear of the base's and higher."""
    subruns = outcome.results.get("subruns") or {}
    by_kernel = {s.get("kernel"): s for s in subruns.values() if isinstance(s, dict)}
    base, series = by_kernel.get(base_ref), by_kernel.get(series_ref)
    if base is None or series is None:
        return [Change(check.name, check.scenario, "(sub-run)", base.get("verdict", ERROR) if base else ERROR,
                       series.get("verdict", ERROR) if series else ERROR, "a sub-run is missing", False)]
    changes = []
    b_cases, s_cases = _cases(base), _cases(series)
    if not s_cases or not b_cases:
        if ERROR in (base.get("verdict"), series.get("verdict")):
            return [Change(check.name, check.scenario, "(sub-run)", str(base.get("verdict")), str(series.get("verdict")),
                           str((series if series.get("verdict") == ERROR else base).get("reason", ""))[:200], False)]
    for name in dict.fromkeys([*b_cases, *s_cases]):
        b, s = b_cases.get(name, {}), s_cases.get(name, {})
        bv, sv = str(b.get("verdict", ERROR)), str(s.get("verdict", ERROR))
        br, sr = _rate(b), _rate(s)
        if br and sr and (br.runs > 1 or sr.runs > 1):
            if separated(br, sr) and sr.value > br.value:
                changes.append(Change(check.name, check.scenario, name, br.describe(), sr.describe(), _detail(s), True))
            continue
        if bv == sv:
            continue
        if ERROR in (bv, sv):
            changes.append(Change(check.name, check.scenario, name, bv, sv, str((s if sv == ERROR else b).get("reason", ""))[:200], False))
        elif _RANK.get(sv, 0) > _RANK.get(bv, 0):
            changes.append(Change(check.name, check.scenario, name, bv, sv, _detail(s), True))
    return changes


@dataclass
class Review:
    series_spec: str
    base: str
    repeat: int = 1
    configs: tuple[str, ...] = ()
    map_path: Path = DEFAULT_MAP
    timings: dict[str, float] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    kernels: dict[str, str] = field(default_factory=dict)  # base/series -> "build:KEY (release)"
    bundles: dict[str, str] = field(default_factory=dict)  # check -> bundle of its run, when it got worse

    def _timed(self, phase: str, started: float) -> None:
        self.timings[phase] = round(self.timings.get(phase, 0.0) + time.monotonic() - started, 1)

    def run(self, out: RunDir) -> tuple[Plan, int]:
        from lab.bisect import run_bisect, series_candidates

        t = time.monotonic()
        checks = load_map(self.map_path)
        series = load_series(self.series_spec)
        the_plan = plan(series, checks)
        self._timed("plan", t)
        print(the_plan.text(), flush=True)
        out.update(review={"series": self.series_spec, "base": self.base, "plan": [p.check.name for p in the_plan.chosen]})
        if not the_plan.chosen:
            return the_plan, 0
        t = time.monotonic()
        requests, labels = series_candidates(self.base, self.series_spec, self.configs)
        base_kernel, series_kernel = build.build(requests[0]), build.build(requests[-1])
        self.kernels = {"base": f"{base_kernel.ref} ({base_kernel.release})", "series": f"{series_kernel.ref} ({series_kernel.release})"}
        self._timed("builds", t)
        for planned in the_plan.chosen:
            check = planned.check
            cls = framework.get(check.scenario)
            options = validate(cls.Options, {**check.options, "kernels": [base_kernel.ref, series_kernel.ref],
                                             **({"repeat": self.repeat} if self.repeat > 1 else {})})
            info(f"review: {check.name} on the base and the series")
            t = time.monotonic()
            outcome = framework.run(cls, options, tags={"review_check": check.name})
            self._timed("runs", t)
            self.runs[check.name] = str(outcome.run_dir.path)
            found = compare(check, outcome, base_kernel.ref, series_kernel.ref)
            for change in found:
                if change.worse and change.case != "(sub-run)":
                    info(f"review: {check.name} {change.case} got worse ({change.base} -> {change.series}); bisecting the series")
                    t = time.monotonic()
                    single = options.model_copy(update={"kernels": [series_kernel.ref]})
                    run_dir, summary = run_bisect(check.scenario, single, requests, labels,
                                                  {"base": self.base, "series": self.series_spec, "review": check.name},
                                                  case=change.case)
                    self._timed("bisect", t)
                    change.bisect = {"run": str(run_dir.path), "result": summary.get("result")}
            if any(c.worse for c in found):
                from lab import bundle

                # What a maintainer replays: the check's run on both kernels, its files and options.
                self.bundles[check.name] = str(bundle.create(outcome.run_dir.path, out.path / f"{check.name}.bundle.tar.gz"))
            self.changes += found
        worse = [c for c in self.changes if c.worse]
        unclear = [c for c in self.changes if not c.worse]
        status = 1 if worse else 3 if unclear else 0
        return the_plan, status


def first_bad(change: Change) -> str:
    result = (change.bisect or {}).get("result") or {}
    bad = result.get("first_bad") or {}
    if result.get("changed") and bad.get("label"):
        return str(bad["label"])
    return ""


def reply(review: Review, the_plan: Plan, status: int) -> str:
    """The mail a maintainer reads: plain text, every line under 80 columns."""
    wrap = textwrap.TextWrapper(width=WIDTH, break_long_words=False, break_on_hyphens=False)
    para = lambda text: "\n".join(wrap.wrap(text))  # noqa: E731
    series = the_plan.series
    out = [para(f"I ran this series ({len(series.patches)} patches) through the lab's emulated hardware "
                f"(QEMU NVMe with PI and a CMB, soft-RoCE, PCIe switches) on {review.base} and on {review.base} "
                "with the series applied."), ""]
    if not the_plan.chosen:
        out += [para("None of the lab's checks covers the files this series touches ("
                     + ", ".join(the_plan.files[:6]) + (" ..." if len(the_plan.files) > 6 else "") + "), so nothing was run."), ""]
    else:
        out.append("Tested:")
        for p in the_plan.chosen:
            out.append(f"  - {p.check.name}: {p.check.why}"[:WIDTH + 6])
        if review.kernels:
            out += ["", para(f"Kernels: base {review.kernels.get('base')}, series {review.kernels.get('series')}"
                         + (f", {review.repeat} repetitions each" if review.repeat > 1 else "") + ".")]
        out.append("")
        worse = [c for c in review.changes if c.worse]
        if not worse:
            out += [para("Nothing got worse with the series." if status == 0 else
                         "Nothing got worse that the lab could tell, but some checks did not run to a verdict (below)."), ""]
        for c in worse:
            out.append(f"Regression in {c.check}, case {c.case}: {c.base} on the base, {c.series} with the series.")
            bad = first_bad(c)
            if bad:
                out.append(f"First bad patch: {bad}")
            elif c.bisect:
                out.append("The bisect could not name one patch (see its summary).")
            if c.detail:
                out.append(para(c.detail))
            lines = _kernel_lines(review.runs.get(c.check), c.case)
            if lines:
                out.append("Kernel log of the failing run:")
                out += [f"  {line[:WIDTH - 2]}" for line in lines]
            out += ["", "To reproduce:", f"  {reproduce_command(review)}"]
            if c.check in review.bundles:
                out.append(f"  lab replay {Path(review.bundles[c.check]).name}   # the run itself, from its bundle")
            out.append("")
        for c in (c for c in review.changes if not c.worse):
            out += [para(f"Not comparable: {c.check} {c.case} was {c.base} on the base and {c.series} with the "
                         f"series ({c.detail})."), ""]
    skipped = ", ".join(c.name for c in the_plan.skipped)
    if skipped:
        out += [para(f"Not covered (no touched file under their paths): {skipped}."), ""]
    out.append("-- ")
    out.append("lab review (QEMU-based P2PDMA and PI lab)")
    return "\n".join(line.rstrip() for line in out) + "\n"


def _kernel_lines(run: str | None, case: str, limit: int = 6) -> list[str]:
    """The kernel's problem lines the failing case recorded, at most `limit`."""
    if not run:
        return []
    try:
        results = json.loads((Path(run) / "results.json").read_text())
    except (OSError, ValueError):
        return []
    lines: list[str] = []
    for section in (results.get("subruns") or {}).values():
        c = (section.get("cases") or {}).get(case) or {}
        for problem in c.get("kernel_problems") or []:
            line = problem.get("line") if isinstance(problem, dict) else str(problem)
            if line:
                lines.append(str(line))
    return lines[:limit]


def reproduce_command(review: Review) -> str:
    """The review command again, with every choice that changes what ran (a map of one's own, --repeat, --debug)."""
    words = ["lab review", Path(review.series_spec).name, "--base", review.base]
    if review.map_path != DEFAULT_MAP:
        words += ["--map", review.map_path.name]
    if review.repeat > 1:
        words += ["--repeat", str(review.repeat)]
    words += [f"--config {c}" if c != "debug" else "--debug" for c in review.configs]
    return " ".join(words)


def results(review: Review, the_plan: Plan, status: int) -> dict[str, Any]:
    return {
        "series": review.series_spec, "base": review.base, "repeat": review.repeat, "exit_status": status,
        "patches": [p.title for p in the_plan.series.patches], "picked_by": the_plan.series.picker, "files": the_plan.files,
        "checks": [{"name": p.check.name, "scenario": p.check.scenario, "files": p.files, "run": review.runs.get(p.check.name)}
                   for p in the_plan.chosen],
        "not_run": [c.name for c in the_plan.skipped], "kernels": review.kernels, "bundles": review.bundles,
        "changes": [vars(c) for c in review.changes], "seconds": review.timings,
    }
