"""One night from many cells: `lab results merge DIR... -o NIGHT` gathers the run directories of a
matrix's cells (as the CI engine's artifacts bring them back) into one directory with night.json
(one entry per cell identity, with its verdict, rate, figures and provenance), a merged
results.json and one JUnit file. Each cell's run directory is copied under cells/<id>/ so a report
can link its summary, consoles, kernel logs and program output."""

from __future__ import annotations

import json
import logging
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from lab import __version__
from lab.errors import UsageError
from lab.results import manifest, read_json
from lab.safepaths import check_name, child, copy_tree
from lab.schemas import NightIn, ResultsIn, validated

LOG = logging.getLogger(__name__)

NIGHT_FORMAT = 1


def find_runs(sources: list[Path]) -> list[Path]:
    """Run directories (manifest.json and results.json) at or below each source, a few levels deep."""
    runs: list[Path] = []
    for source in sources:
        if not source.exists():
            raise UsageError(f"{source}: no such directory")
        candidates = [source] + [p.parent for depth in ("*", "*/*", "*/*/*") for p in source.glob(f"{depth}/results.json")]
        for d in candidates:
            if (d / "results.json").is_file() and (d / "manifest.json").is_file() and d not in runs and "subruns" not in d.parts[-3:-1]:
                runs.append(d)
    return runs


def figures(section: dict[str, Any]) -> dict[str, float]:
    """Numbers worth plotting from a sub-run: throughput per case, boot time."""
    out: dict[str, float] = {}
    for name, case in section.get("cases", {}).items():
        runs = case.get("runs") or {}
        mutate = runs.get("mutate") if isinstance(runs, dict) else None
        if isinstance(mutate, dict) and "mib_per_s" in mutate:
            out[f"{name} MiB/s"] = float(mutate["mib_per_s"])
        if isinstance(case.get("mib_per_s"), (int, float)):
            out[f"{name} MiB/s"] = float(case["mib_per_s"])
    boot = section.get("boot", {}).get("seconds") or {}
    if boot:
        out["boot seconds"] = max(float(v) for v in boot.values())
    return out


def accel_of(run: Path, results: dict[str, Any]) -> str | None:
    """kvm or tcg, as the cell's first sub-run booted (its manifest says)."""
    for label in results.get("subruns") or {}:
        sub = run / "subruns" / label / "manifest.json"
        try:
            name = (json.loads(sub.read_text()).get("accel") or {}).get("name")
        except (OSError, ValueError, AttributeError):
            LOG.debug("no accelerator in %s", sub, exc_info=True)
            continue
        if name in ("kvm", "tcg"):
            return str(name)
    return None


