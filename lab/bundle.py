"""Repro bundles: one file holding what is needed to replay a scenario run elsewhere (topology
source and parameters, kernel references and hashes, image recipe hash, scenario options and the
guest program's source), and the replay that says whether the verdicts matched."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

from lab.errors import UsageError
from lab.paths import scenarios_dir

FORMAT = 1


def create(run: Path, output: Path | None = None) -> Path:
    manifest = json.loads((run / "manifest.json").read_text())
    results_file = run / "results.json"
    if not results_file.exists() or manifest.get("kind") != "stable-pages":
        raise UsageError(f"{run.name}: only scenario runs can be bundled (this one is {manifest.get('kind')!r})")
    results = json.loads(results_file.read_text())
    kernels = []
    template_text = None
    image = None
    for label, section in results["kernels"].items():
        sub = json.loads((run / "kernels" / label / "manifest.json").read_text())
        identity = next(iter(sub.get("kernels", {}).values()), {})
        kernels.append({"ref": section["kernel"], "label": label, "release": identity.get("release"), "sha256": identity.get("sha256")})
        topo = sub.get("topology", {})
        if topo.get("template") and template_text is None and Path(topo["template"]).exists():
            template_text = Path(topo["template"]).read_text()
        image = image or next(iter(sub.get("images", {}).values()), None)
    verdicts = {label: {name: c["verdict"] for name, c in s["cases"].items()} | {"_kernel": s["verdict"]}
                for label, s in results["kernels"].items()}
    meta = {
        "format": FORMAT,
        "run": run.name,
        "scenario": manifest["kind"],
        "lab": manifest.get("lab"),
        "host": manifest.get("host"),
        "options": results["options"],
        "kernels": kernels,
        "image": image,
        "verdicts": verdicts,
        "seeds": None,  # the program is deterministic apart from timing; nothing random to seed
    }
    output = output or run / f"{run.name}.bundle.tar.gz"
    files = {
        "bundle.json": json.dumps(meta, indent=2).encode(),
        "summary.txt": (run / "summary.txt").read_bytes() if (run / "summary.txt").exists() else b"",
        "scenario/dio_mutate.c": (scenarios_dir() / "stable-pages/dio_mutate.c").read_bytes(),
        "scenario/expect.toml": (scenarios_dir() / "stable-pages/expect.toml").read_bytes(),
    }
    if template_text is not None:
        files[f"topology/{meta['options']['topology']}.yaml.j2"] = template_text.encode()
    with tarfile.open(output, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return output


def load(bundle: Path) -> tuple[dict, dict[str, bytes]]:
    if not bundle.is_file():
        raise UsageError(f"{bundle}: no such bundle")
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as exc:
        raise UsageError(f"{bundle}: not a lab bundle ({exc})") from None
    if "bundle.json" not in files:
        raise UsageError(f"{bundle}: not a lab bundle (no bundle.json)")
    meta = json.loads(files["bundle.json"])
    if meta.get("format") != FORMAT:
        raise UsageError(f"{bundle}: bundle format {meta.get('format')} is not supported (this lab reads {FORMAT})")
    return meta, files


def replay(bundle: Path) -> tuple[bool, list[str], Path]:
    """Run the bundled scenario again; (verdicts matched, differences and warnings, new run dir)."""
    from lab.kernels.resolve import resolve
    from lab.scenarios import stable_pages as sp

    meta, files = load(bundle)
    notes: list[str] = []
    opts = dict(meta["options"])
    tmp = Path(tempfile.mkdtemp(prefix="lab-replay-"))
    template = next((n for n in files if n.startswith("topology/")), None)
    if template:
        path = tmp / Path(template).name
        path.write_bytes(files[template])
        opts["topology"] = str(path)
    current_source = (scenarios_dir() / "stable-pages/dio_mutate.c").read_bytes()
    if files.get("scenario/dio_mutate.c") not in (None, current_source):
        notes.append("warning: the guest program differs from the bundled one")
    for k in meta["kernels"]:
        kernel = resolve(k["ref"])
        if k.get("sha256") and kernel.sha256 != k["sha256"]:
            notes.append(f"warning: {k['ref']} is now {kernel.release} ({kernel.sha256[:12]}), the bundle had {k['release']} ({k['sha256'][:12]})")
    options = sp.Options(
        kernels=opts["kernels"], topology=opts["topology"], params=opts["params"], targets=opts["targets"],
        directions=opts["directions"], block_sizes=opts["block_sizes"], duration=opts["duration"],
        control_duration=opts["control_duration"], control=opts["control"], size=opts["size"],
    )
    run_dir, results = sp.run(options)
    matched = True
    for label, cases in meta["verdicts"].items():
        now = results["kernels"].get(label)
        if now is None:
            notes.append(f"{label}: not run")
            matched = False
            continue
        for name, verdict in cases.items():
            got = now["verdict"] if name == "_kernel" else now["cases"].get(name, {}).get("verdict")
            if got != verdict:
                matched = False
                notes.append(f"{label} {name if name != '_kernel' else '(kernel)'}: bundle {verdict}, now {got}")
    return matched, notes, run_dir.path
