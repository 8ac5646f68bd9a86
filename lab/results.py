"""Reading results back: list, show, compare across runs and kernels, JUnit export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lab.errors import UsageError
from lab.paths import results_dir


def find_run(ref: str) -> Path:
    """A run id, a unique part of one, 'latest', or a path."""
    as_path = Path(ref)
    if as_path.is_dir() and (as_path / "manifest.json").exists():
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


def manifest(run: Path) -> dict:
    try:
        return json.loads((run / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def list_runs() -> list[dict]:
    out = []
    for p in sorted(results_dir().iterdir()):
        if (p / "manifest.json").exists():
            m = manifest(p)
            out.append({"id": p.name, "kind": m.get("kind"), "status": m.get("status"), "verdicts": m.get("verdicts", {}),
                        "started": m.get("started")})
    return out


def results_of(run: Path) -> dict:
    f = run / "results.json"
    if not f.exists():
        raise UsageError(f"{run.name} has no scenario results (kind {manifest(run).get('kind')!r})")
    return json.loads(f.read_text())


def compare(runs: list[Path]) -> str:
    """One table of the scenario's figures per kernel across several runs."""
    from lab.scenarios.stable_pages import table

    merged: dict = {"kernels": {}}
    for run in runs:
        res = results_of(run)
        for label, section in res.get("kernels", {}).items():
            key = label if len(runs) == 1 else f"{label}@{run.name[9:15]}"
            merged["kernels"][key] = section
    return table(merged)


def junit(runs: list[Path], out: Path | None) -> str:
    if len(runs) == 1 and out is None:
        return (runs[0] / "junit.xml").read_text()
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites")
    for run in runs:
        f = run / "junit.xml"
        if f.exists():
            suites.append(ET.parse(f).getroot())
    ET.indent(suites)
    text = ET.tostring(suites, encoding="unicode")
    if out:
        out.write_text(text)
    return text


def copy_junit(run: Path, dest: Path) -> None:
    shutil.copy(run / "junit.xml", dest)
