"""lab review's logic: the shipped map is valid, the touched files pick the checks, what counts as
worse, the reply a maintainer reads (under 80 columns), and a documentation-only series reviewed
for real from the command line (nothing to build: it says why and exits 0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cli, review
from lab.kernels.series import load_series
from lab.scenarios.outputs import Outcome


def make_mbox(tmp_path: Path, files: dict[str, str], subject: str = "doc: explain the thing") -> Path:
    """A one-patch mbox from a scratch git repository, as `git format-patch` writes it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=T", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    for rel in files:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("old\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)
    for rel, text in files.items():
        (repo / rel).write_text(text)
    subprocess.run([*git, "commit", "-q", "-am", subject], check=True)
    mbox = tmp_path / "series.mbox"
    mbox.write_text(subprocess.run([*git, "format-patch", "--stdout", "-1", "HEAD"], check=True, capture_output=True, text=True).stdout)
    return mbox


def test_the_shipped_map_is_valid_and_covers_the_issue_paths():
    checks = {c.name: c for c in review.load_map(review.DEFAULT_MAP)}
    assert checks["nfs-dio"].matches("fs/nfs/direct.c") and checks["nfs-dio"].matches("net/sunrpc/xprtrdma/rw.c")
    assert checks["p2p-block"].matches("drivers/pci/p2pdma.c") and not checks["p2p-block"].matches("drivers/pci/p2pdma.h")
    assert checks["stable-pages"].matches("fs/iomap/direct-io.c") and checks["pin-audit"].matches("mm/gup.c")
    assert checks["netfs-dio"].matches("fs/smb/client/file.c")


def test_the_touched_files_pick_the_checks(tmp_path):
    mbox = make_mbox(tmp_path, {"fs/nfs/direct.c": "new\n", "Documentation/x.rst": "doc\n"}, "nfs: direct: fix")
    series = load_series(str(mbox))
    assert review.touched_files(series) == ["Documentation/x.rst", "fs/nfs/direct.c"]
    plan = review.plan(series, review.load_map(review.DEFAULT_MAP))
    assert [p.check.name for p in plan.chosen] == ["nfs-dio", "nfs-p2p", "nfs-fstests"]
    assert plan.chosen[0].files == ["fs/nfs/direct.c"] and "stable-pages" in [c.name for c in plan.skipped]


def outcome(base: dict, series: dict) -> Outcome:
    return Outcome(run_dir=None, ok=True, table="", results={"subruns": {  # type: ignore[arg-type]
        "base": {"kernel": "build:b", "verdict": "PASS", "cases": base},
        "series": {"kernel": "build:s", "verdict": "FAIL", "cases": series}}})


def test_what_counts_as_worse():
    check = review.Check(name="nfs-dio", scenario="nfs-dio", paths=["fs/nfs/"])
    got = review.compare(check, outcome(
        {"tcp": {"verdict": "PASS"}, "rdma": {"verdict": "PASS"}, "x": {"verdict": "FAIL"}},
        {"tcp": {"verdict": "FAIL", "failed": [{"name": "align=512 size=page", "error": "data differs at file offset 512"}]},
         "rdma": {"verdict": "ERROR", "reason": "no I/O was done"}, "x": {"verdict": "PASS"}}), "build:b", "build:s")
    assert [(c.case, c.worse) for c in got] == [("tcp", True), ("rdma", False)]
    assert "align=512 size=page: data differs at file offset 512" in got[0].detail
    # Rates: worse only when the intervals are clear of each other.
    close = review.compare(check, outcome({"c": {"verdict": "FLAKY", "rate": {"failed": 2, "runs": 20}}},
                                          {"c": {"verdict": "FLAKY", "rate": {"failed": 4, "runs": 20}}}), "build:b", "build:s")
    clear = review.compare(check, outcome({"c": {"verdict": "PASS", "rate": {"failed": 0, "runs": 30}}},
                                          {"c": {"verdict": "FLAKY", "rate": {"failed": 12, "runs": 30}}}), "build:b", "build:s")
    assert close == [] and [c.worse for c in clear] == [True]


