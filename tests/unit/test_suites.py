"""Suites built for the guest and watched while they run: source identity, library checks, the
running-test monitor (real processes and the fake fstests tree, a local shell standing in for SSH)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.scenarios import fstests
from lab.guest import Result
from lab.scenarios import suite as classes  # the classes of a suite test
from lab.suites import libcheck, monitor
from lab.suites.build import SUITES, check_layout, suite_tree
from lab.suites.source import resolve_source, split_ref

FAKE = Path(__file__).resolve().parent.parent / "fixtures" / "fstests-fake"
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _repo(path: Path) -> Path:
    shutil.copytree(FAKE, path)
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "fake fstests"]):
        subprocess.run(GIT + argv, cwd=path, check=True)
    return path


def test_refs_are_split_after_the_repository_path() -> None:
    assert split_ref("https://git.kernel.org/x/xfstests-dev.git@v2025.01.01") == ("https://git.kernel.org/x/xfstests-dev.git", "v2025.01.01")
    assert split_ref("ssh://me@host/x.git") == ("ssh://me@host/x.git", None)
    assert split_ref("ssh://me@host/x.git@for-next/a") == ("ssh://me@host/x.git", "for-next/a")
    assert split_ref("git@github.com:x/y.git") == ("git@github.com:x/y.git", None)
    assert split_ref("git@github.com:x/y.git@abc123") == ("git@github.com:x/y.git", "abc123")
    assert split_ref("/srv/fstests@HEAD~1") == ("/srv/fstests", "HEAD~1")
    assert split_ref("/srv/fstests") == ("/srv/fstests", None)


def test_a_plain_tree_is_known_by_its_content(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    shutil.copytree(FAKE, tree)
    first = resolve_source(str(tree))
    assert first.key.startswith("content-") and first.commit is None and "check" in first.files
    assert resolve_source(str(tree)).key == first.key
    (tree / "tests/generic/001").write_text("#!/bin/bash\nexit 0\n")
    assert resolve_source(str(tree)).key != first.key
    staged = tmp_path / "staged"
    resolve_source(str(tree)).stage(staged)
    assert (staged / "tests/generic/001").read_text() == "#!/bin/bash\nexit 0\n" and (staged / "check").stat().st_mode & 0o100


def test_a_fixture_inside_the_project_is_not_the_project(tmp_path: Path) -> None:
    """The fake tree lives in the lab's own git checkout: it must be hashed by content, not archived
    as the lab's HEAD."""
    src = resolve_source(str(FAKE))
    assert src.key.startswith("content-") and src.git_dir is None


def test_git_sources_are_known_by_their_commit(tmp_path: Path, monkeypatch) -> None:
    repo = _repo(tmp_path / "repo")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert resolve_source(str(repo)).key == f"git-{head[:16]}"
    # A modified checkout is its files as they are now.
    (repo / "tests/generic/002").write_text("#!/bin/bash\nexit 0\n")
    dirty = resolve_source(str(repo))
    assert dirty.key.startswith("content-") and "tests/generic/002" in dirty.files
    # @REF reads the repository, not the work tree; a URL is mirrored into the cache once.
    assert resolve_source(f"{repo}@HEAD").key == f"git-{head[:16]}"
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    by_url = resolve_source(f"file://{repo}")
    assert by_url.commit == head and by_url.git_dir is not None and by_url.git_dir.is_relative_to(tmp_path / "cache")
    staged = tmp_path / "staged"
    by_url.stage(staged)
    assert (staged / "check").is_file() and not (staged / ".git").exists()
    with pytest.raises(UsageError, match="no commit 'nope'"):
        resolve_source(f"{repo}@nope")
    with pytest.raises(UsageError, match="needs a git repository"):
        resolve_source(f"{FAKE}@HEAD")
    with pytest.raises(UsageError, match="no such directory"):
        resolve_source(str(tmp_path / "missing"))


