"""The reviewer's path on generated series over linux-source-7.3 with the lab's full kernel config
(NFS, RDMA, P2PDMA built in). Part of `tox -e kernel-full`: every step is a kernel build.

1. The bug class the NFS direct-I/O series had in its v1: the middle patch makes the NFS O_DIRECT
   write path ignore the offset of a user buffer inside its first page. nfs-dio fails on it, naming
   the case and the file offset, passes without it, and bisect names that patch.
2. A reproducer that fails 30 % of the time from one patch on and never before it: bisect finds the
   patch by comparing failure rates, with more runs where the rates are close. A reproducer that
   already fails on the base (it reads a file only the series adds) stops the bisect at once."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from lab.bisect import run_bisect, series_candidates
from lab.kernels import build, source as sources
from lab.scenarios import framework
from lab.scenarios.options import validate

pytestmark = [pytest.mark.timeout(5400), pytest.mark.skipif(bool(os.environ.get("LAB_TEST_FRAGMENTS")),
                                reason="needs the full fragment set: run `tox -e kernel-full`")]

BASE = "linux-source-7.3"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Lab Test", "-c", "user.email=test@lab", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def make_series(out: Path, name: str, patches: list[tuple[str, dict[str, tuple[str, str]]]]) -> Path:
    """An mbox of patches over the base, each a commit message and {file: (regex, replacement)}."""
    src = sources.resolve_source(BASE)
    tree = sources.tree_root(src) / "src"
    base = build.build(build.BuildRequest(source=BASE)).meta["source"]["base_commit"]
    work = out / f"{name}-work"
    _git(out, "clone", "-q", "--shared", "--no-checkout", str(tree), str(work))
    _git(work, "checkout", "-q", "--detach", base)
    for message, edits in patches:
        for rel, (pattern, replacement) in edits.items():
            path = work / rel
            # Group references (\g<1>) are expanded; anything else is inserted as it is (C has backslashes).
            repl = replacement if "\\g<" in replacement else (lambda _m, r=replacement: r)
            text, n = re.subn(pattern, repl, path.read_text(), count=1, flags=re.MULTILINE)
            assert n == 1, f"{rel}: {pattern!r} not found in this tree"
            path.write_text(text)
            _git(work, "add", "-f", rel)
        _git(work, "commit", "-q", "-m", message)
    mbox = out / f"{name}.mbox"
    mbox.write_text(_git(work, "format-patch", "--stdout", "--cover-letter", f"-{len(patches)}", "HEAD"))
    return mbox


# The write path's first request of every pinned batch starts at the user buffer's offset in its
# page; the "bug" starts it at 0, as the v1 of the series did for its folios.
NFS_BUG = (r"(\t\t\treq = nfs_page_create_from_page\(dreq->ctx, pagevec\[i\],\n\t\t\t\t\t\t\t)pgbase(, pos, req_len\);\n"
           r"\t\t\tif \(IS_ERR\(req\)\) \{\n\t\t\t\tresult = PTR_ERR\(req\);\n\t\t\t\tbreak;\n\t\t\t\}\n\n\t\t\tif \(desc\.pg_error)")


NFS_V1_SERIES = [
    ("nfs: direct: say what the write loop builds\n\nA comment only.",
     {"fs/nfs/direct.c": (r"^\tNFS_I\(inode\)->write_io \+= iov_iter_count\(iter\);",
                          "\t/* one nfs_page per page of the user buffer */\n\tNFS_I(inode)->write_io += iov_iter_count(iter);")}),
    ("nfs: direct: start write requests at the page\n\nThe bug class of the series' v1: the offset of the user\n"
     "buffer in its first page is lost.",
     {"fs/nfs/direct.c": (NFS_BUG, r"\g<1>0\g<2>")}),
    ("nfs: direct: another comment\n\nA comment only.",
     {"fs/nfs/direct.c": (r"^\t\t\tpgbase = 0;\n\t\t\tbytes -= req_len;\n\t\t\trequested_bytes \+= req_len;\n\t\t\tpos \+= req_len;\n\n\t\t\tif \(defer\)",
                          "\t\t\tpgbase = 0; /* later pages start at 0 */\n\t\t\tbytes -= req_len;\n\t\t\trequested_bytes += req_len;\n"
                          "\t\t\tpos += req_len;\n\n\t\t\tif (defer)")}),
]


@pytest.fixture(scope="module")
def nfs_v1_mbox(tmp_path_factory) -> Path:
    """One mbox for the demo and the review: the same patch bytes, so the review finds every kernel
    the demo's bisect built in the cache."""
    return make_series(tmp_path_factory.mktemp("nfs-v1"), "nfs-v1", NFS_V1_SERIES)


