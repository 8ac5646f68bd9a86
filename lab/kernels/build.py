"""Kernels built from a source plus a series plus config fragments, cached.

Two keys: a request key (source identity, series content, fragments, compiler) answers a repeated
request without touching the tree; the kernel's own key (source identity, series content, final
.config, compiler) names the cache entry, so two requests that end in the same .config share it."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError, UsageError
from lab.kernels import kconfig, source as sources
from lab.kernels.kernel import Kernel, write_meta
from lab.kernels.series import Series, load_series
from lab.paths import cache_dir
from lab.progress import info, step
from lab.settings import settings

LOG = logging.getLogger(__name__)

# Bump when the way kernels are built changes (targets, flags, entry layout): old entries stop matching.
BUILD_RECIPE = "lab-build-1"
TARGET = "bzImage"
_OBJ_LINE = re.compile(r"^\s+(CC|AS)\s+(\S+)")


@dataclass(frozen=True)
class BuildRequest:
    source: str
    series: str | None = None
    configs: tuple[str, ...] = ()
    patches: int | None = None  # apply only the first N patches of the series (bisect)
    name: str | None = None  # the name a kernels file gave it
    fragments: tuple[str, ...] | None = None  # the lab's fragments to start from (default: all of them)

    def describe(self) -> str:
        parts = [f"source={self.source}"]
        if self.series:
            parts.append(f"series={self.series}" + (f"[1..{self.patches}]" if self.patches is not None else ""))
        if self.fragments is not None:
            parts.append("fragments=" + "+".join(self.fragments))
        parts += [f"config={c}" for c in self.configs]
        return ",".join(parts)


@dataclass
class Plan:
    """What a request resolves to before anything is built."""
    request: BuildRequest
    source: sources.Source
    series: Series | None
    fragments: list[kconfig.Fragment]
    requested: dict[str, str]
    compiler: str
    request_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.request_key = request_key(self.source.identity, self.series_digest, kconfig.render_allconfig(self.requested),
                                       self.compiler)

    @property
    def series_digest(self) -> str:
        return self.series.digest() if self.series else ""


def _sha(*parts: str) -> str:
    return hashlib.sha256("\0".join((BUILD_RECIPE, *parts)).encode()).hexdigest()


def request_key(source_identity: str, series_digest: str, requested_config: str, compiler: str) -> str:
    return _sha("request", source_identity, series_digest, requested_config, compiler)


def kernel_key(source_identity: str, series_digest: str, final_config: str, compiler: str) -> str:
    # The .config's header carries no date, so it is a stable input.
    return _sha("kernel", source_identity, series_digest, final_config, compiler)


def compiler_version() -> str:
    cc = settings().cc
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise LabError(f"no working C compiler {cc!r} on the host; run 'lab setup' (needs gcc, make, flex, bison, bc, libelf-dev, libssl-dev)") from None
    return out.splitlines()[0].strip()


def kernels_root() -> Path:
    root = cache_dir() / "kernels"
    (root / "requests").mkdir(parents=True, exist_ok=True)
    return root


def check_request(request: BuildRequest):
    """The user's input checked without build tools or network (before any host package is
    installed): the series and its prefix, the fragments, the source's spelling. Returns the
    series prefix, the fragments and the merged config they ask for."""
    series = load_series(request.series) if request.series else None
    if series and request.patches is not None:
        if not 0 <= request.patches <= len(series.patches):
            raise UsageError(f"series {request.series} has {len(series.patches)} patches, not {request.patches}")
        series = series.prefix(request.patches)
    lab_fragments = ([kconfig.fragment(f) for f in request.fragments] if request.fragments is not None
                     else kconfig.default_fragments())
    fragments = lab_fragments + [kconfig.fragment(c) for c in request.configs]
    sources.check_source_spec(request.source)
    return series, fragments, kconfig.merge(fragments)


def plan(request: BuildRequest) -> Plan:
    # Cheap checks of the user's input first; resolving a Debian source may need the network.
    series, fragments, requested = check_request(request)
    compiler = compiler_version()
    src = sources.resolve_source(request.source)
    return Plan(request, src, series, fragments, requested, compiler)


def cached(p: Plan) -> Kernel | None:
    alias = kernels_root() / "requests" / p.request_key[:32]
    if alias.exists():
        entry = kernels_root() / alias.read_text().strip()
        if (entry / "kernel.json").exists():
            return Kernel.load(entry)
    return None


def build(request: BuildRequest, jobs: int | None = None) -> Kernel:
    """The kernel for a request: from the cache when it was asked before, else built."""
    from lab.host import ensure_host

    check_request(request)  # bad input is an error before any host package is installed
    ensure_host(build=True)
    p = plan(request)
    hit = cached(p)
    if hit:
        return hit
    root = sources.tree_root(p.source)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info(f"another lab is building in {root}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        hit = cached(p)
        if hit:
            return hit
        return _build_locked(p, root, jobs or os.cpu_count() or 1)


def _make(obj: Path, src: Path, *targets: str, jobs: int = 1) -> list[str]:
    ccache = shutil.which("ccache")
    cc = settings().cc
    argv = ["make", "-s" if not targets or targets[0].endswith("config") else "", f"-j{jobs}", "-C", str(src), f"O={obj}",
            f"CC={'ccache ' + cc if ccache else cc}", f"HOSTCC={cc}", *targets]
    return [a for a in argv if a]


def _env() -> dict:
    env = dict(os.environ)
    env.update({
        "CCACHE_DIR": str(cache_dir() / "ccache"),
        # Hits across worktrees: paths below the tree are hashed relative to it.
        "CCACHE_NOHASHDIR": "1",
        # Depend mode hashes the compiler's own -MD output instead of running the preprocessor a
        # second time: a cold cache then costs next to nothing over a plain build.
        "CCACHE_DEPEND": "1",
        "CCACHE_MAXSIZE": os.environ.get("CCACHE_MAXSIZE", "5G"),
        "KBUILD_BUILD_USER": "lab",
        "KBUILD_BUILD_HOST": "lab",
        "LC_ALL": "C",
    })
    return env


def configure(p: Plan, src: Path, obj: Path, log: Path) -> str:
    """allnoconfig from the merged fragments, then the check. Returns the final .config text."""
    obj.mkdir(parents=True, exist_ok=True)
    allconfig = obj / "lab-fragments.config"
    allconfig.write_text(kconfig.render_allconfig(p.requested))
    env = _env() | {"KCONFIG_ALLCONFIG": str(allconfig), "CCACHE_BASEDIR": str(src)}
    with open(log, "a") as out:
        argv = _make(obj, src, "allnoconfig")
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        res = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise LabError(f"make allnoconfig failed in {src}; log: {log}: {_tail(log, 3)}")
    final_text = (obj / ".config").read_text()
    problems = kconfig.check(p.requested, kconfig.parse_config(final_text, ".config"), src)
    if problems:
        more = f" (and {len(problems) - 1} more, all in {log})" if len(problems) > 1 else ""
        with open(log, "a") as out:
            out.write("config check failed:\n" + "\n".join(problems) + "\n")
        raise UsageError(f"kernel config: {problems[0]}{more}")
    return final_text


def _tail(log: Path, lines: int) -> str:
    text = log.read_text(errors="replace").splitlines()
    errors = [l for l in text if re.search(r"\berror\b|\*\*\*", l)]
    return " | ".join((errors or text)[-lines:])


def obj_dir(p: Plan, root: Path) -> Path:
    """One build tree per source and requested configuration: another series only recompiles what
    it touched, and switching between fragment sets does not throw the other set's objects away."""
    digest = hashlib.sha256(kconfig.render_allconfig(p.requested).encode()).hexdigest()[:12]
    return root / f"obj-{digest}"


