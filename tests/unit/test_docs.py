"""The documentation: README short with its two commands and live links; generated pages (command
reference, man page, scenario options, topology parameters, config keys, figures) equal to what the
code makes now; every figure with its date, machine, commit and command; no measured figure typed
into the prose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lab import docgen, figures

ROOT = Path(__file__).resolve().parents[2]
LINK_RE = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_readme_is_short_and_gives_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    assert "tox -e lab -- run stable-pages" in text and "\n    tox    " in text


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md", "kernel/README.md"])
def test_relative_links_outside_the_site_point_at_files(name):
    """MkDocs checks the site's links (strict); these files are read on the forge, outside it."""
    source = ROOT / name
    for target, _ in LINK_RE.findall(source.read_text()):
        if "://" in target:
            continue
        assert (source.parent / target).exists(), f"{name}: link to {target}, which does not exist"


def test_generated_pages_are_current(monkeypatch):
    """`python -m lab.docgen --check` is what CI runs; a stale page names itself."""
    monkeypatch.setenv("LAB_CONFIG", "/dev/null")
    assert docgen.main(["--check"]) == 0, "run `python -m lab.docgen` and commit the pages"


def test_a_changed_parser_makes_the_reference_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_CONFIG", "/dev/null")
    for rel in [*docgen.PAGES, "docs/figures.toml", "docs/figures.json"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    page = tmp_path / "docs/reference/cli.md"
    page.write_text(page.read_text().replace("--debug-symbols", "--debug-symbol"))
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "docs/reference/cli.md" in capsys.readouterr().err


def test_every_figure_has_its_date_machine_commit_and_command():
    listing = figures.load_list(ROOT / "docs/figures.toml")
    record = json.loads((ROOT / "docs/figures.json").read_text())
    for f in listing:
        r = record.get(f["name"])
        assert r, f"figure {f['name']} was never measured: python -m lab.figures measure {f['name']}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", r["date"]) and r["commit"] and r["output"]
        assert r["command"] == "lab " + " ".join(f["command"]) and r["machine"]["cpus"] >= 1
        assert not any("/lab-figures-" in line for line in r["output"]), "a temporary path is no figure"


def _prose(text: str) -> str:
    """The text outside code blocks: command output quoted in a block is an example, not a claim."""
    return re.sub(r"```.*?```", "", re.sub(r"(?m)^    .*$", "", text), flags=re.DOTALL)


MEASURED = re.compile(r"\b\d+(\.\d+)? ?(MiB/s|GiB/s|MB/s|IOPS)\b|\b\d+(\.\d+)? (s|min|minutes|seconds) (here|under TCG)\b")


@pytest.mark.parametrize("page", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
                         + ["README.md"])
def test_no_measured_figure_is_typed_into_the_prose(page):
    """Figures live on the figures page, measured by its script with their date and command."""
    if page in ("docs/figures.md",):
        return
    hits = [m.group(0) for m in MEASURED.finditer(_prose((ROOT / page).read_text()))]
    assert not hits, f"{page}: {hits[:3]}: quote the figures page instead"


def test_a_bad_figures_list_is_one_line(tmp_path):
    bad = tmp_path / "figures.toml"
    bad.write_text('[[figure]]\nname = "x"\nwhat = "y"\ncommand = "bench boot; rm -rf /"\n')
    with pytest.raises(Exception, match="command is a list of lab's arguments"):
        figures.load_list(bad)
    bad.write_text('[[figure]]\nname = "Bad Name"\nwhat = "y"\ncommand = ["bench"]\n')
    with pytest.raises(Exception, match="a unique lower-case name"):
        figures.load_list(bad)


def test_a_scenario_loaded_in_this_process_stays_out_of_the_pages(tmp_path, monkeypatch):
    """`lab run ./mine.py` (or another package's plugin) adds to the registry; the reference describes
    the lab as shipped, so a test that loaded one earlier cannot make the pages look stale."""
    from lab.scenarios import base

    monkeypatch.setenv("LAB_CONFIG", "/dev/null")
    mine = tmp_path / "mine.py"
    mine.write_text("from lab.scenarios.framework import Scenario\n\nclass Mine(Scenario):\n    name = 'docs-test-mine'\n"
                    "    topology = 'nvme-pi'\n\n    def exercise(self, ctx):\n        pass\n")
    name = base.load_file(mine)
    try:
        assert name in base.scenarios()
        assert docgen.main(["--check"]) == 0
        assert name in base.scenarios(), "the registry is restored after the pages are made"
    finally:
        base._REGISTRY.pop(name, None)
