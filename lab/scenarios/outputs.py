"""What a run writes and prints: each sub-run's outcome for CI, the verdict lines and the summary,
JUnit, results.json, and the Outcome `lab run` returns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lab import junit
from lab.rundir import RunDir
from lab.scenarios.base import Scenario
from lab.scenarios.expect import ERROR, FLAKY, INFO, NOT_APPLICABLE, PASS, outcome_ok
from lab.stats import Rate


@dataclass
class Outcome:
    run_dir: RunDir
    results: dict[str, Any]
    ok: bool  # every verdict as expected (the exit status of `lab run`)
    table: str

    def signature(self) -> str:
        """The verdicts without the kernel labels: what bisect compares between steps."""
        subruns = self.results.get("subruns") or {}
        if not subruns:
            return ERROR
        parts = []
        for section in subruns.values():
            tag = ",".join(str(v) for v in section.get("facets", {}).values())
            parts.append(f"{tag}={section['verdict']}" if tag else section["verdict"])
        return ", ".join(parts)


def section_outcome(section: dict[str, Any]) -> str:
    verdict = section["verdict"]
    if verdict == ERROR:
        return "error"
    if verdict == NOT_APPLICABLE:
        return "not applicable"
    if section.get("attempt_failed"):
        return "unexpected failure (regression)"
    outcomes = [c["outcome"] for c in section["cases"].values() if c["verdict"] not in (NOT_APPLICABLE, INFO)]
    for bad in ("unexpected failure (regression)", "unexpected pass (finding)", "error", "flaky"):
        if bad in outcomes:
            return bad
    return "as expected"


def run_ok(results: dict[str, Any]) -> bool:
    subruns = results.get("subruns", {})
    return bool(subruns) and all(outcome_ok(s.get("outcome", "error")) for s in subruns.values())


def verdict_line(label: str, section: dict[str, Any]) -> str:
    line = f"{label}: {section['verdict']}"
    if section.get("outcome") not in ("as expected",) or section["verdict"] != PASS:
        line += f" ({section.get('outcome')})"
    rate = section.get("rate")
    if rate:
        line += f" {Rate(rate['failed'], rate['runs']).describe()} over {rate.get('repetitions', rate['runs'])} repetitions"
    line += f" - {section['reason']}"
    retries = section.get("boot", {}).get("retries") or []
    if retries:
        what = ", ".join(f"attempt {r['attempt']}: {r['phase']}" for r in retries)
        line += f" [boot retried {len(retries)}x after emulator faults: {what}]"
    again = section.get("attempts") or []
    if again:
        line += f" [sub-run run again {len(again)}x after the emulator failed the guest: {again[0]['fault'][:80]}; " \
                f"discarded attempts kept in {', '.join(a['dir'] for a in again)}]"
    return line


def summary(scenario: Scenario, results: dict[str, Any]) -> str:
    body = scenario.table(results) if results.get("subruns") else "no sub-run was made"
    lines = [verdict_line(label, s) for label, s in results.get("subruns", {}).items()]
    return body.rstrip() + "\n\n" + "\n".join(lines)


def junit_cases(scenario_name: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    cases = []
    for label, s in results.get("subruns", {}).items():
        classname = f"{scenario_name}.{label}"
        # A sub-run ERROR shows even after passing cases; so does a discarded attempt's failure.
        kind = ("error" if s["verdict"] == ERROR else "failure" if s.get("attempt_failed")
                else "skipped" if not s["cases"] and s["verdict"] == NOT_APPLICABLE else "error" if not s["cases"] else None)
        if kind is not None:
            cases.append({"name": "run", "classname": classname, "kind": kind, "message": s["reason"] or s["verdict"],
                          "seconds": s.get("seconds", 0)})
        for a in s.get("attempts") or []:
            cases.append({"name": f"attempt {a['attempt']} (discarded)", "classname": classname,
                          "kind": "failure" if a["failed"] or a["kernel_problems"] else "skipped",
                          "message": f"run again after the emulator failed the guest: {a['fault']}; kept in {a['dir']}",
                          "details": json.dumps(a, indent=1, default=str)[:4000]})
        for name, c in s["cases"].items():
            if c["verdict"] == ERROR:
                kind = "error"
            elif c["verdict"] == NOT_APPLICABLE:
                kind = "skipped"
            elif c["verdict"] == FLAKY:
                kind = "flaky"
            elif not outcome_ok(c["outcome"]):
                kind = "failure"
            else:
                kind = "pass"
            reruns = [f"failed again when run again: {c['reason']}"] if kind == "failure" and c.get("rerun") == "fail" else []
            cases.append({"name": name, "classname": classname, "kind": kind, "seconds": c.get("seconds", 0), "reruns": reruns,
                          "message": f"{c['verdict']} ({c['outcome']}): {c['reason']}",
                          "details": json.dumps({k: v for k, v in c.items() if k not in ("reason",)}, indent=1, default=str)[:4000]})
    return cases


def write_outputs(scenario: Scenario, run_dir: RunDir, results: dict[str, Any]) -> None:
    run_dir.write("results.json", json.dumps(results, indent=2, default=str))
    run_dir.write("summary.txt", summary(scenario, results) + "\n")
    junit.write(scenario.name, junit_cases(scenario.name, results), run_dir.path / "junit.xml")
