"""The commands that run scenarios: run (one per registered scenario), repro, bisect, and the
benchmarks."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.commands.common import accel, boot_parent, topology_parent, whole_number
from lab.commands.machines import cmd_bench_boot
from lab.settings import ACCELS, settings

def add_commands(sub: Any) -> None:
    """run, repro, bisect and bench."""
    from lab.scenarios import framework
    from lab.scenarios.options import add_arguments

    boot = boot_parent()
    runp = sub.add_parser("run", help="run a scenario").add_subparsers(dest="sub", required=True, metavar="SCENARIO")
    for name, cls in sorted(framework.scenarios().items()):
        # A scenario file may have neither a docstring nor a summary: its name describes it then.
        described = (cls.__doc__ or cls.summary or f"the {name} scenario").strip().splitlines() or [name]
        p = runp.add_parser(name, help=cls.summary, description=described[0])
        add_arguments(p, cls.Options)
        p.set_defaults(func=cmd_run, scenario=name)
        if name == "stable-pages":
            stable_pages_parser = p
        if name == "dio-bench":
            dio_bench_parser = p

    from lab.scenarios.repro import ReproOptions

    p = sub.add_parser("repro", help="run any reproducer (a command or a fio job) on a topology per kernel, repeated; "
                                     "failure rates side by side",
                       description="lab repro [--topology T -p K=V] --kernel K [--kernel K2] [--put FILE] [--fio JOB] "
                                   "[--repeat N | --until-fail [--max-time T]] [--reboot-each] [--expect-fail] -- COMMAND")
    add_arguments(p, ReproOptions)
    p.add_argument("--expect-fail", dest="expect", action="store_const", const="fail",
                   help="the reproducer should fail on these kernels (same as --expect fail)")
    p.add_argument("--expect-pass", dest="expect", action="store_const", const="pass", help="same as --expect pass")
    p.add_argument("reproducer", nargs=argparse.REMAINDER, help="-- COMMAND: run in the guest with bash, in /root/repro")
    p.set_defaults(func=cmd_repro, scenario="repro")

    p = sub.add_parser("bisect", help="the first patch of a series (or commit between two refs) where a scenario's verdict changes",
                       description="Builds the base and base + each prefix of the series (incrementally, cached) and runs the "
                                   "scenario on each, binary search. Scenario options go after --, e.g. "
                                   "lab bisect --base linux-source-7.3 --series fix.mbox --scenario stable-pages -- --direction write. "
                                   "With the scenario's --repeat N, steps are compared by failure rate (95 %% intervals). "
                                   "Exit status: 0 the first changed step was found, 1 nothing changed, 3 inconclusive "
                                   "(a step that errored twice, or the base already fails).")
    p.add_argument("--base", required=True, metavar="SOURCE", help="linux-source-X.Y, a tarball, a tree, or a git tree (with --good/--bad)")
    p.add_argument("--series", metavar="FILE|DIR|MSGID")
    p.add_argument("--good", metavar="REF", help="with a git --base: a commit where the verdict is the old one")
    p.add_argument("--bad", metavar="REF", help="with a git --base: a later commit where it changed")
    p.add_argument("--config", action="append", metavar="FRAGMENT", help="extra config fragment, repeatable")
    p.add_argument("--scenario", required=True, choices=sorted(framework.scenarios()))
    p.add_argument("--max-batches", type=whole_number, default=4,
                   help="with the scenario's --repeat N: run a step at most this many times N when its failure rate "
                        "cannot be told from either end's (default: 4)")
    p.add_argument("--case", metavar="NAME", help="follow this case of the scenario only (its verdict, or its failure rate "
                                                  "with --repeat); other cases' expected failures then do not decide")
    p.add_argument("scenario_args", nargs=argparse.REMAINDER, help="options of 'lab run SCENARIO' (after --)")
    p.set_defaults(func=cmd_bisect)

    p = sub.add_parser("review", help="review a posted series: the checks its files call for, on the base and the series, "
                                      "bisected where worse, and a reply",
                       description="Picks the checks from the files the series touches (scenarios/review.toml, or --map), "
                                   "prints the plan, builds the base and base + series, runs each check on both, bisects "
                                   "every case that got worse to its first patch, and writes reply.txt (plain text under 80 "
                                   "columns) and results.json. Exit status: 0 nothing got worse, 1 a regression, 2 bad input, "
                                   "3 inconclusive (a check that errored).")
    p.add_argument("series", metavar="SERIES", help="an mbox, a directory of format-patch files, or a message-id (through b4)")
    p.add_argument("--base", metavar="SOURCE",
                   help="what the series applies to: linux-source-X.Y, a tarball or a tree (default: review.base of the config file, "
                        "or linux-source-7.3)")
    p.add_argument("--repeat", type=whole_number, default=1, metavar="N",
                   help="run each check's cases N times per kernel and compare failure rates (default: 1)")
    p.add_argument("--debug", action="store_true",
                   help="build both kernels with the debug fragment (KASAN, KFENCE, lockdep, DMA API and list debugging)")
    p.add_argument("--config", action="append", metavar="FRAGMENT", help="extra config fragment, repeatable")
    p.add_argument("--map", metavar="FILE", help="the review map (default: the lab's scenarios/review.toml)")
    p.add_argument("--plan", action="store_true", help="print the plan and stop (nothing is built)")
    p.add_argument("-o", "--output", metavar="DIR", help="also copy reply.txt, results.json and the bundles here")
    p.set_defaults(func=cmd_review)

    bench = sub.add_parser("bench", help="benchmarks (figures, not pass/fail)").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = bench.add_parser("boot", parents=[topology_parent(), boot], help="time to the first guest command, and the lab's overhead over bare QEMU")
    p.add_argument("--runs", type=whole_number, default=3)
    p.add_argument("--kvm", action="store_true",
                   help="measure under KVM (same as --accel kvm): fails with the probe's reason where KVM cannot run guests")
    p.set_defaults(func=cmd_bench_boot)
    p = bench.add_parser("nfs", help="NFS pair: time to the RDMA mount, and O_DIRECT MiB/s per transport")
    p.add_argument("--kernel", metavar="REF", help="default: debian:7.3")
    p.add_argument("--nfs-version", default="4.2", choices=("3", "4.1", "4.2"))
    p.add_argument("--accel", choices=ACCELS)
    p.set_defaults(func=cmd_bench_nfs)
    p = bench.add_parser("stable-pages", parents=[stable_pages_parser], add_help=False,
                         help="time the default A/B stable-pages run from the command to the table")
    p.set_defaults(func=cmd_bench_stable_pages)
    p = bench.add_parser("dio", parents=[dio_bench_parser], add_help=False,
                         help="seed 003's table: io_uring QD16 reads and writes, zero copy vs bounce on XFS, as ratios")
    p.set_defaults(func=cmd_run, scenario="dio-bench")


def scenario_parser(name: str) -> argparse.ArgumentParser:
    """The options of `lab run NAME` alone (what bisect passes after --)."""
    from lab.scenarios import framework
    from lab.scenarios.options import add_arguments

    parser = argparse.ArgumentParser(prog=f"lab run {name}")
    add_arguments(parser, framework.get(name).Options)
    return parser


def scenario_options(name: str, args: argparse.Namespace):
    from lab.scenarios import framework
    from lab.scenarios.options import from_args

    cls = framework.get(name)
    return from_args(cls.Options, args, defaults={"accel": accel(None)})


def cmd_run(args: argparse.Namespace) -> int:
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes
    from lab.scenarios import framework

    options = scenario_options(args.scenario, args)
    cls = framework.get(args.scenario)
    cls(options).plan()  # every topology renders and every option fits before the host is touched
    ensure_host()
    reap_stale_runtimes()
    outcome = framework.run(cls, options)
    print(outcome.table)
    print(f"results: {outcome.run_dir.path}")
    return 0 if outcome.ok else 1


def cmd_repro(args: argparse.Namespace) -> int:
    words = [w for w in args.reproducer if w != "--"] if args.reproducer else []
    if words:
        if args.command:
            raise UsageError("give the command either after -- or with --command, not both")
        args.command = " ".join(words)
    return cmd_run(args)


def cmd_bisect(args: argparse.Namespace) -> int:
    from lab.bisect import commit_candidates, exit_status, report, run_bisect, series_candidates
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes

    if not 1 <= args.max_batches <= 100:
        raise UsageError("--max-batches must be between 1 and 100")
    if bool(args.series) == bool(args.good or args.bad):
        raise UsageError("bisect needs either --series S (patch by patch) or --good REF --bad REF (commits of a git --base)")
    if not args.series and not (args.good and args.bad):
        raise UsageError("--good and --bad go together")
    extra = list(args.scenario_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if any(a == "--kernel" or a.startswith("--kernel=") for a in extra):
        raise UsageError("bisect chooses the kernels itself; drop --kernel from the scenario options")
    run_args = scenario_parser(args.scenario).parse_args(extra)
    options = scenario_options(args.scenario, run_args)
    configs = tuple(args.config or ())
    if args.series:
        requests, labels = series_candidates(args.base, args.series, configs)
        describe = {"base": args.base, "series": args.series, "config": list(configs)}
    else:
        requests, labels = commit_candidates(args.base, args.good, args.bad, configs)
        describe = {"tree": args.base, "good": args.good, "bad": args.bad, "config": list(configs)}
    from lab.scenarios import framework

    framework.get(args.scenario)(options.model_copy(update={"kernels": ["debian:7.3"]})).plan()
    ensure_host()
    reap_stale_runtimes()
    run_dir, summary = run_bisect(args.scenario, options, requests, labels, describe, max_batches=args.max_batches,
                                  case=args.case)
    print(report(summary))
    print(f"results: {run_dir.path}")
    return exit_status(summary["result"])


def cmd_review(args: argparse.Namespace) -> int:
    from lab import review
    from lab.host import ensure_host
    from lab.kernels.series import load_series
    from lab.lab import reap_stale_runtimes
    from lab.rundir import RunDir

    map_path = Path(args.map) if args.map else review.DEFAULT_MAP
    if args.plan:
        print(review.plan(load_series(args.series), review.load_map(map_path)).text())
        return 0
    out_copy = Path(args.output) if args.output else None
    if out_copy is not None and out_copy.exists() and not out_copy.is_dir():
        raise UsageError(f"-o {out_copy}: exists and is not a directory")
    configs = tuple(args.config or ()) + (("debug",) if args.debug else ())
    rev = review.Review(args.series, args.base or settings().review_base, repeat=args.repeat, configs=configs, map_path=map_path)
    review.load_map(map_path)  # bad input before any host package or build
    ensure_host(build=True)
    reap_stale_runtimes()
    run_dir = RunDir.create("review", "series")
    the_plan, status = rev.run(run_dir)
    text = review.reply(rev, the_plan, status)
    run_dir.write("reply.txt", text)
    run_dir.write("results.json", json.dumps(review.results(rev, the_plan, status), indent=2, default=str))
    run_dir.finish("done", exit_status=status)
    if out_copy is not None:
        out_copy.mkdir(parents=True, exist_ok=True)
        for path in [run_dir.path / "reply.txt", run_dir.path / "results.json", *sorted(run_dir.path.glob("*.bundle.tar.gz"))]:
            (out_copy / path.name).write_bytes(path.read_bytes())
    print(text)
    print(f"results: {run_dir.path}")
    return status


def cmd_bench_stable_pages(args: argparse.Namespace) -> int:
    """The A/B demo timed from the command to the table (target: under 3 minutes here)."""
    started = time.monotonic()
    rc = cmd_run(args)
    print(f"A/B run: {time.monotonic() - started:.1f} s from the command to the table")
    return rc


def cmd_bench_nfs(args: argparse.Namespace) -> int:
    """Set-up time of the NFS pair (command to an RDMA mount on the client) and MiB/s of the
    O_DIRECT matrix per transport. RDMA is mounted first so its time is the ready time."""
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes
    from lab.scenarios import framework
    from lab.scenarios.options import validate

    started = time.monotonic()
    cls = framework.get("nfs-dio")
    options = validate(cls.Options, {"kernels": [args.kernel or "debian:7.3"], "transports": ["rdma", "tcp"],
                                     "nfs_version": args.nfs_version, "accel": accel(args.accel)})
    ensure_host()
    reap_stale_runtimes()
    outcome = framework.run(cls, options)
    section = next(iter(outcome.results["subruns"].values()))
    mounted = section.get("mounted_seconds", {})
    print(f"kernel {section['kernel']} ({section.get('release', '?')}), NFS {args.nfs_version}: {section['verdict']}")
    print(f"  boot + server set-up: {section.get('setup_seconds', '?')} s after the guests started booting")
    if "rdma" in mounted:
        print(f"  ready with the RDMA mount: {mounted['rdma']} s after the guests started booting")
    for t, v in section["cases"].items():
        print(f"  {t:5} O_DIRECT matrix: {v.get('mib_per_s', '?')} MiB/s ({v.get('cases', '?')} cases, {v.get('seconds', '?')} s)")
    print(f"  whole command: {time.monotonic() - started:.1f} s")
    return 0 if section["verdict"] == "PASS" else 1
