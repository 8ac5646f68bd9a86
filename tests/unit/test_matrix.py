"""Nightly matrices without guests: expansion, exclusions, stable identities, validation of every
cell before anything boots, the emitted GitHub and GitLab files checked against the engines'
published schemas, a night merged from run directories, and the report's classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import matrix, night, report
from lab.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


def test_expansion_exclusions_and_stable_ids(tmp_path):
    m = matrix.load(write(tmp_path, """
[matrix]
name = "t"
kernels = ["debian:6.12", "debian:7.3"]
[[entry]]
scenario = "stable-pages"
options = { direction = "write" }
params = { pi = [1, 3], pif = [0, 2] }
exclude = [{ pi = 1, pif = 2 }]
"""))
    assert len(m.cells) == 6  # (2 x 2 - 1) formats x 2 kernels
    ids = [c.id for c in m.cells]
    assert len(set(ids)) == 6 and ids[0].startswith("stable-pages_debian-6.12_pi1-pif0_")
    again = matrix.load(write(tmp_path, (tmp_path / "m.toml").read_text()))
    assert [c.id for c in again.cells] == ids  # the same cell is the same cell in two nights
    assert m.cells[0].scenario_options() == {"direction": "write", "kernels": ["debian:6.12"], "params": {"pi": 1, "pif": 0}}
    assert matrix.select(m, [ids[2]]) == [m.cells[2]]
    with pytest.raises(UsageError, match="no cell 'nope'"):
        matrix.select(m, ["nope"])


@pytest.mark.parametrize("text,message", [
    ("[matrix]\n", "no [[entry]] tables"),
    ("[[entry]]\noptions = {}\n", "entry[0].scenario: required key is missing"),
    ("[[entry]]\nscenario = 'stable-pages'\ncolour = 'blue'\n", "entry[0].colour: unknown key"),
    ("[[entry]]\nscenario = 'stable-pages'\noptions = { kernels = ['x'] }\n", "options.kernels"),
    ("[[entry]]\nscenario = 'stable-pages'\n[[entry]]\nscenario = 'stable-pages'\n", "is also made by entry 1"),
    ("[[entry\n", "not valid TOML"),
])
def test_bad_matrix_files(tmp_path, text, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        matrix.load(write(tmp_path, text))


def test_every_cell_is_validated_before_anything_boots(tmp_path):
    m = matrix.load(write(tmp_path, """
