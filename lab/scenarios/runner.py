"""The loop every scenario shares: one sub-run per kernel (or kernel and placement), outputs
rewritten after each so an interrupted run keeps what it gathered, status set however it ends."""

from __future__ import annotations

from typing import Callable

from lab.rundir import RunDir

Job = tuple[str, str, Callable[[RunDir], dict]]  # (sub-run label, kernel ref, run one sub-run)


def run_jobs(kind: str, topology: str, options: dict, jobs: list[Job], write: Callable[[RunDir, dict], None],
             key: str = "kernels") -> tuple[RunDir, dict]:
    run_dir = RunDir.create(kind, topology)
    run_dir.update(scenario=kind, options=options)
    results: dict = {"scenario": kind, "options": options, key: {}}
    status = "interrupted"
    try:
        for label, ref, job in jobs:
            results[key][label] = job(run_dir.child(f"kernels/{label}", kernel_ref=ref))
            write(run_dir, results)
        status = "done"
    finally:
        write(run_dir, results)
        run_dir.finish(status, verdicts={k: v["verdict"] for k, v in results[key].items()})
    return run_dir, results