def _build_locked(p: Plan, root: Path, jobs: int) -> Kernel:
    started = time.monotonic()
    src, base = sources.prepare_worktree(p.source)
    obj = obj_dir(p, root)
    obj.mkdir(exist_ok=True)
    # Kept when anything fails (named in the error), removed after a success (a copy is in the entry).
    log = root / "logs" / f"{p.request_key[:16]}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(f"lab kernel build {p.request.describe()}\n")
    patches = p.series.patches if p.series else ()
    if p.series:
        with step(f"applying {len(patches)} patch(es) from {p.series.origin} with git am") as st:
            commits = sources.apply_series(src, base, p.series.mbox_bytes(), len(patches), p.series.origin)
            st.suffix = f" ({len(commits)} commits on {base[:12]})"
    else:
        sources.reset(src, base)
    with step("configuring (allnoconfig + the lab's fragments + yours, then checking every option)"):
        final_config = configure(p, src, obj, log)
    key = kernel_key(p.source.identity, p.series_digest, final_config, p.compiler)
    entry = kernels_root() / f"build-{key[:16]}"
    if not (entry / "kernel.json").exists():
        stats = _compile(p, src, obj, log, jobs)
        _store(p, key, entry, src, obj, log, base, time.monotonic() - started, stats)
    else:
        info(f"same kernel already built (identical sources, series and .config): {entry.name}")
    (kernels_root() / "requests" / p.request_key[:32]).write_text(entry.name)
    log.unlink(missing_ok=True)
    return Kernel.load(entry)


