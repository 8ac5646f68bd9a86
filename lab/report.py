"""`lab report NIGHT [--baseline NIGHT] -o DIR`: a static HTML page a person reads in the morning.

The matrix as a grid (rows: entry and topology parameters; columns: kernels), every cell coloured
by its class and linked to its summary, consoles, kernel logs and program output; the scenarios'
own A/B tables; plots (throughput per kernel and format, failure rates with their intervals, boot
times across nights); a header with the kernels' identities and the lab version.

Classes, against the baseline night when there is one:
    pass, expected-failure, regression (a verdict that changed from PASS to FAIL or ERROR for the
    same cell identity; without a baseline, a FAIL the expectations did not foresee), fixed (FAIL
    to PASS; without a baseline an unexpected PASS), failing (an unforeseen FAIL the baseline had
    too), flaky (some repetitions failed, some passed), error, na.
The command exits non-zero when any cell is a regression, naming them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jinja2

from lab import __version__
from lab.errors import UsageError
from lab.image_versions import changes
from lab.night import load as load_night
from lab.stats import Rate, separated

LOG = logging.getLogger(__name__)

CLASSES = ("pass", "expected-failure", "regression", "fixed", "failing", "flaky", "error", "na", "missing")
COLOURS = {"pass": "#2e7d32", "expected-failure": "#7b8d3b", "regression": "#c62828", "fixed": "#1565c0",
           "failing": "#ef6c00", "flaky": "#8e24aa", "error": "#424242", "na": "#9e9e9e", "missing": "#000000"}
HISTORY = 7  # nights of history shown per cell
# Classes that make the report's exit status non-zero (CI reads it).
FAILING_CLASSES = ("regression", "missing")


def classify(cell: dict[str, Any], base: dict[str, Any] | None) -> str:
    """A cell's class against its last night. A regression is any cell worse than that night (PASS
    to FAIL, ERROR or N/A), any unexpected failure whatever the baseline said (a cell already
    failing for an expected reason must not hide a new failure), and a regression of last night's
    that has not passed since, and a failure rate clear of last night's; a cell with no artifact is
    missing."""
    verdict = cell.get("verdict")
    if verdict == "MISSING":
        return "missing"
    rate, base_rate = cell.get("rate"), (base or {}).get("rate")
    if rate and 0 < rate.get("failed", 0) < rate.get("runs", 0):
        # A flaky cell is judged by its rate: a regression when its interval is clear of last night's, above it.
        now = Rate(int(rate["failed"]), int(rate["runs"]))
        if base_rate and base_rate.get("runs"):
            before = Rate(int(base_rate["failed"]), int(base_rate["runs"]))
            if separated(now, before) and now.value > before.value:
                return "regression"
        return "flaky"
    base_verdict = (base or {}).get("verdict")
    still = bool((base or {}).get("regressed_since")) and verdict != "PASS"
    worse = base_verdict in ("PASS", "FLAKY") and verdict in ("FAIL", "ERROR", "N/A")
    if worse or still or str(cell.get("outcome", "")).startswith("unexpected failure"):
        return "regression"
    if verdict == "ERROR":
        return "error"
    if verdict == "N/A":
        return "na"
    if verdict == "PASS" and cell.get("flaky"):
        return "flaky"
    if verdict == "FAIL":
        return "expected-failure" if cell.get("outcome") == "as expected" else "failing"
    if verdict == "PASS" and (base_verdict == "FAIL" or str(cell.get("outcome", "")).startswith("unexpected pass")):
        return "fixed"
    return "pass"


def load_acks(path: Path | None) -> dict[str, str]:
    """An acknowledgement file ([[ack]] cell = "ID", why = "..."): regressions a person has seen;
    they are shown as such and no longer fail the report."""
    if path is None:
        return {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--ack {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--ack {path}: not valid TOML: {exc}") from None
    acks = data.get("ack", [])
    if set(data) - {"ack"} or not isinstance(acks, list) or not all(
            isinstance(a, dict) and set(a) <= {"cell", "why"} and isinstance(a.get("cell"), str) and isinstance(a.get("why", ""), str)
            for a in acks):
        raise UsageError(f"--ack {path}: expected [[ack]] tables with cell = \"ID\" and why = \"...\"")
    return {a["cell"]: a.get("why", "") for a in acks}


def cell_notes(cell: dict[str, Any]) -> str:
    """What a cell's verdict alone does not say: attempts discarded after the emulator's fault, flaky cases."""
    notes = []
    attempts = cell.get("attempts") or []
    if attempts:
        notes.append(f"run again {len(attempts)}x after emulator faults")
    flaky = cell.get("flaky") or []
    if flaky:
        notes.append(f"{len(flaky)} flaky: {', '.join(map(str, flaky[:3]))}")
    return "; ".join(notes)


def links(night_dir: Path, report_dir: Path, cell: dict[str, Any], cid: str) -> list[tuple[str, str]]:
    """(label, href inside the report) for the files a person opens first: copied into the report's
    cells/<id>/, so a report published alone keeps every link."""
    root = night_dir / cell["run"]
    dest = report_dir / "cells" / cid
    out = []
    for label, pattern in (("summary", "summary.txt"), ("results", "results.json"), ("lab.log", "lab.log"),
                           ("console", "subruns/*/machines/*/console.log"), ("kernel log", "subruns/*/**/*dmesg*"),
                           ("program output", "subruns/*/**/*.out"), ("stdout", "subruns/*/**/stdout")):
        for found in sorted(root.glob(pattern))[:3]:
            if found.is_symlink() or not found.is_file():
                continue  # a night's files stay inside it; nothing is followed out
            rel = found.relative_to(root)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, target)
            out.append((label if found.name == pattern else f"{label}: {rel}", f"cells/{cid}/{rel}"))
    return out


def _plots(night: dict[str, Any], baseline: dict[str, Any] | None, out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    # Names come from the cells ('$' in a parameter): text, never mathtext to parse.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    cells = night["cells"]
    # Throughput per kernel and format: passing runs only (a failed run's figure measures the failure),
    # each accelerator a series of its own (KVM and TCG differ by an order of magnitude), last
    # night's value beside tonight's.
    series: dict[str, dict[str, float]] = {}
    for when, source in (("", night), (" (last night)", baseline)):
        for c in (source or {}).get("cells", {}).values():
            if c.get("verdict") != "PASS":
                continue
            label = f"{c['entry']} " + ",".join(f"{k}={v}" for k, v in sorted(c.get("params", {}).items()))
            accel = str(c.get("accel") or "?").upper()
            for name, value in c.get("figures", {}).items():
                if name.endswith("MiB/s"):
                    series.setdefault(f"{label} {name.removesuffix(' MiB/s')} [{accel}]", {})[c["kernel"] + when] = value
    if series:
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(series) + 1.5))
        kernels = sorted({k for s in series.values() for k in s})
        height = 0.8 / max(1, len(kernels))
        for i, kernel in enumerate(kernels):
            ys = [j + i * height for j in range(len(series))]
            ax.barh(ys, [series[s].get(kernel, 0) for s in series], height=height, label=kernel)
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(series))], list(series), fontsize=7)
        ax.set_xlabel("MiB/s (mutating runs; NFS matrices)")
        ax.legend(fontsize=8)
        ax.set_title("Throughput per kernel and format")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=90)
        plt.close(fig)
        made.append(("Throughput per kernel and format", "throughput.png"))
    # Failure rates with their 95 % intervals.
    rated = [(cid, c["rate"]) for cid, c in cells.items() if c.get("rate")]
    if rated:
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(rated) + 1.5))
        for j, (_, rate) in enumerate(rated):
            low, high = Rate(int(rate["failed"]), int(rate["runs"])).interval()
            value = rate["failed"] / rate["runs"] if rate["runs"] else 0
            ax.errorbar([100 * value], [j], xerr=[[100 * (value - low)], [100 * (high - value)]], fmt="o", capsize=3)
        ax.set_yticks(range(len(rated)), [cid[:60] for cid, _ in rated], fontsize=7)
        ax.set_xlim(-2, 102)
        ax.set_xlabel("failure rate, % (95 % Wilson interval)")
        ax.set_title("Failure rates")
        fig.tight_layout()
        fig.savefig(out / "rates.png", dpi=90)
        plt.close(fig)
        made.append(("Failure rates with their intervals", "rates.png"))
    # Boot times across nights, per kernel (median over the night's cells).
    nights = [n for n in (baseline, night) if n]
    boots: dict[str, list[float | None]] = {}
    for i, n in enumerate(nights):
        per_kernel: dict[str, list[float]] = {}
        for c in n["cells"].values():
            if "boot seconds" in c.get("figures", {}):
                per_kernel.setdefault(c["kernel"], []).append(c["figures"]["boot seconds"])
        for kernel, seconds in per_kernel.items():
            boots.setdefault(kernel, [None] * len(nights))[i] = sorted(seconds)[len(seconds) // 2]
    if boots:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = [n["name"] for n in nights]
        for kernel, medians in boots.items():
            ax.plot(names, [v if v is not None else float("nan") for v in medians], marker="o", label=kernel)
        ax.set_ylabel("seconds to ready (median)")
        ax.set_title("Boot times across nights")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "boot.png", dpi=90)
        plt.close(fig)
        made.append(("Boot times across nights", "boot.png"))
    return made


def ab_tables(night_dir: Path, night: dict[str, Any]) -> list[tuple[str, str]]:
    """The scenarios' own tables, kernels side by side, for cells that differ only by kernel."""
    from lab.errors import LabError
    from lab.scenarios import framework

    groups: dict[str, dict[str, Any]] = {}
    for c in night["cells"].values():
        if not c.get("run"):
            continue  # a missing cell has no results
        key = f"{c['entry']} " + " ".join(f"{k}={v}" for k, v in sorted(c.get("params", {}).items()))
        try:
            results = json.loads((night_dir / c["run"] / "results.json").read_text())
        except (OSError, ValueError):
            continue
        group = groups.setdefault(key, {"scenario": c["scenario"], "subruns": {}})
        for label, section in results.get("subruns", {}).items():
            group["subruns"][label] = section
    out = []
    for key, merged in groups.items():
        try:
            cls = framework.get(merged["scenario"])
            out.append((key, framework.summary(cls(cls.Options.model_construct()), merged)))
        except (LabError, KeyError, TypeError, ValueError) as exc:
            out.append((key, f"(no table: {exc})"))
    return out


