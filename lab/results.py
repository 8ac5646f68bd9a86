"""Reading results back: list, show, compare across runs and kernels, JUnit export. A damaged file
(a truncated manifest, results.json or junit.xml) is named in a one-line error, never a traceback."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.paths import results_dir
from lab.rundir import abandoned


def find_run(ref: str) -> Path:
    """A run id, a unique part of one, 'latest', or a path."""
    if not ref or len(ref) > 1024 or "\0" in ref:
        raise UsageError("give a run id, a part of one, 'latest' or a run directory")
    as_path = Path(ref)
    if "/" in ref or as_path.is_dir():
        if not as_path.is_dir():
            raise UsageError(f"{ref}: no such run directory")
        if not (as_path / "manifest.json").exists():
            raise UsageError(f"{ref}: not a run directory (no manifest.json)")
        return as_path
    runs = sorted(p for p in results_dir().iterdir() if (p / "manifest.json").exists())
    if ref == "latest":
        if not runs:
            raise UsageError(f"no runs in {results_dir()}")
        return runs[-1]
    matches = [p for p in runs if ref in p.name]
    if not matches:
        raise UsageError(f"no run matching {ref!r} in {results_dir()}")
    if len(matches) > 1 and not any(p.name == ref for p in matches):
        raise UsageError(f"{ref!r} matches {len(matches)} runs: {', '.join(p.name for p in matches[:5])}")
    return next((p for p in matches if p.name == ref), matches[0])


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: the {what} is damaged ({exc.msg} at line {exc.lineno}); the run's other files are "
                         f"still there") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the {what} is not a JSON object")
    return data


def manifest(run: Path, strict: bool = False) -> dict[str, Any]:
    try:
        return read_json(run / "manifest.json", "manifest")
    except UsageError:
        if strict:
            raise
        return {}


def status_of(m: dict[str, Any]) -> str | None:
    """The manifest's status, or 'abandoned' for a run whose lab process died without writing one."""
    return "abandoned" if abandoned(m) else m.get("status")


def list_runs() -> list[dict[str, Any]]:
    out = []
    for p in sorted(results_dir().iterdir()):
        if (p / "manifest.json").exists():
            m = manifest(p)
            verdicts = m.get("verdicts") if isinstance(m.get("verdicts"), dict) else {}
            out.append({"id": p.name, "kind": m.get("kind"), "status": status_of(m) if m else "(damaged manifest)",
                        "verdicts": verdicts, "started": m.get("started")})
    return out


def results_of(run: Path) -> dict[str, Any]:
    f = run / "results.json"
    if not f.exists():
        raise UsageError(f"{run.name} has no scenario results (kind {manifest(run).get('kind')!r})")
    data = read_json(f, "results")
    if not isinstance(data.get("subruns"), dict) or not isinstance(data.get("scenario"), str):
        raise UsageError(f"{f}: not results of a scenario run (no 'scenario' and 'subruns'; made by an older lab?)")
    return data


def compare(runs: list[Path]) -> str:
    """One table of the scenario's figures per sub-run across several runs of one scenario."""
    from lab.scenarios import framework

    merged: dict[str, Any] = {"subruns": {}}
    scenario = None
    for run in runs:
        res = results_of(run)
        if scenario is not None and res["scenario"] != scenario:
            raise UsageError(f"{run.name} is a {res['scenario']} run; the others are {scenario}: compare runs of one scenario")
        scenario = res["scenario"]
        merged["scenario"] = scenario
        for label, section in res["subruns"].items():
            key = label if len(runs) == 1 else f"{label}@{run.name[9:15]}"
            merged["subruns"][key] = section
    assert scenario is not None
    cls = framework.get(scenario)
    text = framework.summary(cls(cls.Options.model_construct()), merged)
    if len(runs) == 2:
        changes = suite_changes(results_of(runs[0]), results_of(runs[1]))
        if changes:
            text += f"\n\nfrom {runs[0].name} to {runs[1].name}:\n" + "\n".join(changes)
    elif len(runs) == 1 and len(subs := results_of(runs[0])["subruns"]) == 2:  # a baseline and a patched kernel
        (la, a), (lb, b) = subs.items()
        changes = suite_changes({"subruns": {la: a}}, {"subruns": {lb: b}})
        if changes:
            text += f"\n\nfrom {la} to {lb}:\n" + "\n".join(changes)
    return text


# A suite test's status moving between two runs, read as a maintainer reads a baseline.
_CHANGE = {("pass", "fail"): "new failure", ("pass", "timeout"): "new failure (hangs)", ("fail", "pass"): "fixed",
           ("timeout", "pass"): "fixed", ("notrun", "pass"): "runs now", ("notrun", "fail"): "runs now, fails",
           ("pass", "notrun"): "no longer runs", ("fail", "notrun"): "no longer runs"}


def suite_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Per suite test (cases that carry a status: fstests, nfs-fstests, blktests), what changed from
    one run to the other. Sub-runs pair by label, else in order (a baseline kernel against a patched one)."""
    a_subs, b_subs = before.get("subruns", {}), after.get("subruns", {})
    if set(a_subs) == set(b_subs):
        pairs = [(label, a_subs[label], b_subs[label]) for label in a_subs]
    else:
        pairs = [(f"{la} -> {lb}", a_subs[la], b_subs[lb]) for la, lb in zip(a_subs, b_subs, strict=False)]
    lines: list[str] = []
    for label, a, b in pairs:
        a_cases, b_cases = a.get("cases", {}), b.get("cases", {})
        for name in dict.fromkeys([*a_cases, *b_cases]):
            sa, sb = a_cases.get(name, {}).get("status"), b_cases.get(name, {}).get("status")
            if sa is None and sb is None or sa == sb:
                continue
            change = _CHANGE.get((sa, sb), f"{sa or 'absent'} -> {sb or 'absent'}")
            lines.append(f"  {label}: {name}: {change} ({sa or 'absent'} -> {sb or 'absent'})")
    return lines


def junit(runs: list[Path], out: Path | None) -> str:
    trees = []
    for run in runs:
        f = run / "junit.xml"
        if not f.exists():
            raise UsageError(f"{run.name} has no junit.xml")
        try:
            trees.append(ET.parse(f).getroot())
        except ET.ParseError as exc:
            raise UsageError(f"{f}: damaged JUnit XML ({exc})") from None
    if len(trees) == 1 and out is None:
        return (runs[0] / "junit.xml").read_text()
    suites = ET.Element("testsuites")
    for tree in trees:
        suites.extend(list(tree) if tree.tag == "testsuites" else [tree])
    ET.indent(suites)
    text = ET.tostring(suites, encoding="unicode")
    if out:
        try:
            out.write_text(text)
        except OSError as exc:
            raise UsageError(f"-o {out}: {exc.strerror}") from None
    return text
