"""The scenarios `lab run` and `lab bisect` know: options from parsed arguments, one entry point to
run them, and what their outcome means (overall ok, and a per-kernel verdict bisect can compare)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from lab.rundir import RunDir

NAMES = ("stable-pages", "p2p-block", "nfs-dio", "nfs-p2p", "nfs-fstests")


@dataclass
class Outcome:
    run_dir: RunDir
    results: dict
    ok: bool  # every verdict as expected (the exit status of `lab run`)
    table: str

    def signature(self) -> str:
        """The verdicts of the run's sub-runs without their kernel labels: what bisect compares."""
        sections = self.results.get("kernels") or self.results.get("runs") or {}
        if not sections:
            return "ERROR"
        parts = []
        for label, section in sections.items():
            what = label.split("-")[-1] if "runs" in self.results else ""
            parts.append(f"{what}={section['verdict']}" if what else section["verdict"])
        return ", ".join(parts)


def options_from_args(name: str, args: Any, params: dict) -> Any:
    if name == "stable-pages":
        from lab.scenarios import stable_pages as sp

        directions = ["write", "read"] if args.direction == "both" else [args.direction]
        return sp.Options(
            kernels=args.kernel or list(sp.DEFAULT_KERNELS), topology=args.topology, params=params,
            targets=args.target or ["xfs"], directions=directions,
            block_sizes=[sp.parse_block_size(b) for b in (args.bs or ["64K"])],
            duration=args.duration, control_duration=args.control_duration, control=not args.no_control,
            size=args.size << 20, accel=args.accel,
        )
    if name == "p2p-block":
        from lab.scenarios import p2p

        return p2p.Options(kernels=args.kernel or ["debian:7.3"], placements=args.placement or ["switch", "root-port"],
                           cpu=args.cpu, size=args.size << 10, use_cmb_sqes=args.use_cmb_sqes, accel=args.accel)
    if name in ("nfs-dio", "nfs-p2p"):
        from lab.scenarios import nfs

        return nfs.Options(kernels=args.kernel or ["debian:7.3"], transports=args.transport or ["tcp", "rdma"],
                           version=args.nfs_version, inject_corruption=getattr(args, "inject_corruption", False),
                           only=getattr(args, "only", None), accel=args.accel, params=params)
    if name == "nfs-fstests":
        from lab.scenarios import fstests

        return fstests.Options(fstests=args.fstests, tests=fstests.resolve_tests(args.test, args.preset),
                               kernels=args.kernel or ["debian:7.3"], transports=args.transport or ["tcp", "rdma"],
                               version=args.nfs_version, timeout=args.timeout, accel=args.accel)
    raise KeyError(name)


def with_kernels(options: Any, kernels: list[str]) -> Any:
    return dataclasses.replace(options, kernels=list(kernels))


def run(name: str, options: Any) -> Outcome:
    runner: Callable
    if name == "stable-pages":
        from lab.scenarios import stable_pages as sp

        run_dir, results = sp.run(options)
        return Outcome(run_dir, results, sp.all_ok(results), sp.table(results))
    if name == "p2p-block":
        from lab.scenarios import p2p

        run_dir, results = p2p.run(options)
        return Outcome(run_dir, results, p2p.all_ok(results), p2p.table(results))
    if name in ("nfs-dio", "nfs-p2p"):
        from lab.scenarios import nfs

        runner = nfs.run_p2p if name == "nfs-p2p" else nfs.run
        run_dir, results = runner(options)
        ok = bool(results["kernels"]) and all(k["verdict"] in ("PASS", "N/A") for k in results["kernels"].values())
        return Outcome(run_dir, results, ok, nfs.table(results))
    if name == "nfs-fstests":
        from lab.scenarios import fstests

        run_dir, results = fstests.run(options)
        ok = bool(results["kernels"]) and all(k["verdict"] == "PASS" for k in results["kernels"].values())
        return Outcome(run_dir, results, ok, fstests.table(results))
    raise KeyError(name)