def ccache_counters() -> dict[str, int]:
    """ccache's hit and miss counters for the lab's cache (empty without ccache)."""
    if not shutil.which("ccache"):
        return {}
    res = subprocess.run(["ccache", "--print-stats"], env=_env(), capture_output=True, text=True)
    return parse_ccache_stats(res.stdout) if res.returncode == 0 else {}


def parse_ccache_stats(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        if key in ("direct_cache_hit", "preprocessed_cache_hit", "cache_miss") and value.strip().isdigit():
            out[key] = int(value)
    return out


def ccache_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, float] | None:
    """Hits and misses of one build, and its hit rate in percent (None without ccache or compiles)."""
    if not before or not after:
        return None
    hits = sum(after.get(k, 0) - before.get(k, 0) for k in ("direct_cache_hit", "preprocessed_cache_hit"))
    misses = after.get("cache_miss", 0) - before.get("cache_miss", 0)
    if hits + misses <= 0:
        return None
    return {"hits": hits, "misses": misses, "hit_rate": round(100.0 * hits / (hits + misses), 1)}


def _compile(p: Plan, src: Path, obj: Path, log: Path, jobs: int) -> dict[str, float] | None:
    counters = ccache_counters()
    counted = obj / "lab-objects"
    expected = int(counted.read_text()) if counted.exists() else 0
    done = 0
    argv = _make(obj, src, TARGET, jobs=jobs)
    env = _env() | {"CCACHE_BASEDIR": str(src)}
    title = f"building {p.source.label}" + (f" + {len(p.series.patches)} patch(es)" if p.series else "") + f" (make -j{jobs} {TARGET})"
    with step(title) as st, open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                m = _OBJ_LINE.match(line)
                if m:
                    done += 1
                    total = f"/~{expected}" if expected and not p.series else ""
                    st.update(f"{done}{total} objects compiled, now {m.group(2)}")
        finally:
            rc = proc.wait()
        st.suffix = f" ({done} objects compiled)"
    if rc != 0:
        raise LabError(f"kernel build failed (exit {rc}); log: {log}; last errors: {_tail(log, 4)}")
    if not p.series and (not expected or done > expected):
        counted.write_text(str(done))
    # Concurrent builds share the cache, so the figure is the cache's, over this build's time.
    stats = ccache_delta(counters, ccache_counters())
    if stats:
        info(f"ccache: {stats['hits']:.0f} hits, {stats['misses']:.0f} misses ({stats['hit_rate']} % hit rate)")
    return stats