def test_layout_and_prebuilt_trees(tmp_path: Path) -> None:
    check_layout(SUITES["fstests"], FAKE, "fake")
    with pytest.raises(UsageError, match="no fstests tree here"):
        check_layout(SUITES["fstests"], tmp_path, str(tmp_path))
    built = tmp_path / "built"
    shutil.copytree(FAKE, built)
    (built / "ltp/fsstress").write_text("#!/bin/sh\n")
    tree = suite_tree("fstests", str(built))  # built elsewhere: used as it is, its libraries checked in the guest
    assert tree.path == built and not tree.built_here


LDD = """./ltp/fsstress:
\tlinux-vdso.so.1 (0x00007ffd)
\tlibaio.so.1 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
./src/aio-dio-regress/aiocp:
\tlibaio.so.1 => not found
./src/feature:
\tnot a dynamic executable
"""


def test_missing_libraries_are_named_with_what_the_guest_has() -> None:
    missing = libcheck.parse_ldd(LDD)
    assert [(m.program, m.library) for m in missing] == [("ltp/fsstress", "libaio.so.1"), ("src/aio-dio-regress/aiocp", "libaio.so.1")]
    assert libcheck.parse_ldd("\tlibc.so.6 => /lib/libc.so.6\n") == []
    assert libcheck.library_stem("libaio.so.1") == "libaio.so"
    have = libcheck.provider_line("libaio1t64:amd64: /usr/lib/x86_64-linux-gnu/libaio.so.1t64.0.2\n"
                                  "libaio1t64:amd64: /usr/share/doc/libaio1t64\n")
    assert have == ("libaio1t64", "libaio.so.1t64.0.2")
    line = libcheck.describe(missing, have, "/root/fstests", "fstests")
    assert "ltp/fsstress needs libaio.so.1" in line and "libaio1t64" in line and "lab suite build fstests" in line
    assert "\n" not in line
    assert "no package in the guest image ships libaio.so*" in libcheck.describe(missing, None, "/root/fstests", "fstests")


class LocalShell:
    """Runs the monitor's commands in a local bash: the transport is the only thing not real."""

    def run(self, command: str, timeout: float = 60, check: bool = False) -> Result:
        res = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(res.stderr)
        return Result(command, res.returncode, res.stdout, res.stderr)


def test_the_monitor_kills_a_hung_test_and_keeps_the_others(tmp_path: Path) -> None:
    """The fake check with a test that sleeps for an hour: the per-test timeout kills it (its whole
    process tree), check goes on to the next test, and every finished test is seen as it ends."""
    tree = tmp_path / "fstests"
    shutil.copytree(FAKE, tree)
    tests = ["generic/003", "generic/006", "generic/002"]
    script = fstests.check_script(str(tree), "", tests)
    seen: list[str] = []
    watched = monitor.run_monitored(LocalShell(), script, fstests.FstestsConsole(), "fake", len(tests), test_timeout=3,
                                    run_timeout=120, on_output=seen.append, poll=0.5, run_dir=str(tmp_path / "run"))
    assert list(watched.timed_out_tests) == ["generic/006"] and watched.timed_out_tests["generic/006"] >= 3
    assert not watched.run_timed_out and watched.seconds < 60
    parsed = fstests.results_from(watched.output, tests)
    assert parsed["statuses"] == {"generic/003": "notrun", "generic/006": "fail", "generic/002": "fail"}
    assert any("generic/003" in out and "generic/002" not in out for out in seen)  # seen before the run ended
    assert subprocess.run(["pgrep", "-f", "/tests/generic/006$"], capture_output=True).returncode == 1


def test_the_whole_run_is_bounded(tmp_path: Path) -> None:
    tree = tmp_path / "fstests"
    shutil.copytree(FAKE, tree)
    script = fstests.check_script(str(tree), "", ["generic/006"])
    watched = monitor.run_monitored(LocalShell(), script, fstests.FstestsConsole(), "fake", 1, test_timeout=600,
                                    run_timeout=2, poll=0.5, run_dir=str(tmp_path / "run"))
    assert watched.run_timed_out and watched.exit_code == 137 and not watched.timed_out_tests