PAGE = jinja2.Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lab night {{ night.name }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table.grid { border-collapse: collapse; margin: 1em 0; }
table.grid th, table.grid td { border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; vertical-align: top; }
td.cell a { color: inherit; }
{% for cls, colour in colours.items() %}td.{{ cls }} { background: {{ colour }}; color: white; }
span.legend.{{ cls }} { background: {{ colour }}; color: white; padding: 2px 6px; margin-right: 4px; }
{% endfor %}
pre { background: #f5f5f5; padding: 8px; overflow-x: auto; font-size: 12px; }
.regressions { color: #c62828; font-weight: bold; }
details { margin: 2px 0; }
.reason { font-size: 11px; max-width: 28em; }
.history { font-size: 10px; }
span.cls { font-size: 11px; text-transform: uppercase; border: 1px solid white; padding: 0 3px; }
td.drift, div.drift { font-weight: bold; }
</style></head><body>
<h1>lab night {{ night.name }}</h1>
<p>lab {{ version }} (cells made with {{ lab_versions | join(", ") }}); merged {{ night.merged }}{% if baseline %}; baseline: {{ baseline.name }}{% endif %}.</p>
<table class="grid" id="kernels"><tr><th>kernel</th><th>release</th><th>last night</th></tr>
{% for ref, release in night.kernels.items() %}{% set before = (baseline.kernels.get(ref) if baseline else None) %}<tr><td>{{ ref }}</td><td>{{ release }}</td>
<td{% if before and before != release %} class="drift"{% endif %}>{% if before and before != release %}<strong>changed</strong> from {{ before }}{% elif before %}same{% else %}-{% endif %}</td></tr>{% endfor %}</table>
{% if images %}<table class="grid" id="images"><tr><th>image</th><th>key</th><th>packages</th><th>last night</th></tr>
{% for i in images %}<tr><td>{{ i.name }}</td><td>{{ i.key }}</td><td>{{ i.count }} (Debian as of {{ i.resolved_at }})</td>
<td{% if i.changed %} class="drift"{% endif %}>{% if i.changed %}<strong>changed</strong> from {{ i.before }}: {{ i.moved | length }} package(s) moved
<details><summary>which</summary><pre>{{ i.moved | join("\n") }}</pre></details>{% elif i.before %}same{% else %}-{% endif %}</td></tr>{% endfor %}</table>{% endif %}
{% if regressions %}<p class="regressions" id="regressions">{{ regressions | length }} regression(s): {{ regressions | join(", ") }}</p>
{% else %}<p id="regressions">No regressions.</p>{% endif %}
{% if counts.missing %}<p class="regressions" id="missing">{{ counts.missing }} cell(s) of the matrix brought back no result (MISSING).</p>{% endif %}
<p>{% for cls in classes %}<span class="legend {{ cls }}">{{ cls }} {{ counts[cls] }}</span>{% endfor %}</p>
<table class="grid" id="grid"><tr><th>entry / parameters</th>{% for k in kernels %}<th>{{ k }}</th>{% endfor %}</tr>
{% for row, by_kernel in rows.items() %}<tr><th>{{ row }}</th>
{% for k in kernels %}{% set c = by_kernel.get(k) %}{% if c %}<td class="cell {{ c.cls }}" id="cell-{{ c.id }}" data-class="{{ c.cls }}" title="{{ c.reason }}">
<a href="{{ c.summary }}">{{ c.verdict }}</a> <span class="cls">{{ c.cls }}</span> <span class="accel">{{ c.accel }}</span>{% if c.rate %} {{ c.rate }}{% endif %}{% if c.baseline %} (was {{ c.baseline }}){% endif %}{% if c.notes %} <span class="notes">[{{ c.notes }}]</span>{% endif %}
{% if c.drift %}<div class="drift">{{ c.drift }}</div>{% endif %}<div class="reason">{{ c.reason[:160] }}</div>
{% if c.history %}<div class="history">last nights: {{ c.history }}</div>{% endif %}
<details><summary>files</summary>{% for label, href in c.links %}<div><a href="{{ href }}">{{ label }}</a></div>{% endfor %}</details></td>
{% else %}<td></td>{% endif %}{% endfor %}</tr>
{% endfor %}</table>
{% for title, image in plots %}<h2>{{ title }}</h2><img src="{{ image }}" alt="{{ title }}">{% endfor %}
<h2>Tables</h2>
{% for key, text in tables %}<h3>{{ key }}</h3><pre>{{ text }}</pre>{% endfor %}
</body></html>
""", autoescape=True)


def drift(cell: dict[str, Any], base: dict[str, Any] | None) -> str:
    """What the cell booted that moved since the baseline: the kernel release, an image's key."""
    if not base:
        return ""
    moved = []
    if base.get("release") and cell.get("release") and base["release"] != cell["release"]:
        moved.append(f"release {base['release']} -> {cell['release']}")
    for name, key in sorted((cell.get("images") or {}).items()):
        before = (base.get("images") or {}).get(name)
        if before and before != key:
            moved.append(f"image {name} {before} -> {key}")
    return "; ".join(moved)


def image_changes(night: dict[str, Any], baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per image the night booted: its key, package count, and the packages that moved since the baseline."""
    out = []
    for name, image in sorted((night.get("images") or {}).items()):
        before = ((baseline or {}).get("images") or {}).get(name)
        moved = changes(before["packages"], image["packages"]) if before and before["key"] != image["key"] else []
        out.append({"name": name, "key": image["key"], "count": len(image.get("packages") or {}),
                    "resolved_at": image.get("resolved_at", ""), "before": before["key"] if before else "",
                    "changed": bool(before and before["key"] != image["key"]), "moved": moved})
    return out


def write(night_dir: Path, out: Path, baseline_dir: Path | None = None, ack_file: Path | None = None) -> tuple[Path, list[str]]:
    """The report in `out`; returns its index and the cell ids that fail the night (regressions no
    acknowledgement names, and missing cells). Each regression is written back into the night with
    the night it first appeared, so it stays flagged until the cell passes again."""
    night = load_night(night_dir)
    baseline = load_night(baseline_dir) if baseline_dir else None
    acks = load_acks(ack_file)
    out.mkdir(parents=True, exist_ok=True)
    kernels = sorted({c["kernel"] for c in night["cells"].values()})
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    counts = dict.fromkeys(CLASSES, 0)
    failing: list[str] = []
    regressions: list[str] = []
    for cid, c in sorted(night["cells"].items()):
        base = (baseline or {}).get("cells", {}).get(cid)
        cls = classify(c, base)
        counts[cls] += 1
        if cls == "regression":
            c["regressed_since"] = (base or {}).get("regressed_since") or night["name"]
            regressions.append(cid)
        # The cell's last nights, oldest first (carried night to night in night.json).
        if base is not None:
            c["history"] = ([*base.get("history", []), {"night": baseline["name"] if baseline else "", "verdict": base.get("verdict")}]
                            )[-HISTORY:]
        if cls in FAILING_CLASSES and cid not in acks:
            failing.append(cid)
        row = f"{c['entry']} " + " ".join(f"{k}={v}" for k, v in sorted(c.get("params", {}).items()))
        cell_links = links(night_dir, out, c, cid) if c.get("run") else []
        rate = c.get("rate")
        notes = cell_notes(c)
        if cls == "regression":
            notes = "; ".join(filter(None, [f"since {c['regressed_since']}", f"acknowledged: {acks[cid]}" if cid in acks else "",
                                             notes]))
        rows.setdefault(row.strip(), {})[c["kernel"]] = {
            "id": cid, "cls": cls, "verdict": c["verdict"], "reason": c.get("reason", ""),
            "rate": Rate(int(rate["failed"]), int(rate["runs"])).describe() if rate else "",
            "baseline": base.get("verdict") if base and base.get("verdict") != c["verdict"] else "",
            "notes": notes, "accel": (c.get("accel") or "?").upper(),
            "history": " ".join(str(h.get("verdict")) for h in c.get("history", [])),
            "drift": drift(c, base),
            "summary": next((href for label, href in cell_links if label == "summary"), "#"), "links": cell_links,
        }
    (night_dir / "night.json").write_text(json.dumps(night, indent=2, default=str))  # regressed_since, for the next night
    plots = _plots(night, baseline, out)
    lab_versions = sorted({str((c.get("provenance", {}).get("lab") or {}).get("version")) for c in night["cells"].values()
                           if c.get("provenance")})
    text = PAGE.render(night=night, baseline=baseline, version=__version__, lab_versions=lab_versions, kernels=kernels,
                       rows=rows, counts=counts, classes=CLASSES, colours=COLOURS, regressions=regressions, failing=failing,
                       plots=plots, tables=ab_tables(night_dir, night), images=image_changes(night, baseline))
    index = out / "index.html"
    index.write_text(text)
    (out / "summary.md").write_text(summary_markdown(night, rows, failing))
    shutil.copy(night_dir / "night.json", out / "night.json")
    return index, failing


def summary_markdown(night: dict[str, Any], rows: dict[str, dict[str, dict[str, Any]]], failing: list[str]) -> str:
    """The night as a CI engine's job summary shows it: the headline, then a row per cell."""
    lines = [f"## lab night {night['name']}", "",
             f"**{len(failing)} cell(s) regressed or missing**: {', '.join(failing)}" if failing else "No regressions, no missing cells.",
             "", "| cell | kernel | verdict | class | reason |", "|---|---|---|---|---|"]
    for row, by_kernel in rows.items():
        for kernel, c in by_kernel.items():
            reason = str(c["reason"]).replace("|", "/").replace("\n", " ")[:160]
            moved = f" (moved: {c['drift']})" if c.get("drift") else ""
            lines.append(f"| {row} | {kernel} | {c['verdict']} | {c['cls']}{' (' + c['notes'] + ')' if c['notes'] else ''} | {reason}{moved} |")
    return "\n".join(lines) + "\n"
