"""Repro bundles: one file holding what is needed to replay a scenario run elsewhere (scenario and
options, the topology template and parameters, each kernel's identity, the image key, the host, the
verdicts), and the replay that says whether the verdicts matched.

A bundle is data, safe to share: replaying one runs nothing on the host but the lab itself. The
template renders in the sandbox, the options go through the scenario's validation, and a kernel
reference that would build from source (or a tree that would be cloned and built) needs
--allow-build. `lab replay` prints the plan before it runs anything."""

from __future__ import annotations

import atexit
import shutil

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.paths import scenarios_dir
from lab.results import manifest, results_of
from lab.safepaths import check_tree
from lab.schemas import BundleIn, validated

LOG = logging.getLogger(__name__)

FORMAT = 2
MAX_BUNDLE_BYTES = 32 << 20
MAX_MEMBER_BYTES = 8 << 20


def _scenario_sources(scenario: str) -> dict[str, bytes]:
    """The guest programs of a shipped scenario, kept so a replay can say when they differ."""
    out = {}
    for folder in {"stable-pages": ["stable-pages"], "p2p-block": ["p2p"], "nfs-dio": ["nfs"], "nfs-p2p": ["nfs"],
                   "nfs-fstests": []}.get(scenario, []):
        for f in sorted((scenarios_dir() / folder).glob("*")):
            if f.is_file() and f.stat().st_size < MAX_MEMBER_BYTES:
                out[f"scenario/{folder}/{f.name}"] = f.read_bytes()
    return out


