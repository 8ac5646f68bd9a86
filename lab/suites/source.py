"""Where a suite's source comes from, and its identity for the cache: a git commit when there is one
(a URL or a repository, with an optional @REF), else the hash of the files' names and contents."""

from __future__ import annotations

import logging
import hashlib
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError, UsageError
from lab.paths import cache_dir
from lab.progress import run_logged, step

LOG = logging.getLogger(__name__)

_SCHEME_RE = re.compile(r"^(git|https?|ssh|file)://")
_SCP_RE = re.compile(r"^[\w.-]+@[\w.-]+:")
_SKIP = (".git", "results")  # git metadata and an old run's results are not the source


@dataclass(frozen=True)
class Source:
    spec: str            # what the user gave
    key: str             # git-<commit> or content-<hash>: the cache identity
    commit: str | None
    git_dir: Path | None  # a repository to `git archive` the commit from
    directory: Path | None  # else a directory whose files are copied (listed in files)
    files: tuple[str, ...] = ()

    def stage(self, dest: Path) -> None:
        """Write the source files into dest (an empty directory)."""
        dest.mkdir(parents=True, exist_ok=True)
        if self.git_dir is not None and self.commit is not None:
            archive = subprocess.Popen(["git", f"--git-dir={self.git_dir}", "archive", self.commit], stdout=subprocess.PIPE)
            assert archive.stdout is not None
            with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
                for member in tar:
                    if member.issym() or member.islnk() or member.isfile() or member.isdir():
                        tar.extract(member, dest, set_attrs=member.isfile() or member.isdir())
            if archive.wait() != 0:
                raise LabError(f"git archive {self.commit} in {self.git_dir} failed")
            return
        assert self.directory is not None
        for name in self.files:
            src, dst = self.directory / name, dest / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                dst.symlink_to(src.readlink())
            else:
                shutil.copy2(src, dst)


def is_url(spec: str) -> bool:
    return bool(_SCHEME_RE.match(spec) or _SCP_RE.match(spec))


def split_ref(spec: str) -> tuple[str, str | None]:
    """URL-or-path and the @REF after it. The @ of a user name (ssh://me@host/x, me@host:x) is not a ref:
    a ref's @ comes after the repository's path starts."""
    if _SCHEME_RE.match(spec):
        rest = spec.split("://", 1)[1]
        path_start = len(spec) - len(rest) + (rest.find("/") if "/" in rest else len(rest))
    elif _SCP_RE.match(spec):
        path_start = spec.index(":") + 1
    else:
        path_start = 0
    at = spec.rfind("@")
    if at > path_start and at < len(spec) - 1:
        return spec[:at], spec[at + 1:]
    return spec, None


def _git(git_dir: Path, *args: str) -> str:
    res = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise LabError(f"git {' '.join(args)} in {git_dir}: {(res.stderr.strip().splitlines() or ['failed'])[-1]}")
    return res.stdout.strip()


