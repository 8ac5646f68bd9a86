"""A small nightly matrix end to end on this host: plan, run every cell in real guests, merge the
night, report it against a baseline night made here, and check the page in a real headless
browser (Debian's chromium driven by playwright): the grid's classes, the links, a screenshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# A reproducer that fails on every other run: a flaky cell whose rate is known in advance.
ALTERNATE = """#!/bin/sh
n=$(cat /root/repro/count 2>/dev/null || echo 0); echo $((n + 1)) > /root/repro/count
[ $((n % 2)) -eq 0 ]
"""

MATRIX = """
[matrix]
name = "ci"

[[entry]]
name = "stable-pages"
scenario = "stable-pages"
kernels = ["debian:6.12", "debian:7.3"]
options = {{ direction = "write", duration = 3, control_duration = 1, size = 8 }}
params = {{ pi = 1 }}

[[entry]]
name = "no-mutation"
scenario = "stable-pages"
kernels = ["debian:7.3"]
options = {{ direction = "write", duration = 2, control = false, fault = "no-mutation", size = 8 }}

[[entry]]
name = "alternate"
scenario = "repro"
kernels = ["debian:7.3"]
options = {{ command = "sh alternate.sh", put = ["{script}"], repeat = 4 }}

[[entry]]
name = "p2p-root-port"
scenario = "p2p-block"
kernels = ["debian:6.12"]
options = {{ placements = ["root-port"] }}
"""


def lab(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *argv], capture_output=True, text=True, timeout=3600,
                          env=dict(os.environ, **(env or {})))


def test_matrix_plan_run_merge_report_and_browser(tmp_path):
    script = tmp_path / "alternate.sh"
    script.write_text(ALTERNATE)
    spec = tmp_path / "ci.toml"
    spec.write_text(MATRIX.format(script=script))
    results = tmp_path / "results"
    env = {"LAB_RESULTS": str(results)}

    plan = lab("matrix", "plan", str(spec), env=env)
    assert plan.returncode == 0, plan.stderr
    assert "matrix ci: 5 cell(s)" in plan.stdout
    run = lab("matrix", "run", str(spec), env=env)
    assert run.returncode == 1, run.stdout + run.stderr  # an error and a flaky cell are not "as expected"
    merged = lab("results", "merge", str(results), "-o", str(tmp_path / "night"))
    assert merged.returncode == 0, merged.stderr
    night = json.loads((tmp_path / "night/night.json").read_text())
    by_entry = {(c["entry"], c["kernel"]): c for c in night["cells"].values()}
    assert by_entry[("stable-pages", "debian:7.3")]["verdict"] == "PASS"
    assert by_entry[("stable-pages", "debian:6.12")]["verdict"] == "FAIL"
    assert by_entry[("no-mutation", "debian:7.3")]["verdict"] == "ERROR"
    assert by_entry[("alternate", "debian:7.3")]["rate"]["failed"] == 2
    assert by_entry[("p2p-root-port", "debian:6.12")]["verdict"] == "N/A"
    # The night carries the image each cell booted, keyed by its Debian package versions.
    image = night["images"]["lab-trixie"]
    assert len(image["packages"]) > 200 and "libc6" in image["packages"], image.keys()
    assert all(c["images"] == {"lab-trixie": image["key"]} for c in night["cells"].values())
    # The plan now knows how long each cell takes.
    assert "never run here" not in lab("matrix", "plan", str(spec), env=env).stdout

    # A baseline night made here: last night 7.3 failed (tonight: fixed) and 6.12 passed (tonight: regression).
    baseline = tmp_path / "baseline"
    shutil.copytree(tmp_path / "night", baseline)
    base = json.loads((baseline / "night.json").read_text())
    base["name"] = "baseline"
    for cell in base["cells"].values():
        if cell["entry"] == "stable-pages":
            cell["verdict"] = "FAIL" if cell["kernel"] == "debian:7.3" else "PASS"
            cell["figures"]["boot seconds"] = cell["figures"].get("boot seconds", 10) + 2
        cell["images"] = {"lab-trixie": "0123456789abcdef"}
    # Last night's image had an older libc6: a Debian update since then is drift, named by package.
    base["images"]["lab-trixie"].update(key="0123456789abcdef")
    base["images"]["lab-trixie"]["packages"]["libc6"] = "2.41-1"
    (baseline / "night.json").write_text(json.dumps(base))
    rep = lab("report", str(tmp_path / "night"), "--baseline", str(baseline), "-o", str(tmp_path / "report"))
    assert rep.returncode == 1 and "1 cell(s) regressed or missing: stable-pages_debian-6.12" in rep.stderr, rep.stderr
    page = (tmp_path / "report/index.html").read_text()
    assert f"libc6 2.41-1 -&gt; {image['packages']['libc6']}" in page and "1 package(s) moved" in page
    assert f"image lab-trixie 0123456789abcdef -&gt; {image['key']}" in page
    check_in_browser(tmp_path / "report" / "index.html", night, tmp_path)


def check_in_browser(index: Path, night: dict, out: Path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    expected = {}
    for cid, c in night["cells"].items():
        expected[cid] = {("stable-pages", "debian:7.3"): "fixed", ("stable-pages", "debian:6.12"): "regression",
                         ("no-mutation", "debian:7.3"): "error", ("alternate", "debian:7.3"): "flaky",
                         ("p2p-root-port", "debian:6.12"): "na"}[(c["entry"], c["kernel"])]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(index.as_uri())
        for cid, cls in expected.items():
            cell = page.locator(f"[id=\"cell-{cid}\"]")
            assert cell.get_attribute("data-class") == cls, cid
            assert cls in (cell.get_attribute("class") or "")
        assert "regression" in page.locator("#regressions").inner_text()
        assert page.locator("img[alt='Boot times across nights']").count() == 1
        page.screenshot(path=str(out / "report.png"), full_page=True)
        # A cell's summary link opens the run's summary.
        regression = next(cid for cid, cls in expected.items() if cls == "regression")
        page.locator(f"[id=\"cell-{regression}\"] > a").click()
        page.wait_for_load_state()
        assert "debian-6.12" in page.content() and page.url.endswith("summary.txt")
        browser.close()
    assert (out / "report.png").stat().st_size > 10_000
    print(f"report screenshot: {out / 'report.png'}")
