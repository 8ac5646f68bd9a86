"""Kernel sources: Debian's linux-source-X.Y package, a source tarball, an unpacked tree, or a git
tree at a ref. Each becomes a scratch git worktree in the cache (never the user's checkout), where
series are applied with git am and reset afterwards; its build tree sits next to it and is reused
between builds, so a changed series only recompiles what it touched."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError, UsageError
from lab.paths import cache_dir
from lab.progress import Step, run_logged, step

LOG = logging.getLogger(__name__)

_DEB_RE = re.compile(r"^linux-source-(\d+\.\d+)(?:=(\S+))?$")
TARBALL_SUFFIXES = (".tar", ".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar.zst")
GIT_ID = ["-c", "user.name=lab", "-c", "user.email=lab@localhost", "-c", "commit.gpgsign=false",
          "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false", "-c", "gc.auto=0"]


@dataclass(frozen=True)
class Source:
    spec: str
    kind: str  # debian | tarball | tree | git
    identity: str  # what the sources are, for cache keys
    tree_key: str  # which scratch worktree (and build tree) they use
    label: str  # short name for humans and kernel refs
    path: Path | None = None  # tarball, tree or git repository
    commit: str | None = None  # git: the resolved commit


def git(cwd: Path, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    res = subprocess.run(["git", *GIT_ID, *args], cwd=cwd, capture_output=True, text=True, errors="replace", timeout=timeout)
    if check and res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}").splitlines()[-1]
        raise LabError(f"git {args[0]} in {cwd} failed: {last}")
    return res


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    from lab.units import file_sha256

    return file_sha256(path)


def _tree_fingerprint(path: Path) -> str:
    """An unpacked tree's identity from every file's path, size and mtime (hashing 1.5 GB of
    contents would take longer than compiling a file)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            h.update(f"{os.path.relpath(p, path)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def check_source_spec(spec: str) -> None:
    """What can be told of a source without tools or network: a Debian name, or a path that exists
    and is a tarball or a kernel tree (git trees are read later, with git)."""
    spec = spec.strip()
    if _DEB_RE.match(spec):
        return
    repo, _, _ref = spec.partition("@") if "@" in spec and not Path(spec).exists() else (spec, "", "")
    path = Path(repo).expanduser()
    if not path.exists():
        raise UsageError(f"kernel source {spec!r}: no such file or directory; use linux-source-X.Y (Debian's package), "
                         "a source tarball, an unpacked tree, or a git tree as PATH[@REF]")
    if path.is_file() and not path.name.endswith(TARBALL_SUFFIXES):
        raise UsageError(f"kernel source {spec}: not a tarball ({', '.join(TARBALL_SUFFIXES)})")
    if path.is_dir() and not (path / ".git").exists() and not ((path / "Makefile").is_file() and (path / "Kconfig").is_file()):
        raise UsageError(f"kernel source {spec}: {path.resolve()} is not a kernel tree (no Makefile and Kconfig at its top)")


def resolve_source(spec: str) -> Source:
    spec = spec.strip()
    m = _DEB_RE.match(spec)
    if m:
        return _debian_source(m.group(1), m.group(2))
    repo, _, ref = spec.partition("@") if "@" in spec and not Path(spec).exists() else (spec, "", "")
    path = Path(repo).expanduser()
    if not path.exists():
        raise UsageError(f"kernel source {spec!r}: no such file or directory; use linux-source-X.Y (Debian's package), "
                         "a source tarball, an unpacked tree, or a git tree as PATH[@REF]")
    path = path.resolve()
    if path.is_file():
        if not path.name.endswith(TARBALL_SUFFIXES):
            raise UsageError(f"kernel source {spec}: not a tarball ({', '.join(TARBALL_SUFFIXES)})")
        ident = f"tarball:{_file_sha256(path)}"
        return Source(spec, "tarball", ident, _digest(ident)[:16], _tarball_label(path), path=path)
    if (path / ".git").exists():
        res = git(path, "rev-parse", "--verify", "--quiet", f"{ref or 'HEAD'}^{{commit}}", check=False)
        if res.returncode != 0:
            raise UsageError(f"kernel source {spec}: no commit {ref or 'HEAD'!r} in {path}")
        commit = res.stdout.strip()
        # One worktree per repository: moving between commits (bisect) recompiles only what changed.
        return Source(spec, "git", f"git:{commit}", _digest("git", str(path))[:16], f"{path.name}@{commit[:12]}",
                      path=path, commit=commit)
    if not (path / "Makefile").is_file() or not (path / "Kconfig").is_file():
        raise UsageError(f"kernel source {spec}: {path} is not a kernel tree (no Makefile and Kconfig at its top)")
    ident = f"tree:{path}:{_tree_fingerprint(path)}"
    return Source(spec, "tree", ident, _digest("tree", str(path))[:16], path.name, path=path)


def _tarball_label(path: Path) -> str:
    name = path.name
    for suffix in TARBALL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _debian_source(version: str, pinned: str | None) -> Source:
    from lab.kernels import debian

    package = f"linux-source-{version}"
    store = cache_dir() / "kernels" / "sources"
    store.mkdir(parents=True, exist_ok=True)
    root = debian.apt_root()
    debian.update_lists(root)
    show = debian._apt(root, "show", "-a", package, check=False)
    versions = re.findall(r"^Version: (\S+)$", show, re.MULTILINE)
    if not versions:
        debian.update_lists(root, force=True)
        versions = re.findall(r"^Version: (\S+)$", debian._apt(root, "show", "-a", package, check=False), re.MULTILINE)
    if not versions:
        raise UsageError(f"{package}: no such package in {', '.join(s for _, s in debian.SOURCES)}")
    chosen = pinned or max(versions, key=debian._version_key)
    if chosen not in versions:
        raise UsageError(f"{package}={chosen}: not available (have {', '.join(versions)})")
    ident = f"debian:{package}={chosen}"
    return Source(f"{package}={chosen}", "debian", ident, _digest(ident)[:16], package)


def _debian_tarball(source: Source, work: Path, log: Path, st: Step) -> Path:
    from lab.kernels import debian

    package, _, version = source.spec.partition("=")
    root = debian.apt_root()
    st.update(f"downloading {package}={version}")
    run_logged(["apt-get", *debian.apt_options(root), "-q", "download", f"{package}={version}"], log, st,
               what="apt-get download", cwd=work)
    deb = next(work.glob(f"{package}_*.deb"), None)
    if deb is None:
        raise LabError(f"{package}={version}: apt-get download produced no .deb (log: {log})")
    st.update(f"unpacking {deb.name}")
    run_logged(["dpkg-deb", "-x", str(deb), str(work / "deb")], log, st, what="dpkg-deb")
    tarballs = list((work / "deb/usr/src").glob(f"{package}.tar.*"))
    if len(tarballs) != 1:
        raise LabError(f"{deb.name}: expected one {package}.tar.* in /usr/src, found {[t.name for t in tarballs]}")
    deb.unlink()
    return tarballs[0]


def tree_root(source: Source) -> Path:
    return cache_dir() / "kernels" / "trees" / source.tree_key


def prepare_worktree(source: Source) -> tuple[Path, str]:
    """The scratch git worktree of a source and the commit of its unpatched base. The caller holds
    the tree's lock."""
    root = tree_root(source)
    src = root / "src"
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "base"
    if source.kind == "git":
        if not (src / ".git").exists():
            shutil.rmtree(src, ignore_errors=True)
            with step(f"cloning {source.path} into a scratch worktree (the user's checkout is never touched)") as st:
                # --shared: objects are read from the user's repository, nothing is copied or changed there.
                run_logged(["git", *GIT_ID, "clone", "-q", "--shared", "--no-checkout", str(source.path), str(src)],
                           root / "tree.log", st, what="git clone")
        assert source.commit
        return src, source.commit
    if marker.exists() and marker.read_text().split("\n")[0] == source.identity and (src / ".git").exists():
        return src, marker.read_text().split("\n")[1]
    shutil.rmtree(src, ignore_errors=True)
    log = root / "tree.log"
    log.write_text("")
    with step(f"unpacking {source.label} into a scratch git worktree") as st:
        work = Path(tempfile.mkdtemp(prefix="unpack.", dir=root))
        try:
            if source.kind in ("debian", "tarball"):
                tarball = _debian_tarball(source, work, log, st) if source.kind == "debian" else source.path
                assert tarball is not None
                src.mkdir()
                st.update(f"extracting {tarball.name}")
                run_logged(["tar", "-x", "-f", str(tarball), "--strip-components=1", "-C", str(src)], log, st, what="tar")
            else:
                assert source.path is not None
                st.update(f"copying {source.path}")
                run_logged(["cp", "-a", "--reflink=auto", f"{source.path}/.", str(src)], log, st, what="cp")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not (src / "Makefile").is_file():
            raise LabError(f"{source.spec}: no kernel Makefile at the top of the unpacked sources")
        st.update("git init + commit of the base (so series apply with git am and reset cleanly)")
        shutil.rmtree(src / ".git", ignore_errors=True)
        git(src, "init", "-q")
        git(src, "add", "-A", "-f")
        git(src, "commit", "-q", "--no-verify", "-m", f"lab base: {source.spec}")
        base = git(src, "rev-parse", "HEAD").stdout.strip()
    marker.write_text(f"{source.identity}\n{base}\n")
    return src, base


def reset(src: Path, base: str) -> None:
    """Back to the unpatched base, whatever a previous build or failed am left behind."""
    git(src, "am", "--abort", check=False)
    git(src, "checkout", "-q", "-f", "--detach", base)
    git(src, "clean", "-q", "-f", "-d")


_FAILED_AT = re.compile(r"Patch failed at (\d+) (.*)")
# What git am / git apply say about the file that failed, most precise first.
_FILE_PATTERNS = [
    (re.compile(r"error: patch failed: (\S+?):(\d+)"), "hunk at line {1} does not match"),
    (re.compile(r"CONFLICT \([^)]*\): Merge conflict in (\S+)"), "conflict in a 3-way merge"),
    (re.compile(r"error: (\S+?): does not exist in index"), "file does not exist"),
    (re.compile(r"error: (\S+?): already exists in (?:index|working directory)"), "file already exists"),
    (re.compile(r"error: (\S+?): patch does not apply"), "patch does not apply"),
    (re.compile(r"error: sha1 information is lacking or useless \((\S+)\)"), "context not found"),
]


def describe_am_failure(output: str) -> tuple[int | None, str, str]:
    """(1-based patch number, its subject, 'file (reason)') from git am's (and git apply's) output."""
    number, subject = None, ""
    m = _FAILED_AT.search(output)
    if m:
        number, subject = int(m.group(1)), m.group(2).strip()
    for pattern, reason in _FILE_PATTERNS:
        f = pattern.search(output)
        if f:
            return number, subject, f"{f.group(1)} ({reason.format(*f.groups())})"
    return number, subject, "see git am's output"


def apply_series(src: Path, base: str, mbox: bytes, total: int, origin: str) -> list[str]:
    """git am the series on the base; on failure nothing stays applied. Returns the new commits."""
    reset(src, base)
    if total == 0:
        return []
    with tempfile.NamedTemporaryFile("wb", suffix=".mbox", delete=False) as f:
        f.write(mbox)
    try:
        res = git(src, "am", "-q", "--3way", "--no-gpg-sign", f.name, check=False)
    finally:
        os.unlink(f.name)
    if res.returncode != 0:
        output = res.stdout + "\n" + res.stderr
        # The 3-way fallback hides which hunk failed; a plain check of the current patch says it.
        current = git(src, "am", "--show-current-patch=diff", check=False).stdout
        if current:
            check = subprocess.run(["git", "apply", "--check", "-v"], cwd=src, input=current, capture_output=True, text=True)
            output = check.stdout + "\n" + check.stderr + "\n" + output
        number, subject, where = describe_am_failure(output)
        reset(src, base)
        which = f"patch {number}/{total} {subject!r}" if number else "a patch"
        raise UsageError(f"series {origin}: {which} does not apply: {where}")
    commits = git(src, "rev-list", "--reverse", f"{base}..HEAD").stdout.split()
    if len(commits) != total:
        reset(src, base)
        raise LabError(f"series {origin}: git am made {len(commits)} commits for {total} patches")
    return commits