def create(run: Path, output: Path | None = None) -> Path:
    m = manifest(run, strict=True)
    results = results_of(run)
    kernels: list[dict[str, Any]] = []
    template_text: str | None = None
    template_name: str | None = None
    image: Any = None
    params: dict[str, Any] = {}
    for label, section in results["subruns"].items():
        sub_dir = Path(section.get("run_dir") or run / "subruns" / label)
        sub = manifest(sub_dir) if sub_dir.is_dir() else {}
        identity: dict[str, Any] = next(iter((sub.get("kernels") or {}).values()), {})
        kernels.append({"ref": section["kernel"], "label": label, "release": identity.get("release"),
                        "sha256": identity.get("sha256"), "kind": identity.get("kind")})
        topo = sub.get("topology") or {}
        if topo.get("template") and template_text is None and Path(topo["template"]).is_file():
            template_text = Path(topo["template"]).read_text()
            template_name = Path(topo["template"]).name
            params = topo.get("params") or {}
        image = image or next(iter((sub.get("images") or {}).values()), None)
    verdicts = {label: {"_run": s["verdict"], **{name: c["verdict"] for name, c in s["cases"].items()}}
                for label, s in results["subruns"].items()}
    rates = {label: s["rate"] for label, s in results["subruns"].items() if s.get("rate")}
    meta = {
        "format": FORMAT, "run": run.name, "scenario": results["scenario"], "lab": m.get("lab"), "host": m.get("host"),
        "options": results["options"], "kernels": kernels, "image": image, "verdicts": verdicts, "rates": rates,
        "topology": {"template": template_name, "params": params},
    }
    carried = _carried_files(results)
    meta["files"] = {option: [name for name, _, _ in entries] for option, entries in carried.items()}
    modes = {name: mode for entries in carried.values() for name, _, mode in entries}
    output = output or run / f"{run.name}.bundle.tar.gz"
    files = {"bundle.json": json.dumps(meta, indent=2).encode(),
             "summary.txt": (run / "summary.txt").read_bytes() if (run / "summary.txt").exists() else b"",
             **_scenario_sources(results["scenario"])}
    if template_text is not None and template_name:
        files[f"topology/{template_name}"] = template_text.encode()
    for entries in carried.values():
        for name, data, _ in entries:
            files[name] = data
    if results.get("scenario_file"):
        source = Path(results["scenario_file"])
        if not source.is_file():
            raise UsageError(f"{run.name} ran the scenario file {source}, which is gone: cannot bundle it")
        files[f"scenario-file/{source.name}"] = source.read_bytes()
        meta["scenario_file"] = source.name
        files["bundle.json"] = json.dumps(meta, indent=2).encode()
    try:
        with tarfile.open(output, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = modes.get(name, 0o644)
                tar.addfile(info, io.BytesIO(data))
    except OSError as exc:
        raise UsageError(f"cannot write the bundle {output}: {exc.strerror}") from None
    return output


def _carried_files(results: dict[str, Any]) -> dict[str, list[tuple[str, bytes, int]]]:
    """Host files a run's options named (repro's --put, --fio): carried in the bundle as data, so a
    replay elsewhere has them. Directories are carried file by file."""
    from lab.scenarios import framework

    cls = framework.scenarios().get(results["scenario"])
    out: dict[str, list[tuple[str, bytes, int]]] = {}
    for option in getattr(cls, "file_options", ()):
        value = results["options"].get(option)
        paths = value if isinstance(value, list) else [value] if value else []
        for n, spec in enumerate(paths):
            path = Path(spec).expanduser()
            if not path.exists():
                raise UsageError(f"{option} {spec}: gone since the run; cannot bundle it")
            if not (path.is_file() or path.is_dir()):
                raise UsageError(f"{option} {spec}: not a regular file or a directory; cannot bundle it")
            if path.is_dir():
                check_tree(path, f"{option} {spec}")  # a link out of the tree would carry a host file away
            items = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for item in items:
                rel = item.name if path.is_file() else f"{path.name}/{item.relative_to(path)}"
                mode = 0o755 if os.access(item, os.X_OK) else 0o644
                out.setdefault(option, []).append((f"files/{option}/{n}/{rel}", item.read_bytes(), mode))
    return out


def _restore_files(meta: dict[str, Any], files: dict[str, bytes], modes: dict[str, int], data: dict[str, Any],
                   directory: Path) -> None:
    """Write the carried files under `directory` and point the options at them."""
    for option, names in (meta.get("files") or {}).items():
        roots: dict[str, Path] = {}
        for name in names:
            if name not in files or ".." in Path(name).parts:
                raise UsageError(f"bundle lists {name!r} but does not hold it")
            _, _, n, rel = name.split("/", 3)
            target = directory / option / n / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[name])
            target.chmod(0o755 if modes.get(name, 0) & 0o100 else 0o644)  # executable or not, nothing else
            roots[n] = directory / option / n / Path(rel).parts[0]
        value = data.get(option)
        if isinstance(value, list):
            data[option] = [str(roots[str(i)]) for i in range(len(value)) if str(i) in roots]
        elif value:
            data[option] = str(roots["0"])