[[entry]]
scenario = "stable-pages"
kernels = ["debian:7.3", "debian:nope"]
params = { pi = [1, 3], ms = [0, 8] }
[[entry]]
scenario = "nfs-dio"
kernels = ["debian:7.3"]
options = { only = "size=huge" }
"""))
    problems = matrix.validate(m.cells)
    # pi without metadata (ms=0) twice per kernel, the bad kernel twice more, and nfs-dio's --only.
    assert len(problems) == 7
    assert any("ms0" in p and "needs ms >= 8" in p for p in problems)
    assert any("debian-nope" in p and "debian:MAJOR.MINOR" in p for p in problems)
    assert any(p.startswith("nfs-dio_") and "matches none of the 44 cases" in p for p in problems)


def test_the_shipped_nightly_matrix_is_valid():
    m = matrix.load(REPO / "matrix" / "nightly.toml")
    assert matrix.validate(m.cells) == []
    scenarios = {c.scenario for c in m.cells}
    assert scenarios == {"stable-pages", "nfs-dio", "nfs-p2p", "p2p-block", "nfs-fstests"}
    formats = {(c.params["pi"], c.params["pif"], c.params["lba"]) for c in m.cells if c.scenario == "stable-pages"}
    assert len(formats) == 9 and (3, 2, 4096) in formats and (1, 2, 512) not in formats


@pytest.mark.parametrize("engine,schema", [("--github", "vendor.github-workflows"), ("--gitlab", "vendor.gitlab-ci")])
def test_emitted_workflows_match_the_engines_schemas(tmp_path, engine, schema):
    out = subprocess.run([sys.executable, "-m", "lab", "matrix", "emit", engine, str(REPO / "matrix" / "nightly.toml")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "ci.yml"
    path.write_text(out.stdout)
    check = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    import yaml

    doc = yaml.safe_load(out.stdout)
    if engine == "--github":
        cells = doc["jobs"]["cell"]["strategy"]["matrix"]["cell"]
        assert doc["jobs"]["cell"]["strategy"]["fail-fast"] is False and doc["on"]["schedule"]
        assert doc["jobs"]["report"]["needs"] == "cell"
    else:
        cells = doc["cell"]["parallel"]["matrix"][0]["CELL"]
    assert len(cells) == 31  # the fstests entries: three shards over TCP, two over RDMA


# -- nights and reports ------------------------------------------------------------------------------
def fake_run(root: Path, cell_id: str, kernel: str, verdict: str, outcome: str = "as expected", rate=None,
             finished: str = "2026-11-23T02:00:00", params=None) -> Path:
    """A run directory as `lab matrix run` leaves it (results of a real run are made in the integration test)."""
    run = root / f"run-{cell_id}-{finished[-2:]}"
    sub = run / "subruns" / kernel.replace(":", "-")
    (sub / "machines/vm").mkdir(parents=True)
    (sub / "machines/vm/console.log").write_text("LAB-READY\n")
    section = {"kernel": kernel, "release": "7.3.4" if "7.3" in kernel else "6.12.117", "verdict": verdict, "outcome": outcome,
               "reason": f"{verdict} reason", "cases": {"xfs-write-64K": {"verdict": verdict, "reason": "r", "outcome": outcome,
                                                                       "runs": {"mutate": {"mib_per_s": 12.5}}}},
               "boot": {"seconds": {"vm": 11.0}}}
    if rate:
        section["rate"] = rate
    spec = {"entry": "stable-pages", "scenario": "stable-pages", "kernel": kernel, "params": params or {"pi": 1}}
    (run / "results.json").write_text(json.dumps({"scenario": "stable-pages", "options": {}, "cell": cell_id, "cell_spec": spec,
                                                  "subruns": {kernel.replace(":", "-"): section}}))
    (run / "manifest.json").write_text(json.dumps({"id": run.name, "status": "done", "finished": finished,
                                                   "started": "2026-11-23T01:58:00+0000", "lab": {"version": "0.1.0"}}))
    (run / "summary.txt").write_text("summary\n")
    (run / "junit.xml").write_text('<?xml version="1.0"?><testsuite name="stable-pages" tests="1"><testcase name="x" classname="y"/></testsuite>')
    return run


def test_merge_and_report_classes(tmp_path):
    base_dir, now_dir = tmp_path / "a", tmp_path / "b"
    for d, verdicts in ((base_dir, ("PASS", "FAIL", "PASS", "PASS", "FAIL")), (now_dir, ("FAIL", "PASS", "ERROR", "PASS", "FAIL"))):
        for i, (cid, kernel) in enumerate((("c1", "debian:7.3"), ("c2", "debian:7.3"), ("c3", "debian:7.3"),
                                           ("c4", "debian:6.12"), ("c5", "debian:6.12"))):
            rate = {"failed": 3, "runs": 10} if d == now_dir and cid == "c4" else None
            fake_run(d, cid, kernel, verdicts[i], rate=rate, params={"pi": i})
    # c1 ran twice tonight: the later run counts.
    fake_run(now_dir, "c1", "debian:7.3", "FAIL", finished="2026-11-23T03:00:09", params={"pi": 0})
    baseline = night.merge([base_dir], tmp_path / "night-1")
    tonight = night.merge([now_dir], tmp_path / "night-2")
    assert len(tonight["cells"]) == 5 and len(tonight["superseded"]) == 1
    assert tonight["cells"]["c1"]["provenance"]["finished"] == "2026-11-23T03:00:09"
    assert (tmp_path / "night-2/cells/c1/summary.txt").exists() and (tmp_path / "night-2/junit.xml").exists()
    assert baseline["kernels"] == {"debian:7.3": "7.3.4", "debian:6.12": "6.12.117"}
    index, regressions = report.write(tmp_path / "night-2", tmp_path / "report", tmp_path / "night-1")
    assert regressions == ["c1", "c3"]  # PASS to FAIL, and PASS to ERROR
    page = index.read_text()
    for cid, cls in (("c1", "regression"), ("c2", "fixed"), ("c3", "regression"), ("c4", "flaky"), ("c5", "expected-failure")):
        assert f'id="cell-{cid}" data-class="{cls}"' in page, cid
    assert (tmp_path / "report/throughput.png").exists() and (tmp_path / "report/boot.png").exists()
    # Without a baseline the expectations decide.
    _, regressions = report.write(tmp_path / "night-2", tmp_path / "report-alone")
    assert regressions == []


def test_classes_without_a_baseline():
    assert report.classify({"verdict": "FAIL", "outcome": "unexpected failure (regression)"}, None) == "regression"
    assert report.classify({"verdict": "FAIL", "outcome": "as expected"}, None) == "expected-failure"
    assert report.classify({"verdict": "PASS", "outcome": "unexpected pass (finding)"}, None) == "fixed"
    assert report.classify({"verdict": "N/A"}, None) == "na"
    # A cell already failing for an expected reason must not hide a new, unexpected failure.
    assert report.classify({"verdict": "FAIL", "outcome": "unexpected failure (regression)"}, {"verdict": "FAIL"}) == "regression"
    assert report.classify({"verdict": "FAIL", "outcome": "as expected"}, {"verdict": "FAIL"}) == "expected-failure"
    assert report.classify({"verdict": "N/A"}, {"verdict": "PASS"}) == "regression"  # the cell stopped testing anything
    assert report.classify({"verdict": "ERROR"}, {"verdict": "PASS"}) == "regression"
    assert report.classify({"verdict": "MISSING"}, {"verdict": "PASS"}) == "missing"


def test_a_retried_sub_run_and_a_flaky_case_show_in_the_night_and_the_report(tmp_path):
    """A sub-run run again after the emulator's fault, and a suite test that failed then passed: the
    night carries both and the report's cell says so next to its verdict."""
    now_dir = tmp_path / "b"
    run = fake_run(now_dir, "c1", "debian:7.3", "PASS")
    results = json.loads((run / "results.json").read_text())
    section = results["subruns"]["debian-7.3"]
    section["attempts"] = [{"attempt": 1, "fault": "vm: the guest kernel oopsed on an int3", "failed": [], "kernel_problems": [],
                            "dir": "attempt-1"}]
    section["cases"]["generic/004 (tcp)"] = {"verdict": "FLAKY", "outcome": "flaky", "reason": "flaky"}
    (run / "results.json").write_text(json.dumps(results))
    tonight = night.merge([now_dir], tmp_path / "night")
    cell = tonight["cells"]["c1"]
    assert cell["attempts"][0]["fault"].startswith("vm: the guest kernel oopsed") and cell["flaky"] == ["generic/004 (tcp)"]
    index, _ = report.write(tmp_path / "night", tmp_path / "report")
    page = index.read_text()
    assert 'data-class="flaky"' in page
    assert "[run again 1x after emulator faults; 1 flaky: generic/004 (tcp)]" in page


