"""Results where kernel CI people read them: a run or a night as KCIDB JSON (schema 5.3): one
checkout and one build per kernel, one test per case with its status, duration and log, under
the origin "lab". `lab results kcidb RUN|NIGHT` writes it; kcidb-io validates it in the tests."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.results import manifest, read_json
from lab.schemas import NightIn, ResultsIn, validated

LOG = logging.getLogger(__name__)
ORIGIN = "lab"
VERSION = {"major": 5, "minor": 3}
# The lab's verdicts in KCIDB's words: FLAKY passed in the end (misc says it was flaky), N/A did not apply.
STATUS = {"PASS": "PASS", "FAIL": "FAIL", "ERROR": "ERROR", "N/A": "SKIP", "FLAKY": "PASS", "INFO": "DONE", "MISSING": "MISS"}


def _id(*parts: str) -> str:
    """An id the origin makes unique: readable, with a short digest of everything it stands for."""
    text = "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", p) for p in parts)[:120]
    return f"{ORIGIN}:{text}_{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:8]}"


def _path(*parts: str) -> str:
    """A KCIDB test path: dot-separated words of letters, digits, '_' and '-'."""
    return ".".join(re.sub(r"[^A-Za-z0-9_-]+", "_", p).strip("_") or "_" for p in parts if p)


def rfc3339(value: Any) -> str | None:
    """A manifest's time ("2026-12-07T13:20:22+0000") as RFC 3339, which KCIDB requires ("+00:00")."""
    from datetime import datetime

    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S%z").isoformat()
    except ValueError:
        return None


def _file_uri(path: Path) -> str:
    return path.resolve().as_uri()


class Report:
    def __init__(self) -> None:
        self.checkouts: dict[str, dict[str, Any]] = {}
        self.builds: dict[str, dict[str, Any]] = {}
        self.tests: list[dict[str, Any]] = []

    def kernel(self, ref: str, release: str | None, identity: dict[str, Any]) -> str:
        """The checkout and build of a kernel (once per kernel); returns the build id."""
        checkout_id = _id("checkout", ref)
        build_id = _id("build", ref, release or "", str(identity.get("sha256", "")))
        self.checkouts.setdefault(checkout_id, {"id": checkout_id, "origin": ORIGIN, "tree_name": ref, "valid": True,
                                                "comment": f"{ref} ({release or 'release unknown'})"})
        build: dict[str, Any] = {"id": build_id, "checkout_id": checkout_id, "origin": ORIGIN, "architecture": "x86_64",
                                 "status": "PASS", "comment": release or ref, "config_name": str(identity.get("kind") or "packaged")}
        if identity.get("sha256"):
            build["misc"] = {"vmlinuz_sha256": identity["sha256"]}
        self.builds.setdefault(build_id, build)
        return build_id

    def run(self, run: Path, results: dict[str, Any], m: dict[str, Any]) -> None:
        scenario = str(results.get("scenario") or "run")
        for label, section in (results.get("subruns") or {}).items():
            sub = run / "subruns" / label
            sub_manifest = manifest(sub) if (sub / "manifest.json").is_file() else {}
            identity: dict[str, Any] = next(iter((sub_manifest.get("kernels") or {}).values()), {})
            build_id = self.kernel(str(section.get("kernel") or identity.get("ref") or label), section.get("release"), identity)
            accel = (sub_manifest.get("accel") or {}).get("name", "?")
            environment = {"comment": f"QEMU ({accel}), topology {(sub_manifest.get('topology') or {}).get('name', '?')}",
                           "misc": {"accel": accel, "facets": section.get("facets", {})}}
            log = next((p for p in (sub / "machines").glob("*/console.log")), None) if (sub / "machines").is_dir() else None
            cases = section.get("cases") or {}
            if not cases:  # a sub-run with no case (a boot that failed) is one test of its own
                cases = {"run": {"verdict": section.get("verdict", "ERROR"), "reason": section.get("reason", "")}}
            for name, case in cases.items():
                test: dict[str, Any] = {
                    "id": _id(str(m.get("id") or run.name), label, name), "build_id": build_id, "origin": ORIGIN,
                    "path": _path(scenario, *name.replace("/", " ").replace("(", " ").replace(")", " ").split()),
                    "status": STATUS.get(str(case.get("verdict")), "ERROR"), "comment": str(case.get("reason", ""))[:1000],
                    "environment": environment,
                    "misc": {"verdict": case.get("verdict"), "outcome": case.get("outcome"), "run": str(m.get("id") or run.name)},
                }
                if isinstance(case.get("seconds"), (int, float)):
                    test["duration"] = float(case["seconds"])
                started = rfc3339(m.get("started"))
                if started:
                    test["start_time"] = started
                if log is not None:
                    test["log_url"] = _file_uri(log)
                if case.get("verdict") == "FLAKY":
                    test["misc"]["flaky"] = True
                self.tests.append(test)

    def document(self) -> dict[str, Any]:
        return {"version": VERSION, "checkouts": list(self.checkouts.values()), "builds": list(self.builds.values()),
                "tests": self.tests}


def export(source: Path) -> dict[str, Any]:
    """KCIDB JSON of a run directory or of a night (every cell, missing ones as MISS)."""
    report = Report()
    if (source / "night.json").is_file():
        from lab.night import load

        night = validated(NightIn, load(source), source / "night.json", "night.json")
        for cid, cell in night["cells"].items():
            if cell.get("run"):
                run = source / cell["run"]
                report.run(run, validated(ResultsIn, read_json(run / "results.json", "results"), run / "results.json",
                                          "results.json"), manifest(run))
            else:
                build_id = report.kernel(cell["kernel"], cell.get("release"), {})
                report.tests.append({"id": _id(night["name"], cid), "build_id": build_id, "origin": ORIGIN,
                                     "path": _path(cell.get("scenario") or cell["entry"]), "status": STATUS["MISSING"],
                                     "comment": cell.get("reason", ""), "misc": {"cell": cid, "verdict": "MISSING"}})
    elif (source / "results.json").is_file():
        results = validated(ResultsIn, read_json(source / "results.json", "results"), source / "results.json", "results.json")
        report.run(source, results, manifest(source))
    else:
        raise UsageError(f"{source}: neither a run directory (results.json) nor a night (night.json)")
    return report.document()