def _git_dir_of(path: Path) -> Path | None:
    """The repository of a bare git directory or of a work tree's top level. A directory inside
    another project's work tree (a test fixture) is not that project: it is a plain tree."""
    res = subprocess.run(["git", "-C", str(path), "rev-parse", "--absolute-git-dir"], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    if _is_work_tree(path):
        top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        if Path(top.stdout.strip()).resolve() != path.resolve():
            return None
    return Path(res.stdout.strip())


def _is_work_tree(path: Path) -> bool:
    res = subprocess.run(["git", "-C", str(path), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
    return res.stdout.strip() == "true"


def is_bare_repository(path: Path) -> bool:
    """A git directory without a work tree (a mirror): its files are read at a commit, not from disk."""
    return _git_dir_of(path) is not None and not _is_work_tree(path)


def _content_key(directory: Path, files: list[str]) -> str:
    digest = hashlib.sha256()
    for name in files:
        path = directory / name
        digest.update(name.encode() + b"\0")
        digest.update(str(path.readlink()).encode() if path.is_symlink() else path.read_bytes())
        digest.update(b"\0")
    return "content-" + digest.hexdigest()[:16]


def _directory_files(directory: Path) -> list[str]:
    files = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory)
        if rel.parts[0] in _SKIP or not (path.is_file() or path.is_symlink()):
            continue
        files.append(str(rel))
    return sorted(files)


def _resolve_commit(git_dir: Path, ref: str, what: str) -> str:
    try:
        return _git(git_dir, "rev-parse", "--verify", f"{ref}^{{commit}}")
    except LabError:
        raise UsageError(f"{what}: no commit {ref!r} in {git_dir}") from None


def _clone(url: str, ref: str | None) -> tuple[Path, str]:
    """A bare mirror of the URL in the cache (fetched when the ref is not in it yet) and the commit."""
    git_dir = cache_dir() / "suite-sources" / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".git")
    log = git_dir.with_suffix(".log")
    git_dir.parent.mkdir(parents=True, exist_ok=True)
    want = ref or "HEAD"
    if git_dir.is_dir():
        try:  # a commit id, or a tag already fetched: no network
            if ref and re.fullmatch(r"[0-9a-f]{7,40}", ref):
                return git_dir, _git(git_dir, "rev-parse", "--verify", f"{ref}^{{commit}}")
        except LabError:
            LOG.debug("%s@%s is not in the local clone yet; fetching", url, ref, exc_info=True)
        with step(f"fetching {url}") as st:
            run_logged(["git", f"--git-dir={git_dir}", "fetch", "-q", "--tags", "--force", url,
                        "+refs/heads/*:refs/heads/*"], log, st, what="git fetch")
    else:
        tmp = git_dir.with_name(git_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with step(f"cloning {url}") as st:
            run_logged(["git", "clone", "-q", "--bare", url, str(tmp)], log, st, what="git clone")
        tmp.rename(git_dir)
    return git_dir, _resolve_commit(git_dir, want, url)


def resolve_source(spec: str) -> Source:
    """The source a --source (or --fstests/--blktests) argument names, with its cache key."""
    where, ref = split_ref(spec)
    if is_url(where):
        mirror, commit = _clone(where, ref)
        return Source(spec, f"git-{commit[:16]}", commit, mirror, None)
    path = Path(where).expanduser()
    if not path.is_dir():
        raise UsageError(f"{spec}: no such directory (give a source tree, a git repository[@REF] or a git URL[@REF])")
    path = path.resolve()
    git_dir = _git_dir_of(path)
    if ref is not None and git_dir is None:
        raise UsageError(f"{spec}: @{ref} needs a git repository, and {path} is not one")
    if git_dir is not None and (ref is not None or not _is_work_tree(path)):
        commit = _resolve_commit(git_dir, ref or "HEAD", spec)
        return Source(spec, f"git-{commit[:16]}", commit, git_dir, None)
    if git_dir is not None:
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=normal"],
                                capture_output=True, text=True).stdout
        if not status.strip():  # a clean checkout is its commit
            commit = _git(git_dir, "rev-parse", "HEAD")
            return Source(spec, f"git-{commit[:16]}", commit, git_dir, None)
        listed = subprocess.run(["git", "-C", str(path), "ls-files", "-z", "-c", "-o", "--exclude-standard"],
                                capture_output=True, text=True, check=True).stdout
        files = sorted(f for f in listed.split("\0") if f and (path / f).exists() and Path(f).parts[0] not in _SKIP)
    else:
        files = _directory_files(path)
        built = [f for f in files if f.endswith(".o")]
        if built:
            raise UsageError(f"{spec}: the tree holds build output ({built[0]}, ...); give a clean tree or its git "
                             "checkout, so it is built for the guest from source")
    if not files:
        raise UsageError(f"{spec}: the directory is empty")
    return Source(spec, _content_key(path, files), None, None, path, tuple(files))