def load(bundle: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    meta, files, _ = load_with_modes(bundle)
    return meta, files


def load_with_modes(bundle: Path) -> tuple[dict[str, Any], dict[str, bytes], dict[str, int]]:
    """The bundle's metadata and files, read into memory (nothing is extracted to disk)."""
    if not bundle.is_file():
        raise UsageError(f"{bundle}: no such bundle")
    if bundle.stat().st_size > MAX_BUNDLE_BYTES:
        raise UsageError(f"{bundle}: {bundle.stat().st_size} bytes is too large for a lab bundle")
    files: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                if member.size > MAX_MEMBER_BYTES or ".." in Path(member.name).parts or member.name.startswith("/"):
                    raise UsageError(f"{bundle}: member {member.name[:60]!r} is not something a lab bundle holds")
                handle = tar.extractfile(member)
                if handle is not None:
                    files[member.name] = handle.read()
                    modes[member.name] = member.mode
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # gzip's BadGzipFile is an OSError
        raise UsageError(f"{bundle}: not a lab bundle ({exc.__class__.__name__}: {exc})") from None
    if "bundle.json" not in files:
        raise UsageError(f"{bundle}: not a lab bundle (no bundle.json)")
    try:
        meta = json.loads(files["bundle.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{bundle}: bundle.json is damaged ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise UsageError(f"{bundle}: bundle format {got!r} is not supported (this lab reads {FORMAT})")
    meta = validated(BundleIn, meta, bundle, "bundle.json")
    return meta, files, modes


@dataclass
class ReplayPlan:
    bundle: Path
    meta: dict[str, Any]
    files: dict[str, bytes]
    scenario: Any  # the Scenario class
    options: Any  # its validated options
    kernel_actions: dict[str, str] = field(default_factory=dict)  # ref -> what resolving it does on this host
    notes: list[str] = field(default_factory=list)
    replaced_kernels: bool = False


def kernel_action(ref: str) -> tuple[str, bool]:
    """(what resolving `ref` does here, whether that builds or runs code from elsewhere)."""
    from lab.kernels import build, named

    if ref.startswith("debian:"):
        return "fetched from Debian's archive (signed packages) or the cache", False
    if build.is_build_key(ref):
        return "taken from this host's cache of built kernels (never built)", False
    if ref.startswith("build:"):
        return f"BUILT FROM SOURCE on this host ({ref})", True
    if "/" not in ref and named.lookup(ref) is not None:
        return f"BUILT FROM SOURCE on this host (named kernel {ref} of {', '.join(map(str, named.kernel_files()))})", True
    return "a kernel image file on this host, booted as it is", False


def plan_replay(bundle: Path, allow_build: bool = False, kernels: list[str] | None = None) -> ReplayPlan:
    """Everything checked, nothing run: the scenario, its options, the template, what each kernel
    reference would do on this host."""
    from lab.scenarios import framework
    from lab.scenarios.options import validate
    from lab.topology.render import check_params

    meta, files, modes = load_with_modes(bundle)
    directory = Path(tempfile.mkdtemp(prefix="lab-replay-"))
    # The sandbox lives as long as the process that replays from it (the run reads its files).
    atexit.register(shutil.rmtree, directory, True)
    if meta.get("scenario_file"):
        # A scenario written as a Python file is code that runs on this host: only with consent.
        name = Path(str(meta["scenario_file"])).name
        if not allow_build:
            raise UsageError(f"{bundle}: replaying runs the bundle's Python scenario file {name} on this host; "
                             f"read it (tar -xOf {bundle} scenario-file/{name}) and pass --allow-build")
        (directory / name).write_bytes(files[f"scenario-file/{name}"])
        framework.load_file(directory / name)
    cls = framework.get(meta["scenario"])
    data = dict(meta["options"])
    if kernels:
        data["kernels"] = kernels
    _restore_files(meta, files, modes, data, directory)
    template = meta.get("topology", {}).get("template")
    notes: list[str] = []
    if template:
        name = Path(str(template)).name
        if f"topology/{name}" not in files or not name.endswith(".yaml.j2"):
            raise UsageError(f"{bundle}: bundle.json names template {name!r} but holds no such file")
        (directory / name).write_bytes(files[f"topology/{name}"])
        data["topology"] = str(directory / name)
    if isinstance(data.get("params"), dict):
        check_params(data["params"])
    options = validate(cls.Options, data)
    cls(options).plan()  # renders the bundle's template in the sandbox and checks every option against it
    plan = ReplayPlan(bundle, meta, files, cls, options, notes=notes, replaced_kernels=bool(kernels))
    refused = []
    for ref in cls(options).kernels:
        action, builds = kernel_action(ref)
        plan.kernel_actions[ref] = action
        if builds and not allow_build:
            refused.append(ref)
    for what in host_actions(cls, options):
        if not allow_build:
            refused.append(what)
    if refused:
        raise UsageError(f"{bundle}: replaying would build or fetch code on this host ({'; '.join(refused)}); "
                         f"check the bundle and pass --allow-build")
    for path, data_bytes in files.items():
        if path.startswith("scenario/"):
            current = scenarios_dir() / path.removeprefix("scenario/")
            if not current.exists() or hashlib.sha256(current.read_bytes()).digest() != hashlib.sha256(data_bytes).digest():
                notes.append(f"warning: the guest program {path.removeprefix('scenario/')} differs from the bundled one")
    return plan


def host_actions(cls: Any, options: Any) -> list[str]:
    """Option values that make the host clone or build something (an fstests git URL)."""
    from lab.suites.source import is_url, split_ref

    value = getattr(options, "fstests", None)
    if isinstance(value, str) and is_url(split_ref(value)[0]):
        return [f"clone and build fstests from {value}"]
    return []


def describe(plan: ReplayPlan) -> str:
    meta = plan.meta
    lab = meta.get("lab") or {}
    host = meta.get("host") or {}
    lines = [f"bundle {plan.bundle.name}: {meta['scenario']} run {meta.get('run')} made with lab {lab.get('version')} "
             f"({lab.get('commit') or 'unknown commit'}) on {host.get('hostname', '?')}"]
    topo = meta.get("topology") or {}
    params = " ".join(f"-p {k}={v}" for k, v in (topo.get("params") or {}).items())
    lines.append(f"  topology: {topo.get('template') or plan.options.topology or plan.scenario.topology} "
                 f"(template from the bundle, rendered in the sandbox) {params}".rstrip())
    recorded = {k.get("ref"): k for k in meta["kernels"] if isinstance(k, dict)}
    for ref, action in plan.kernel_actions.items():
        had = recorded.get(ref, {})
        lines.append(f"  kernel {ref}: {action}" + (f"; the bundle ran {had.get('release')}" if had.get("release") else ""))
    shown = {k: v for k, v in plan.options.to_dict().items() if k not in ("kernels", "topology", "params")}
    lines.append(f"  options: {json.dumps(shown)}")
    lines += [f"  {n}" for n in plan.notes]
    return "\n".join(lines)


def replay(plan: ReplayPlan) -> tuple[bool, list[str], Path]:
    """Run the bundled scenario again; (verdicts matched, differences and warnings, new run dir)."""
    from lab.scenarios import framework

    notes = list(plan.notes)
    resolved = framework.resolve_kernels(plan.scenario(plan.options).kernels)
    for k in plan.meta["kernels"]:
        kernel = resolved.get(k.get("ref"))
        if kernel and k.get("sha256") and kernel.sha256 != k["sha256"]:
            notes.append(f"warning: {k['ref']} is now {kernel.release} ({kernel.sha256[:12]}), the bundle had "
                         f"{k.get('release')} ({k['sha256'][:12]})")
    outcome = framework.run(plan.scenario, plan.options)
    recorded_rates = plan.meta.get("rates") or {}
    for label, rate in recorded_rates.items():
        notes.append(f"bundle  {label}: {_rate_text(rate)}")
    for label, section in outcome.results["subruns"].items():
        notes.append(f"now     {label}: {section['verdict']} {_rate_text(section.get('rate'))}".rstrip())
    if plan.replaced_kernels:
        # Other kernels than the bundle's: nothing to match label by label, the rates side by side say it.
        return all(s["verdict"] != "ERROR" for s in outcome.results["subruns"].values()), notes, outcome.run_dir.path
    matched = True
    for label, cases in plan.meta["verdicts"].items():
        now = outcome.results["subruns"].get(label)
        if now is None:
            notes.append(f"{label}: not run")
            matched = False
            continue
        for name, verdict in cases.items():
            got = now["verdict"] if name == "_run" else now["cases"].get(name, {}).get("verdict")
            if got != verdict:
                matched = False
                notes.append(f"{label} {name if name != '_run' else '(sub-run)'}: bundle {verdict}, now {got}")
    return matched, notes, outcome.run_dir.path


def _rate_text(rate: dict[str, Any] | None) -> str:
    from lab.stats import Rate

    return Rate(int(rate["failed"]), int(rate["runs"])).describe() if isinstance(rate, dict) and "failed" in rate else ""