def _store(p: Plan, key: str, entry: Path, src: Path, obj: Path, log: Path, base: str, seconds: float,
           ccache: dict[str, float] | None = None) -> None:
    release = (obj / "include/config/kernel.release").read_text().strip()
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        shutil.copy2(obj / "arch/x86/boot/bzImage", tmp / "vmlinuz")
        shutil.copy2(obj / ".config", tmp / "config")
        shutil.copy2(obj / "System.map", tmp / "System.map")
        shutil.copy2(log, tmp / "build.log")
        if p.series:
            (tmp / "series.mbox").write_bytes(p.series.mbox_bytes())
        _builtin_modules(obj, tmp, release, log)
        meta = {
            "ref": f"build:{key[:16]}",
            "kind": "build",
            "release": release,
            "name": p.request.name,
            "request": p.request.describe(),
            "source": {"spec": p.source.spec, "kind": p.source.kind, "identity": p.source.identity, "base_commit": base},
            "series": {"origin": p.series.origin, "sha256": p.series.digest(),
                       "patches": [pt.title for pt in p.series.patches]} if p.series else None,
            "fragments": [f.name for f in p.fragments],
            "compiler": p.compiler,
            "key": key,
            "build_seconds": round(seconds, 1),
            "ccache": ccache,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_meta(tmp, meta)
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info(f"kernel {release} built in {seconds:.0f} s: build:{key[:16]} ({entry})")


def _builtin_modules(obj: Path, out: Path, release: str, log: Path) -> None:
    """A modules disk holding only modules.builtin: modprobe of a built-in driver then succeeds
    quietly in the guest, so scenarios run unchanged on packaged and built kernels."""
    from lab.kernels.debian import make_modules_image

    tree = out / "modules/lib/modules" / release
    tree.mkdir(parents=True)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (obj / name).exists():
            shutil.copy2(obj / name, tree / name)
    (tree / "modules.order").touch()
    res = subprocess.run(["depmod", "-b", str(out / "modules"), release], capture_output=True, text=True)
    if res.returncode != 0:
        raise LabError(f"depmod for {release} failed: {res.stderr.strip()}")
    make_modules_image(tree, out / "modules.img", log)


def find(ref: str) -> Kernel:
    """build:KEY (a prefix of at least 8 hex digits) from the cache."""
    key = ref.removeprefix("build:")
    if len(key) < 8 or not re.fullmatch(r"[0-9a-f]+", key):
        raise UsageError(f"{ref}: expected build:<hex key> (lab kernel list shows them) or build:source=...[,series=...][,config=...]")
    matches = [e for e in kernels_root().glob(f"build-{key[:16]}*") if (e / "kernel.json").exists()]
    if not matches:
        raise UsageError(f"{ref}: no such built kernel in {kernels_root()} (lab kernel list)")
    if len(matches) > 1:
        raise UsageError(f"{ref}: ambiguous, matches {', '.join(m.name for m in matches)}")
    return Kernel.load(matches[0])


def parse_build_ref(ref: str) -> BuildRequest:
    """build:source=S[,series=FILE][,config=FRAG]...[,patches=N][,fragments=A+B] (base= is a synonym of source=)."""
    body = ref.removeprefix("build:")
    values: dict[str, list[str]] = {}
    for item in filter(None, body.split(",")):
        k, sep, v = item.partition("=")
        if not sep or not v:
            raise UsageError(f"{ref}: {item!r} is not key=value (keys: source, series, config, patches)")
        k = {"base": "source", "src": "source"}.get(k.strip(), k.strip())
        if k not in ("source", "series", "config", "patches", "fragments"):
            raise UsageError(f"{ref}: unknown key {k!r} (keys: source, series, config, patches, fragments)")
        values.setdefault(k, []).append(v.strip())
    if len(values.get("source", [])) != 1:
        raise UsageError(f"{ref}: needs exactly one source= (e.g. build:source=linux-source-7.3,series=fix.mbox)")
    if any(len(values.get(k, [])) > 1 for k in ("series", "patches", "fragments")):
        raise UsageError(f"{ref}: at most one series=, patches= and fragments=")
    patches = values.get("patches", [None])[0]
    if patches is not None and not patches.isdigit():
        raise UsageError(f"{ref}: patches= takes a number")
    return BuildRequest(source=values["source"][0], series=values.get("series", [None])[0],
                        configs=tuple(c for v in values.get("config", []) for c in v.split("+")),
                        patches=int(patches) if patches is not None else None,
                        fragments=tuple(values["fragments"][0].split("+")) if "fragments" in values else None)


def is_build_key(ref: str) -> bool:
    return bool(re.fullmatch(r"build:[0-9a-f]{8,64}", ref))


def remove(ref: str) -> tuple[Path, int]:
    """Delete a built kernel and the request aliases that point at it; build trees stay (they are
    what makes the next build incremental)."""
    kernel = find(ref if ref.startswith("build:") else f"build:{ref}")
    entry = kernel.vmlinuz.parent
    aliases = 0
    for alias in (kernels_root() / "requests").iterdir():
        if alias.read_text().strip() == entry.name:
            alias.unlink()
            aliases += 1
    shutil.rmtree(entry)
    return entry, aliases