def test_the_reply_fits_a_mail_and_names_the_patch(tmp_path):
    mbox = make_mbox(tmp_path, {"fs/nfs/direct.c": "new\n"}, "nfs: direct: start write requests at the page")
    series = load_series(str(mbox))
    plan = review.plan(series, review.load_map(review.DEFAULT_MAP))
    rev = review.Review(str(mbox), "linux-source-7.3", kernels={"base": "7.3.4-lab", "series": "7.3.4-lab+"})
    rev.changes = [review.Change("nfs-dio", "nfs-dio", "tcp", "PASS", "FAIL", "1 sub-case(s) failed, first align=512 size=page "
                                 "off=aligned: data differs at file offset 512 (expected 0x5a, read 0x00) " * 2, True,
                                 {"run": "/r/b", "result": {"changed": True, "first_bad": {"label": "patch 2/3 nfs: direct: start "
                                                                                                      "write requests at the page"}}})]
    text = review.reply(rev, plan, 1)
    assert all(len(line) < 80 for line in text.splitlines()), [line for line in text.splitlines() if len(line) >= 80]
    assert "Regression in nfs-dio, case tcp: PASS on the base, FAIL with the series." in text
    assert "First bad patch: patch 2/3 nfs: direct: start write requests at the page" in text
    assert "Not covered (no touched file under their paths): " in text
    assert f"  lab review {mbox.name} --base linux-source-7.3\n" in text
    # The reproduce line repeats every choice that changed what ran.
    own = tmp_path / "mine.toml"
    rev = review.Review(str(mbox), "linux-source-6.12", repeat=5, configs=("debug",), map_path=own, kernels=rev.kernels)
    rev.changes = review_changes = [review.Change("nfs-dio", "nfs-dio", "tcp", "PASS", "FAIL", "x", True, None)]
    assert review_changes and f"  lab review {mbox.name} --base linux-source-6.12 --map mine.toml --repeat 5 --debug\n" in review.reply(rev, plan, 1)


@pytest.mark.parametrize("text,message", [
    ("[[check]]\nname = 'x'\nscenario = 'nfs-dio'\npaths = ['fs/']\ncolour = 'blue'\n", "check[0].colour: unknown key"),
    ("[[check]]\nname = 'x'\nscenario = 'no-such'\npaths = ['fs/']\n", "check x: unknown scenario"),
    ("[[check]]\nname = 'x'\nscenario = 'nfs-dio'\npaths = ['fs/']\noptions = { transports = ['pigeon'] }\n", "check x: --transport"),
    ("[[check]]\nname = 'x'\nscenario = 'nfs-dio'\npaths = []\n", "check[0].paths: List should have at least 1 item"),
    ("[[check]]\nname = 'x'\nscenario = 'nfs-dio'\npaths = ['fs/']\n[[check]]\nname = 'x'\nscenario = 'nfs-dio'\npaths = ['a/']\n",
     "check names repeat (x)"),
    ("[check\n", "not TOML"),
])
def test_a_bad_map_is_one_line_before_anything_is_built(tmp_path, capsys, text, message):
    bad = tmp_path / "map.toml"
    bad.write_text(text)
    mbox = make_mbox(tmp_path, {"fs/nfs/direct.c": "new\n"})
    assert cli.main(["review", str(mbox), "--map", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_documentation_series_is_reviewed_with_nothing_to_run(tmp_path):
    """The real command on a documentation patch: the plan says no check covers it, nothing is
    built, the reply says so, exit 0."""
    mbox = make_mbox(tmp_path, {"Documentation/filesystems/nfs.rst": "better words\n"})
    res = subprocess.run([sys.executable, "-m", "lab", "review", str(mbox), "-o", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=300, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path),
                                                      "LAB_RESULTS": str(tmp_path / "results"), "LAB_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    assert "checks: none (no touched file is under a path of the review map)" in res.stdout
    reply = (tmp_path / "out/reply.txt").read_text()
    assert "None of the lab's checks covers the files this series touches (Documentation/filesystems/nfs.rst)" in " ".join(reply.split())
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert results["exit_status"] == 0 and results["checks"] == [] and "nfs-dio" in results["not_run"]
    assert not (tmp_path / "cache/kernels").exists()  # nothing was built
