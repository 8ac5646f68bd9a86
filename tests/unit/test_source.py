"""Sources and series application on small real trees (git and tarball): the scratch worktree is a
clone in the cache, the user's repository is left alone, a series applies with git am, one that
does not apply leaves the base, and bisect's commit list between two refs."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from lab.bisect import commit_candidates
from lab.errors import UsageError
from lab.kernels import source as sources

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    r = tmp_path / "linux"
    r.mkdir()
    git(r, "init", "-q")
    (r / "Makefile").write_text("all:\n")
    (r / "Kconfig").write_text("config FOO\n\tbool\n")
    (r / "init.c").write_text("line 1\nline 2\nline 3\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "v1")
    git(r, "tag", "v1")
    for i in (2, 3, 4):
        (r / "init.c").write_text(f"line 1\nline 2 (v{i})\nline 3\n")
        git(r, "commit", "-q", "-am", f"change {i}")
    return r


def series_from(repo: Path, base: str, tmp_path: Path) -> bytes:
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(repo), str(work))
    git(work, "checkout", "-q", base)
    (work / "init.c").write_text("line 1\nline 2\nline 3 patched\n")
    git(work, "commit", "-q", "-am", "patch one")
    (work / "new.c").write_text("new file\n")
    git(work, "add", "new.c")
    git(work, "commit", "-q", "-m", "patch two")
    return subprocess.run(["git", "format-patch", "--stdout", "-2", "HEAD"], cwd=work, capture_output=True, check=True).stdout


def test_git_source_scratch_worktree_and_series(repo: Path, tmp_path: Path) -> None:
    src = sources.resolve_source(f"{repo}@v1")
    assert src.kind == "git" and src.identity == f"git:{git(repo, 'rev-parse', 'v1')}"
    assert sources.resolve_source(str(repo)).tree_key == src.tree_key  # one worktree per repository
    tree, base = sources.prepare_worktree(src)
    assert tree.is_relative_to(tmp_path / "cache") and base == git(repo, "rev-parse", "v1")
    commits = sources.apply_series(tree, base, series_from(repo, "v1", tmp_path), 2, "s.mbox")
    assert len(commits) == 2 and (tree / "new.c").exists() and "patched" in (tree / "init.c").read_text()
    # The user's repository has no new objects, refs or worktrees.
    assert git(repo, "rev-parse", "HEAD") == git(repo, "rev-parse", "master") and git(repo, "status", "--porcelain") == ""
    assert git(repo, "worktree", "list").count("\n") == 0
    # Reset goes back to the base, new files gone.
    sources.reset(tree, base)
    assert not (tree / "new.c").exists() and git(tree, "status", "--porcelain") == ""


def test_series_that_does_not_apply_names_patch_and_file(repo: Path, tmp_path: Path) -> None:
    src = sources.resolve_source(f"{repo}@v1")
    tree, base = sources.prepare_worktree(src)
    # Made on the newest commit: its context (line 2 (v4)) is not in v1.
    work = tmp_path / "w2"
    git(tmp_path, "clone", "-q", str(repo), str(work))
    (work / "init.c").write_text("line 1\nline 2 (v4) changed\nline 3\n")
    git(work, "commit", "-q", "-am", "change line 2")
    mbox = subprocess.run(["git", "format-patch", "--stdout", "-1", "HEAD"], cwd=work, capture_output=True, check=True).stdout
    with pytest.raises(UsageError, match=r"s.mbox: patch 1/1 'change line 2' does not apply: init.c \("):
        sources.apply_series(tree, base, mbox, 1, "s.mbox")
    assert git(tree, "rev-parse", "HEAD") == base and git(tree, "status", "--porcelain") == ""


def test_tarball_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    top = tmp_path / "linux-9.9"
    top.mkdir()
    (top / "Makefile").write_text("all:\n")
    (top / "Kconfig").write_text("")
    ball = tmp_path / "linux-9.9.tar.gz"
    with tarfile.open(ball, "w:gz") as t:
        t.add(top, arcname="linux-9.9")
    src = sources.resolve_source(str(ball))
    assert src.kind == "tarball" and src.label == "linux-9.9" and src.identity.startswith("tarball:")
    tree, base = sources.prepare_worktree(src)
    assert (tree / "Makefile").exists() and git(tree, "rev-parse", "HEAD") == base
    assert sources.prepare_worktree(src) == (tree, base)  # unpacked once


def test_a_source_that_is_not_a_kernel_tree_is_refused(tmp_path: Path, repo: Path) -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        sources.resolve_source(str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="not a kernel tree"):
        sources.resolve_source(str(tmp_path))
    with pytest.raises(UsageError, match="no commit 'v9'"):
        sources.resolve_source(f"{repo}@v9")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="not a tarball"):
        sources.resolve_source(str(tmp_path / "notes.txt"))


def test_bisect_commit_list_between_refs(repo: Path) -> None:
    requests, labels = commit_candidates(str(repo), "v1", "HEAD", ())
    assert len(requests) == 4 and [l.split(" ", 1)[1] for l in labels] == ["v1", "change 2", "change 3", "change 4"]
    assert requests[0].source == f"{repo}@{git(repo, 'rev-parse', 'v1')}"
    with pytest.raises(UsageError, match="not a descendant"):
        commit_candidates(str(repo), "HEAD", "v1", ())