def test_nfs_intra_page_offset_bug_fails_nfs_dio_and_bisect_names_it(nfs_v1_mbox):
    mbox = nfs_v1_mbox
    cls = framework.get("nfs-dio")
    options = validate(cls.Options, {"transports": ["tcp"], "only": "size=page off=aligned"})
    # The whole series fails, naming a case whose buffer starts inside a page and the offset.
    whole = build.build(build.BuildRequest(source=BASE, series=str(mbox)))
    outcome = framework.run(cls, options.model_copy(update={"kernels": [whole.ref]}))
    tcp = next(iter(outcome.results["subruns"].values()))["cases"]["tcp"]
    assert tcp["verdict"] == "FAIL", tcp
    failed = {c["name"] for c in tcp["failed"]}
    assert "align=page size=page off=aligned" not in failed and "align=512 size=page off=aligned" in failed
    assert "data differs at file offset" in tcp["failed"][0]["error"]
    requests, labels = series_candidates(BASE, str(mbox), ())
    run_dir, summary = run_bisect("nfs-dio", options, requests, labels, {"base": BASE, "series": str(mbox)})
    result = summary["result"]
    assert result["changed"] and result["first_bad"]["label"] == "patch 2/3 nfs: direct: start write requests at the page"
    assert result["last_good"]["signature"] == "PASS" and result["first_bad"]["signature"] == "FAIL"