def test_a_missing_cell_and_a_lasting_regression_fail_the_night_until_acknowledged(tmp_path):
    """The night knows its matrix: a cell with no artifact is MISSING (counted, exit non-zero). A
    regression stays flagged with its first night until the cell passes again or an ack names it."""
    from lab.matrix import load

    m = tmp_path / "m.toml"
    m.write_text('[matrix]\nname = "n"\nkernels = ["debian:7.3"]\n[[entry]]\nscenario = "stable-pages"\nparams = { pi = [1, 3] }\n')
    cells = [c.id for c in load(m).cells]
    night1, night2, night3 = (tmp_path / f"night-{i}" for i in (1, 2, 3))
    fake_run(tmp_path / "a1", cells[0], "debian:7.3", "PASS", params={"pi": 1})
    fake_run(tmp_path / "a1", cells[1], "debian:7.3", "PASS", params={"pi": 3})
    night.merge([tmp_path / "a1"], night1, load(m))
    report.write(night1, tmp_path / "r1")
    # Night 2: pi=1 regresses, pi=3's job never came back.
    fake_run(tmp_path / "a2", cells[0], "debian:7.3", "FAIL", outcome="unexpected failure (regression)", params={"pi": 1})
    merged = night.merge([tmp_path / "a2"], night2, load(m))
    assert merged["cells"][cells[1]]["verdict"] == "MISSING"
    index, failing = report.write(night2, tmp_path / "r2", night1)
    assert failing == [cells[0], cells[1]]
    assert "1 cell(s) of the matrix brought back no result (MISSING)" in index.read_text()
    # Night 3: still failing (an expected-looking FAIL now): still a regression, since night-2, unless acknowledged.
    fake_run(tmp_path / "a3", cells[0], "debian:7.3", "FAIL", params={"pi": 1})
    fake_run(tmp_path / "a3", cells[1], "debian:7.3", "PASS", params={"pi": 3})
    night.merge([tmp_path / "a3"], night3, load(m))
    index, failing = report.write(night3, tmp_path / "r3", night2)
    assert failing == [cells[0]] and "since night-2" in index.read_text()
    assert "last nights: PASS FAIL" in index.read_text()  # the cell's history, oldest first
    ack = tmp_path / "ack.toml"
    ack.write_text(f'[[ack]]\ncell = "{cells[0]}"\nwhy = "bisected to patch 3, reported upstream"\n')
    index, failing = report.write(night3, tmp_path / "r3b", night2, ack)
    assert failing == [] and "acknowledged: bisected to patch 3" in index.read_text()