def test_running_test_and_progress_line() -> None:
    console = fstests.FstestsConsole()
    out = "FSTYP -- nfs\n\ngeneric/001  5s ...  4s\ngeneric/091 "
    assert console.running(out) == "generic/091"
    assert console.running(out + " 30s ...  31s\n") is None
    assert console.counts(out) == {"pass": 1, "fail": 0, "notrun": 0}
    line = monitor.progress_line("generic/091", 130, {"pass": 1, "fail": 0}, 27)
    assert line == "generic/091 running 2m10s; 1/27 done (1 pass)"
    assert monitor.parse_poll("LAB-RC -\nLAB-SIZE 12\nabc") == (None, False, 12, "abc")
    assert monitor.parse_poll("LAB-RC 1\nLAB-SIZE 3\n") == (1, True, 3, "")
    assert monitor.parse_poll("garbage")[2] == -1


def test_a_hung_test_is_a_new_failure_even_when_it_is_known_to_fail() -> None:
    assert classes.classify("timeout", False) == classes.HUNG
    assert classes.class_verdict(classes.HUNG) == ("FAIL", "PASS")
    assert classes.classify("timeout", True) == classes.HUNG  # a known failure that now hangs fails differently


def test_a_library_the_build_root_had_names_its_package() -> None:
    missing = [libcheck.MissingLibrary("src/dbtest", "libgdbm_compat.so.4")]
    line = libcheck.describe(missing, None, "/root/fstests", "fstests", built_with="libgdbm-compat4t64")
    assert "src/dbtest needs libgdbm_compat.so.4" in line and "package libgdbm-compat4t64, which the guest image lacks" in line


def test_compare_names_new_failures_and_fixes() -> None:
    from lab.results import suite_changes

    def run(label, **statuses):
        return {"subruns": {label: {"cases": {f"{t} (tcp)": {"status": s} for t, s in statuses.items()}}}}

    before = run("debian-6.12", **{"generic/091": "pass", "generic/095": "fail", "generic/263": "notrun", "generic/247": "pass"})
    after = run("debian-7.3", **{"generic/091": "fail", "generic/095": "pass", "generic/263": "notrun", "generic/247": "timeout"})
    assert suite_changes(before, after) == [
        "  debian-6.12 -> debian-7.3: generic/091 (tcp): new failure (pass -> fail)",
        "  debian-6.12 -> debian-7.3: generic/095 (tcp): fixed (fail -> pass)",
        "  debian-6.12 -> debian-7.3: generic/247 (tcp): new failure (hangs) (pass -> timeout)",
    ]
    assert suite_changes(before, before) == []


def test_a_matrix_of_sub_runs_reads_side_by_side():
    from lab.scenarios.suite import side_by_side

    runs = {"debian-6.12-pi=1": {"runs": {"xfs": {"statuses": {"generic/095": "fail", "generic/247": "pass"},
                                                  "classes": {"generic/095": "known failure", "generic/247": "pass"}}}},
            "debian-7.3-pi=3-pif=2": {"runs": {"xfs": {"statuses": {"generic/095": "fail", "generic/247": "pass"}},
                                               "ext4": {"statuses": {"generic/247": "notrun"}}}}}
    lines = side_by_side({"subruns": runs})
    assert "debian-6.12-pi=1" in lines[1] and "debian-7.3-pi=3-pif=2" in lines[1]
    assert lines[2].split() == ["test", "xfs", "xfs", "ext4"]
    assert lines[3].split("  ")[1:] and "known failure" in lines[3] and lines[3].rstrip().endswith("-")
    assert side_by_side({"subruns": {"one": runs["debian-6.12-pi=1"]}}) == []  # one sub-run has its own table