def images_of(run: Path, results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """recipe -> {key, resolved_at, packages} of the images the cell's first sub-run booted."""
    for label in results.get("subruns") or {}:
        sub = run / "subruns" / label / "manifest.json"
        try:
            images = json.loads(sub.read_text()).get("images") or {}
        except (OSError, ValueError, AttributeError):
            LOG.debug("no images in %s", sub, exc_info=True)
            continue
        out = {}
        for name, image in images.items() if isinstance(images, dict) else ():
            if isinstance(image, dict) and isinstance(image.get("key"), str):
                packages = image["packages"] if isinstance(image.get("packages"), dict) else {}
                out[str(name)] = {"key": image["key"], "resolved_at": str(image.get("resolved_at") or ""),
                                  "packages": {str(k): str(v) for k, v in packages.items()}}
        if out:
            return out
    return {}


def cell_entry(run: Path, results: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    subruns = results.get("subruns", {})
    section: dict[str, Any] = next(iter(subruns.values()), {}) if subruns else {}
    spec = results.get("cell_spec") or {}
    images = images_of(run, results)
    return {
        "accel": accel_of(run, results),
        "images": {name: image["key"] for name, image in images.items()},
        "_image_details": images,
        "spec": spec,
        "scenario": results.get("scenario"),
        "entry": spec.get("entry") or results.get("scenario"),
        "kernel": spec.get("kernel") or section.get("kernel"),
        "params": spec.get("params") or results.get("options", {}).get("params", {}),
        "release": section.get("release"),
        "verdict": section.get("verdict", "ERROR") if len(subruns) <= 1 else _worst([s["verdict"] for s in subruns.values()]),
        "outcome": section.get("outcome", "error"),
        "reason": section.get("reason", ""),
        "rate": section.get("rate") or next((c["rate"] for c in section.get("cases", {}).values() if c.get("rate")), None),
        "figures": figures(section),
        "subruns": list(subruns),
        # Discarded attempts (the emulator's fault) and flaky cases: shown, never silently merged.
        "attempts": [{"subrun": label, **{k: a.get(k) for k in ("attempt", "fault", "failed", "kernel_problems")}}
                     for label, s in subruns.items() if isinstance(s, dict) for a in (s.get("attempts") or [])
                     if isinstance(a, dict)],
        "flaky": [name for s in subruns.values() if isinstance(s, dict)
                  for name, c in (s.get("cases") or {}).items() if isinstance(c, dict) and c.get("verdict") == "FLAKY"],
        "provenance": {"run": m.get("id"), "lab": m.get("lab"), "host": m.get("host"), "started": m.get("started"),
                       "finished": m.get("finished"), "status": m.get("status"), "source": str(run)},
    }


def _worst(verdicts: list[str]) -> str:
    for v in ("ERROR", "FAIL", "PASS", "N/A"):
        if v in verdicts:
            return v
    return "ERROR"


def missing_entry(cell: Any) -> dict[str, Any]:
    """A cell of the night's matrix that brought back no run directory: MISSING, never a blank."""
    return {"spec": cell.to_dict(), "scenario": cell.scenario, "entry": cell.entry, "kernel": cell.kernel, "params": cell.params,
            "release": None, "verdict": "MISSING", "outcome": "missing", "reason": "no artifact came back for this cell "
            "(its job did not run, or failed before it wrote a run directory)", "rate": None, "figures": {}, "subruns": [],
            "run": None, "provenance": {}, "attempts": [], "flaky": []}


def merge(sources: list[Path], out: Path, matrix: Any = None) -> dict[str, Any]:
    """The night from the run directories under `sources`; with the night's matrix, every cell of it
    that has no run directory is MISSING."""
    # With the matrix, an artifacts directory that never came back is cells that are MISSING, not an error.
    existing = [s for s in sources if s.exists()] if matrix is not None else sources
    runs = find_runs(existing) if existing else []
    LOG.debug("merging %d run directories from %s into %s", len(runs), ", ".join(map(str, sources)), out)
    if not runs and matrix is None:
        raise UsageError(f"no run directories (manifest.json and results.json) in {', '.join(map(str, sources))}")
    if out.exists() and any(out.iterdir()) and not (out / "night.json").exists():
        raise UsageError(f"-o {out}: exists and is not a night; give a new directory")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    night: dict[str, Any] = {"format": NIGHT_FORMAT, "name": out.name, "merged": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "lab": {"version": __version__}, "cells": {}, "superseded": []}
    merged_results: dict[str, Any] = {"night": out.name, "cells": {}}
    suites = ET.Element("testsuites", name=out.name)
    night_images: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: str(manifest(r).get("finished", ""))):
        results = validated(ResultsIn, read_json(run / "results.json", "results"), run / "results.json", "results.json")
        m = manifest(run, strict=True)
        # The cell id comes from the artifact: a name, never a path (it becomes cells/<id> under -o).
        cell_id = check_name(str(results.get("cell") or f"{results.get('scenario') or 'run'}_{run.name}"),
                             f"{run}: cell id")
        if cell_id in night["cells"]:
            night["superseded"].append(night["cells"][cell_id]["provenance"])
        entry = cell_entry(run, results, m)
        target = child(out / "cells", cell_id, "cell id")
        if target.resolve() != run.resolve():
            if target.is_symlink():
                target.unlink()
            shutil.rmtree(target, ignore_errors=True)
            copy_tree(run, target, f"cell {cell_id}", ignore=shutil.ignore_patterns("*.bundle.tar.gz", "fstests.tar.gz"))
        for name, image in entry.pop("_image_details").items():
            night_images.setdefault(name, image)
        entry["run"] = f"cells/{cell_id}"
        night["cells"][cell_id] = entry
        merged_results["cells"][cell_id] = results
        junit = run / "junit.xml"
        if junit.exists():
            try:
                suite = ET.parse(junit).getroot()
            except ET.ParseError as exc:
                raise UsageError(f"{junit}: damaged JUnit XML ({exc})") from None
            suite.set("name", cell_id)
            suites.append(suite)
    if matrix is not None:
        night["matrix"] = {"name": matrix.name, "cells": [c.id for c in matrix.cells]}
        for cell in matrix.cells:
            if cell.id not in night["cells"]:
                night["cells"][cell.id] = missing_entry(cell)
    kernels = {c["kernel"]: c["release"] for c in night["cells"].values() if c.get("kernel") and c.get("release")}
    night["kernels"] = kernels
    # The images the night booted, with their package versions: the report shows what moved.
    night["images"] = night_images
    (out / "night.json").write_text(json.dumps(night, indent=2, default=str))
    (out / "results.json").write_text(json.dumps(merged_results, indent=2, default=str))
    ET.indent(suites)
    ET.ElementTree(suites).write(out / "junit.xml", encoding="unicode", xml_declaration=True)
    return night


def load(night: Path) -> dict[str, Any]:
    data = read_json(night / "night.json", "night")
    if data.get("format") != NIGHT_FORMAT or not isinstance(data.get("cells"), dict):
        raise UsageError(f"{night}: not a night made by 'lab results merge' (format {data.get('format')!r})")
    data = validated(NightIn, data, night / "night.json", "night.json")
    for cid, cell in data["cells"].items():
        check_name(cid, f"{night}: cell id")
        if cell["run"] is not None:
            child(night, cell["run"], f"{night}: cell {cid}'s run")  # a cell's files are inside the night
    return data
