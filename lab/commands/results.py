"""The commands around results: list, show, compare, JUnit, merge into a night, bundles and replay,
nightly matrices (plan, run, emit) and the night's report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.commands.common import whole_number

def add_commands(sub: Any) -> None:
    """results, replay, matrix and report."""
    res = sub.add_parser("results", help="runs kept in results/").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = res.add_parser("list", help="all runs with their verdicts")
    p.set_defaults(func=cmd_results_list)
    p = res.add_parser("show", help="one run's summary")
    p.add_argument("run", nargs="?", default="latest")
    p.set_defaults(func=cmd_results_show)
    p = res.add_parser("compare", help="a table of the scenario's figures per kernel across runs")
    p.add_argument("runs", nargs="+")
    p.set_defaults(func=cmd_results_compare)
    p = res.add_parser("junit", help="JUnit XML of one or more runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_results_junit)

    p = res.add_parser("merge", help="join the run directories of a matrix's cells into one night (night.json, results.json, junit.xml)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories, or directories holding them (CI artifacts)")
    p.add_argument("-o", "--output", required=True, metavar="NIGHT")
    p.add_argument("--matrix", metavar="FILE", help="the night's matrix: a cell of it with no run directory is MISSING")
    p.set_defaults(func=cmd_results_merge)

    p = res.add_parser("kcidb", help="a run or a night as KCIDB JSON (checkouts, builds, tests), for kernel CI dashboards")
    p.add_argument("run", metavar="RUN|NIGHT", help="a run directory (or id) or a night made by 'lab results merge'")
    p.add_argument("-o", "--output", metavar="FILE", help="default: standard output")
    p.set_defaults(func=cmd_results_kcidb)

    p = res.add_parser("bundle", help="one file to replay a run elsewhere (lab replay)")
    p.add_argument("run", nargs="?", default="latest")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_results_bundle)

    p = sub.add_parser("replay", help="run a bundle again and say whether the verdicts match")
    p.add_argument("bundle")
    p.add_argument("--allow-build", action="store_true",
                   help="let the bundle's kernel references build kernels from source or clone trees from URLs")
    p.add_argument("--dry-run", action="store_true", help="only show what would run")
    p.add_argument("--kernel", action="append", metavar="REF", help="run it on these kernels instead of the bundle's "
                   "(repeatable); the failure rates are printed side by side")
    p.set_defaults(func=cmd_replay)

    mat = sub.add_parser("matrix", help="nightly matrices: plan, run cells here, or emit a CI workflow that fans them out"
                         ).add_subparsers(dest="sub", required=True, metavar="SUB")
    for name, func, what in (("plan", cmd_matrix_plan, "list the cells with their expected duration; reject invalid ones"),
                             ("run", cmd_matrix_run, "run cells on this host, one at a time")):
        p = mat.add_parser(name, help=what)
        p.add_argument("file", metavar="FILE")
        p.add_argument("--cell", action="append", metavar="ID", help="only these cells (repeatable)")
        p.add_argument("--max-cells", type=whole_number, default=500, metavar="N",
                       help="refuse a matrix that expands to more cells (default: 500)")
        p.set_defaults(func=func)
    p = mat.add_parser("emit", help="a GitHub Actions workflow or a GitLab pipeline with one job per cell")
    p.add_argument("file", metavar="FILE")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--github", action="store_true")
    kind.add_argument("--gitlab", action="store_true")
    p.add_argument("--cron", default="0 2 * * *", help="GitHub schedule, five cron fields (default: 0 2 * * *)")
    p.add_argument("--max-cells", type=whole_number, default=500, metavar="N",
                   help="refuse a matrix that expands to more cells (default: 500)")
    p.add_argument("--install", default=".", metavar="SPEC",
                   help="what each job pip-installs as the lab: '.' (the checkout, default), a wheel in the repository "
                        "(dist/lab-0.1.0-py3-none-any.whl), or a requirement from the runners' index (lab==0.1.0)")
    p.set_defaults(func=cmd_matrix_emit)

    p = sub.add_parser("report", help="a static HTML report of a night, against a baseline night; exits 1 on a regression "
                                      "or a missing cell")
    p.add_argument("night", metavar="NIGHT")
    p.add_argument("--baseline", metavar="NIGHT")
    p.add_argument("--ack", metavar="FILE", help="acknowledged regressions ([[ack]] cell = \"ID\", why = \"...\"): shown, not failing")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.set_defaults(func=cmd_report)

    ci = sub.add_parser("ci", help="what a CI pipeline's jobs run: one cell, then the night (merge, report, exit status)"
                        ).add_subparsers(dest="sub", required=True, metavar="SUB")
    p = ci.add_parser("cell", help="run one cell of a matrix; its run directory goes to $LAB_RESULTS")
    p.add_argument("file", metavar="MATRIX")
    p.add_argument("cell", metavar="ID")
    p.set_defaults(func=cmd_ci_cell)
    p = ci.add_parser("night", help="merge the cells' artifacts against the matrix (missing cells included), write NIGHT/kcidb.json, and report; "
                                    "exits 1 on a regression or a missing cell")
    p.add_argument("file", metavar="MATRIX")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="where the cells' artifacts were downloaded")
    p.add_argument("-o", "--output", required=True, metavar="NIGHT")
    p.add_argument("--report", required=True, metavar="DIR")
    p.add_argument("--baseline", metavar="NIGHT", help="the last night (ignored when it does not exist yet)")
    p.add_argument("--ack", metavar="FILE")
    p.set_defaults(func=cmd_ci_night)


def cmd_results_list(args: argparse.Namespace) -> int:
    from lab.results import list_runs

    for r in list_runs():
        verdicts = " ".join(f"{k}={v}" for k, v in r["verdicts"].items())
        print(f"{r['id']:52} {r['status'] or '?':11} {verdicts}")
    return 0


def cmd_results_show(args: argparse.Namespace) -> int:
    from lab.results import find_run, manifest, status_of

    run = find_run(args.run)
    summary = run / "summary.txt"
    m = manifest(run, strict=True)
    status = status_of(m)
    if status == "abandoned":
        status = "abandoned (the lab process that ran it is gone; what it wrote is kept)"
    print(f"{run.name}: {m.get('kind')} {status} started {m.get('started')} finished {m.get('finished', '-')}")
    if summary.exists():
        print(summary.read_text(errors="replace").rstrip())
    else:
        print(json.dumps({k: m.get(k) for k in ("topology", "kernels", "boot_seconds", "accel") if k in m}, indent=2, default=str))
    return 0


def cmd_results_compare(args: argparse.Namespace) -> int:
    from lab.results import compare, find_run

    print(compare([find_run(r) for r in args.runs]))
    return 0


def cmd_results_junit(args: argparse.Namespace) -> int:
    from lab.results import find_run, junit

    text = junit([find_run(r) for r in args.runs], Path(args.output) if args.output else None)
    if not args.output:
        print(text)
    return 0


def cmd_results_kcidb(args: argparse.Namespace) -> int:
    from lab import kcidb
    from lab.results import find_run

    source = Path(args.run)
    if not (source / "night.json").is_file():
        source = find_run(args.run)
    text = json.dumps(kcidb.export(source), indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(args.output)
    else:
        print(text)
    return 0


def cmd_results_bundle(args: argparse.Namespace) -> int:
    from lab import bundle
    from lab.results import find_run

    out = bundle.create(find_run(args.run), Path(args.output) if args.output else None)
    print(out)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from lab import bundle
    from lab.host import ensure_host

    plan = bundle.plan_replay(Path(args.bundle), allow_build=args.allow_build, kernels=args.kernel)
    print(bundle.describe(plan))
    if args.dry_run:
        return 0
    ensure_host()
    matched, notes, run_dir = bundle.replay(plan)
    for note in notes:
        print(note)
    what = ("ran on other kernels" if plan.replaced_kernels else
            "verdicts match the bundle" if matched else "verdicts DIFFER from the bundle")
    print(f"{what}; results: {run_dir}")
    return 0 if matched else 1


def _matrix(args: argparse.Namespace):
    from lab import matrix

    m = matrix.load(Path(args.file), max_cells=args.max_cells)
    return m, matrix.select(m, args.cell)


def _refuse_invalid(cells: list[Any], consequence: str) -> None:
    """Every cell checked before anything runs: the invalid ones listed, one line each, then one error."""
    from lab import matrix

    problems = matrix.validate(cells)
    for line in problems:
        print(f"lab: invalid cell {line}", file=sys.stderr)
    if problems:
        raise UsageError(f"{len(problems)} of {len(cells)} cell(s) are invalid (listed above); {consequence}")


def cmd_matrix_plan(args: argparse.Namespace) -> int:
    from lab import matrix
    from lab.paths import results_dir

    m, cells = _matrix(args)
    _refuse_invalid(cells, f"fix {args.file}")
    print(matrix.plan_text(m, cells, matrix.known_durations(results_dir())))
    return 0


def cmd_matrix_run(args: argparse.Namespace) -> int:
    from lab import matrix
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes

    m, cells = _matrix(args)
    _refuse_invalid(cells, "nothing was run")
    ensure_host()
    reap_stale_runtimes()
    outcomes = matrix.run_cells(cells)
    for cell, outcome in outcomes:
        verdicts = ", ".join(s["verdict"] for s in outcome.results["subruns"].values())
        print(f"{cell.id:70} {verdicts:6} {outcome.run_dir.path}")
    return 0 if all(o.ok for _, o in outcomes) else 1


def cmd_matrix_emit(args: argparse.Namespace) -> int:
    from lab import ciemit, matrix

    ciemit.check_cron(args.cron)
    m = matrix.load(Path(args.file), max_cells=args.max_cells)
    ciemit.check_path(m)
    ciemit.check_install(args.install)
    _refuse_invalid(m.cells, "fix the matrix before emitting it")
    sys.stdout.write(ciemit.github(m, cron=args.cron, install=args.install) if args.github else ciemit.gitlab(m, install=args.install))
    return 0


def cmd_results_merge(args: argparse.Namespace) -> int:
    from lab import matrix, night

    started = time.monotonic()
    m = matrix.load(Path(args.matrix)) if args.matrix else None
    merged = night.merge([Path(d) for d in args.dirs], Path(args.output), m)
    missing = sum(1 for c in merged["cells"].values() if c["verdict"] == "MISSING")
    print(f"{args.output}: {len(merged['cells'])} cell(s), {len(merged['superseded'])} superseded"
          + (f", {missing} MISSING" if missing else "") + f", in {time.monotonic() - started:.1f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lab import report

    started = time.monotonic()
    index, failing = report.write(Path(args.night), Path(args.output), Path(args.baseline) if args.baseline else None,
                                  Path(args.ack) if args.ack else None)
    print(f"{index} ({time.monotonic() - started:.1f} s)")
    if failing:
        print(f"lab: {len(failing)} cell(s) regressed or missing: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


def cmd_ci_cell(args: argparse.Namespace) -> int:
    """One CI job: one cell, checked like every cell before anything boots."""
    from lab import matrix
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes

    m = matrix.load(Path(args.file))
    cells = matrix.select(m, [args.cell])
    _refuse_invalid(cells, "nothing was run")
    ensure_host()
    reap_stale_runtimes()
    (cell, outcome), = matrix.run_cells(cells)
    verdicts = ", ".join(s["verdict"] for s in outcome.results["subruns"].values())
    print(f"{cell.id} {verdicts} {outcome.run_dir.path}")
    return 0 if outcome.ok else 1


def cmd_ci_night(args: argparse.Namespace) -> int:
    """The last CI job: merge what came back against the matrix, export it for KCIDB, report against
    the last night."""
    from lab import kcidb, matrix, night

    m = matrix.load(Path(args.file))
    merged = night.merge([Path(d) for d in args.dirs], Path(args.output), m)
    baseline = Path(args.baseline) if args.baseline and (Path(args.baseline) / "night.json").is_file() else None
    missing = [cid for cid, c in merged["cells"].items() if c["verdict"] == "MISSING"]
    print(f"{args.output}: {len(merged['cells'])} cell(s) of {m.name}, {len(missing)} missing; baseline: {baseline or 'none yet'}")
    # The night for kernel CI dashboards, published beside the report (missing cells as MISS).
    (Path(args.output) / "kcidb.json").write_text(json.dumps(kcidb.export(Path(args.output)), indent=1) + "\n")
    return cmd_report(argparse.Namespace(night=args.output, output=args.report, baseline=baseline, ack=args.ack))