def test_review_of_the_nfs_v1_series_names_the_patch_and_writes_the_reply(nfs_v1_mbox, tmp_path):
    """`lab review` as a reviewer runs it on the same series: the touched file picks nfs-dio, both
    kernels are built (cached by the test above), the series fails where the base passes, the bisect
    names patch 2, and the reply fits a mail. The map keeps nfs-dio to TCP and one buffer size
    (the shipped map adds RDMA, nfs-p2p and fstests from git.kernel.org, out of this machine's reach)."""
    import json
    import sys

    mbox = nfs_v1_mbox
    review_map = tmp_path / "review.toml"
    review_map.write_text('[[check]]\nname = "nfs-dio"\nscenario = "nfs-dio"\npaths = ["fs/nfs/", "net/sunrpc/"]\n'
                          'why = "NFS O_DIRECT through every buffer alignment"\n'
                          'options = { transports = ["tcp"], only = "size=page off=aligned" }\n'
                          '[[check]]\nname = "stable-pages"\nscenario = "stable-pages"\npaths = ["block/", "fs/xfs/"]\n')
    res = subprocess.run([sys.executable, "-m", "lab", "review", str(mbox), "--base", BASE, "--map", str(review_map),
                          "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=3600)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    plan_at = res.stdout.index("checks:")
    assert "nfs-dio" in res.stdout[plan_at:plan_at + 300] and "not run: stable-pages" in res.stdout
    reply = (tmp_path / "out/reply.txt").read_text()
    assert all(len(line) < 80 for line in reply.splitlines())
    assert "Regression in nfs-dio, case tcp: PASS on the base, FAIL with the series." in reply
    assert "First bad patch: patch 2/3 nfs: direct: start write requests at the page" in reply
    assert "data differs at file offset" in " ".join(reply.split())
    assert "lab replay nfs-dio.bundle.tar.gz" in reply and (tmp_path / "out/nfs-dio.bundle.tar.gz").is_file()
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert results["exit_status"] == 1 and set(results["seconds"]) >= {"plan", "builds", "runs", "bisect"}
    print(f"review phases: {results['seconds']}")


FLAKY_C = r"""// SPDX-License-Identifier: GPL-2.0
/* A reproducer target for the lab's flaky bisect: /proc/lab_flaky says "fail" LAB_FAIL_PERCENT % of the time. */
#include <linux/init.h>
#include <linux/proc_fs.h>
#include <linux/random.h>
#include <linux/seq_file.h>

#define LAB_FAIL_PERCENT 0

static int lab_flaky_show(struct seq_file *m, void *v)
{
	seq_puts(m, get_random_u32_below(100) < LAB_FAIL_PERCENT ? "fail\n" : "ok\n");
	return 0;
}

static int __init lab_flaky_init(void)
{
	proc_create_single("lab_flaky", 0444, NULL, lab_flaky_show);
	return 0;
}
late_initcall(lab_flaky_init);
"""


def flaky_series(out: Path) -> Path:
    # Patch 1 adds the file (0 %) by appending it to an existing init file; patch 3 makes it fail 30 %.
    return make_series(out, "flaky", [
        ("init: add /proc/lab_flaky\n\nNever fails yet.", {"init/version.c": (r"\Z", "\n" + FLAKY_C.replace("#include <linux/init.h>\n", ""))}),
        ("init: a comment\n\nNothing changes.", {"init/version.c": (r"^#define LAB_FAIL_PERCENT 0", "/* percent */\n#define LAB_FAIL_PERCENT 0")}),
        ("init: make /proc/lab_flaky fail 30 % of the time\n\nThe flaky regression.",
         {"init/version.c": (r"^#define LAB_FAIL_PERCENT 0", "#define LAB_FAIL_PERCENT 30")}),
        ("init: another comment\n\nNothing changes.", {"init/version.c": (r"^/\* percent \*/", "/* percent of reads that fail */")}),
    ])


def test_a_flaky_regression_is_bisected_by_failure_rate(tmp_path):
    mbox = flaky_series(tmp_path)
    cls = framework.get("repro")
    # The base has no /proc/lab_flaky: there the reproducer passes (nothing to be flaky yet).
    command = "test ! -e /proc/lab_flaky || test \"$(cat /proc/lab_flaky)\" = ok"
    options = validate(cls.Options, {"command": command, "repeat": 20})
    requests, labels = series_candidates(BASE, str(mbox), ())
    run_dir, summary = run_bisect("repro", options, requests, labels, {"base": BASE, "series": str(mbox)}, max_batches=6)
    result = summary["result"]
    assert result["changed"], summary
    assert result["first_bad"]["label"] == "patch 3/4 init: make /proc/lab_flaky fail 30 % of the time"
    assert summary["steps"][0]["failed"] == 0 and summary["steps"][0]["repetitions"] >= 20  # the base ran and passed
    assert result["last_good"]["failed"] == 0
    text = (run_dir.path / "summary.txt").read_text()
    assert "first change: patch 3/4" in text and "failed (" in text


def test_a_base_that_already_fails_stops_the_bisect_with_that_verdict(tmp_path):
    """What happened on a fresh clone: a reproducer that reads a file only patch 1 adds fails 20/20 on
    the base. The bisect says so after the two ends instead of running a middle step 120 times."""
    mbox = flaky_series(tmp_path)
    cls = framework.get("repro")
    options = validate(cls.Options, {"command": "test \"$(cat /proc/lab_flaky)\" = ok", "repeat": 20})
    requests, labels = series_candidates(BASE, str(mbox), ())
    run_dir, summary = run_bisect("repro", options, requests, labels, {"base": BASE, "series": str(mbox)}, max_batches=6)
    result = summary["result"]
    assert result["changed"] is None and result["base_fails"]["base"]["failed"] == 20, summary
    assert [s["index"] for s in summary["steps"]] == [0, 4]  # the two ends, once each
    assert "the base already fails: 20/20" in (run_dir.path / "summary.txt").read_text()