def test_a_test_without_progress_is_hung_a_slow_one_is_not(tmp_path: Path) -> None:
    """generic/006 sleeps (no CPU, no I/O): killed once the stall timeout passes. generic/008 works for
    8 s, longer than the stall timeout: it finishes and passes."""
    tree = tmp_path / "fstests"
    shutil.copytree(FAKE, tree)
    tests = ["generic/006", "generic/008"]
    script = fstests.check_script(str(tree), "", tests)
    watched = monitor.run_monitored(LocalShell(), script, fstests.FstestsConsole(), "fake", len(tests), test_timeout=600,
                                    run_timeout=120, poll=0.5, run_dir=str(tmp_path / "run"), stall_timeout=3)
    assert list(watched.timed_out_tests) == ["generic/006"]
    assert watched.kill_reasons["generic/006"].startswith("no progress for ") and "--stall-timeout" in watched.kill_reasons["generic/006"]
    assert fstests.results_from(watched.output, tests)["statuses"] == {"generic/006": "fail", "generic/008": "pass"}
    assert monitor.poll_activity("LAB-RC -\nLAB-SIZE 0\nLAB-ACTIVITY 42\n") == 42
    assert monitor.poll_activity("LAB-RC -\nLAB-SIZE 0\n") is None


def test_shards_split_a_test_list_by_recorded_time_and_together_are_the_whole_list() -> None:
    """The seed's long NFS tests (seconds measured here over TCP) spread over parts of about equal
    time; a test never timed counts as the median; without any timing the split is by count."""
    tests = ["generic/091", "generic/155", "generic/143", "generic/263", "generic/760", "generic/130", "generic/139", "generic/999"]
    seconds = {"generic/091": 1330, "generic/155": 1860, "generic/143": 295, "generic/263": 208, "generic/760": 310,
               "generic/130": 73, "generic/139": 9}
    parts = [classes.shard(tests, i, 3, seconds) for i in (1, 2, 3)]
    assert sorted(t for p in parts for t in p) == sorted(tests)  # nothing lost, nothing twice
    assert all(p == [t for t in tests if t in p] for p in parts)  # each part keeps the list's order
    loads = sorted(sum(seconds.get(t, 208) for t in p) for p in parts)
    assert loads[-1] <= 1860 + 73  # the longest part is the longest test plus little
    assert [len(classes.shard(tests, i, 4, {})) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]


def test_the_seed_list_is_cut_by_the_shipped_durations_the_same_everywhere(tmp_path, monkeypatch) -> None:
    """Every runner of a night cuts the same parts: from the shipped durations, not from its own
    results (a runner with another history would otherwise run some tests twice and others never).
    Over TCP the longest part is generic/155 with little else: under 35 minutes."""
    from lab.scenarios import fstests

    monkeypatch.setenv("LAB_RESULTS", str(tmp_path))  # an empty history changes nothing
    durations, default = classes.shipped_durations("nfs-fstests")
    assert durations["generic/155"] == 1860 and default == 40
    tests = fstests.resolve_tests(None, "nfs-dio")
    assert len(tests) == 27
    parts = [classes.shard(tests, i, 3, durations, default) for i in (1, 2, 3)]
    assert sorted(t for p in parts for t in p) == sorted(tests)
    loads = [sum(durations.get(t, default) for t in p) for p in parts]
    assert max(loads) < 35 * 60 - 180, loads  # room for boots, mounts and the tree's install
    assert ["generic/155"] == [t for t in parts[loads.index(max(loads))] if durations.get(t, default) > 100]


def test_a_matrix_entry_with_shards_is_one_cell_per_part(tmp_path: Path) -> None:
    from lab import matrix

    m = tmp_path / "m.toml"
    m.write_text('[[entry]]\nscenario = "nfs-fstests"\nshards = 3\noptions = { fstests = "/tmp", preset = "nfs-dio" }\n')
    cells = matrix.load(m).cells
    assert [c.options["shard"] for c in cells] == ["1/3", "2/3", "3/3"]
    assert len({c.id for c in cells}) == 3 and all("shard" in c.id for c in cells)