def test_a_flaky_cell_regresses_when_its_rate_is_clear_of_last_nights():
    assert report.classify({"verdict": "FAIL", "rate": {"failed": 2, "runs": 20}}, {"verdict": "FAIL", "rate": {"failed": 1, "runs": 20}}) == "flaky"
    assert report.classify({"verdict": "FAIL", "rate": {"failed": 16, "runs": 20}}, {"verdict": "FAIL", "rate": {"failed": 1, "runs": 20}}) == "regression"


def test_kcidb_export_of_a_night_is_valid_kcidb_json(tmp_path):
    """kcidb-io (KCIDB's own schema package) validates what `lab results kcidb` writes: a night with a
    passing cell, an expected failure and a missing one."""
    import kcidb_io

    from lab import kcidb
    from lab.matrix import load

    m = tmp_path / "m.toml"
    m.write_text('[matrix]\nname = "n"\nkernels = ["debian:7.3"]\n[[entry]]\nscenario = "stable-pages"\nparams = { pi = [1, 2, 3] }\n')
    cells = [c.id for c in load(m).cells]
    fake_run(tmp_path / "a", cells[0], "debian:7.3", "PASS", params={"pi": 1})
    fake_run(tmp_path / "a", cells[1], "debian:7.3", "FAIL", params={"pi": 2})
    night.merge([tmp_path / "a"], tmp_path / "night", load(m))
    doc = kcidb.export(tmp_path / "night")
    kcidb_io.schema.LATEST.validate(doc)
    assert sorted(t["status"] for t in doc["tests"]) == ["FAIL", "MISS", "PASS"]
    assert len(doc["checkouts"]) == 1 and all(t["id"].startswith("lab:") for t in doc["tests"])
    one_run = next((tmp_path / "a").iterdir())
    kcidb_io.schema.LATEST.validate(kcidb.export(one_run))


def test_the_report_stands_alone_and_says_what_colour_cannot(tmp_path):
    """Published alone (moved away from the night), every link still opens; a kernel whose release
    moved since last night is flagged; each cell names its class and reason in text."""
    import re
    import shutil as sh

    fake_run(tmp_path / "a", "c1", "debian:7.3", "PASS")
    fake_run(tmp_path / "b", "c1", "debian:7.3", "FAIL", outcome="unexpected failure (regression)")
    base = night.merge([tmp_path / "a"], tmp_path / "night-1")
    base["cells"]["c1"]["release"] = base["kernels"]["debian:7.3"] = "7.3.3+deb13-amd64"
    (tmp_path / "night-1/night.json").write_text(json.dumps(base))
    night.merge([tmp_path / "b"], tmp_path / "night-2")
    report.write(tmp_path / "night-2", tmp_path / "report", tmp_path / "night-1")
    sh.move(str(tmp_path / "report"), str(tmp_path / "published"))
    sh.rmtree(tmp_path / "night-2")
    page = (tmp_path / "published/index.html").read_text()
    hrefs = re.findall(r'href="([^"#]+)"', page)
    assert hrefs and all((tmp_path / "published" / h).is_file() for h in hrefs), hrefs
    assert "changed</strong> from 7.3.3+deb13-amd64" in page and "release 7.3.3+deb13-amd64 -&gt; 7.3.4" in page
    assert '<span class="cls">regression</span>' in page and '<div class="reason">FAIL reason</div>' in page
