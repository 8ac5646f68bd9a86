"""One framework for scenarios. A scenario declares its options, its topology, what runs in the
booted guests and how its table prints; the framework owns everything else, once:

    validate options -> render and check every sub-run's topology against this QEMU -> resolve
    every kernel -> (run directory from here on) -> per sub-run: boot, exercise, judge, finish ->
    aggregate, expectations, results.json, summary.txt, junit.xml

A sub-run (one kernel, or one kernel and variant such as a PCIe placement) always ends with a
status (done, error, interrupted) and a verdict:

    PASS    every assertion held
    FAIL    an assertion did not hold (data differed, an unexpected errno, integrity errors)
    ERROR   the thing under test did not happen (no boot, no I/O, no mutation, nothing ran)
    N/A     the kernel or topology lacks what the scenario tests (no PCI_P2PDMA, no PI)

Scenarios register with @register, or from other packages through the `lab.scenarios` entry-point
group (a Scenario subclass, or a module that registers one)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from lab import kernel_log
from lab.errors import BootError, LabError
from lab.kernels.kernel import Kernel
from lab.lab import Lab
from lab.machine import emulator_fault_after_ready, read_text
from lab.preflight import check_against_qemu, resolve_kernels
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios.base import (ENTRY_POINT_GROUP, NotApplicable, Scenario, ScenarioError, Variant, get, load_file,
                                matrix_label, param_matrix, register, safe_label, scenarios)
from lab.scenarios.context import GUEST_DIR, Context, merge_repetition
from lab.scenarios.expect import ERROR, NOT_APPLICABLE, PASS, outcome_ok
from lab.scenarios.options import ScenarioOptions
from lab.scenarios.outputs import (Outcome, junit_cases, run_ok, section_outcome, summary, verdict_line,
                                   write_outputs)
from lab.scenarios.verdict import FAIL, aggregate
from lab.stats import Rate
from lab.topology.kernel_needs import check_kernel_fits

# The framework's public names, wherever they live: scenario files import them from here.
__all__ = ["ENTRY_POINT_GROUP", "GUEST_DIR", "Context", "NotApplicable", "Outcome", "Scenario", "ScenarioError", "Variant",
           "check_against_qemu", "get", "junit_cases", "load_file", "matrix_label", "merge_repetition", "param_matrix",
           "register", "resolve_kernels", "run", "run_ok", "run_variant", "safe_label", "scenarios", "section_outcome",
           "summary", "verdict_line", "write_outputs"]

LOG = logging.getLogger(__name__)
# A sub-run whose guest met the emulator's fault after it booted runs again (a fresh boot), at most
# this many times in all; a fault of the kernel under test is never retried.
SUBRUN_ATTEMPTS = 3


def run(name: str | type[Scenario], options: ScenarioOptions, tags: dict[str, Any] | None = None) -> Outcome:
    """Validate everything, then run every sub-run and write the results as the run goes. `tags`
    (a matrix cell's identity) go into the manifest and results.json."""
    from lab.log import to_file

    cls = get(name) if isinstance(name, str) else name
    scenario = cls(options)
    variants = scenario.plan()
    check_against_qemu([v.rendered.topology for v in variants if v.rendered is not None])
    images = [m.image for v in variants if v.rendered for m in v.rendered.topology.machines.values()]
    resolved = resolve_kernels([v.kernel for v in variants], images)
    for v in variants:  # a topology the kernel cannot drive is bad input, before the first boot
        assert v.rendered is not None
        check_kernel_fits(v.rendered.topology, dict.fromkeys(v.rendered.topology.machines, resolved[v.kernel]), v.topology)
    scenario.guest_images = tuple(dict.fromkeys(images))
    scenario.prepare()
    run_dir = RunDir.create(cls.name, variants[0].topology)
    run_dir.update(scenario=cls.name, options=options.to_dict(), **(tags or {}))
    results: dict[str, Any] = {"scenario": cls.name, "options": options.to_dict(), "subruns": {}, **(tags or {})}
    if cls.source_file is not None:
        results["scenario_file"] = str(cls.source_file)
    status = "interrupted"
    with to_file(run_dir.path / "lab.log"):
        try:
            for v in variants:
                results["subruns"][v.label] = run_variant(scenario, v, run_dir, resolved, into=results["subruns"])
                write_outputs(scenario, run_dir, results)
            status = "error" if any(s["verdict"] == ERROR for s in results["subruns"].values()) else "done"
        finally:
            write_outputs(scenario, run_dir, results)
            run_dir.finish(status, verdicts={k: s["verdict"] for k, s in results["subruns"].items()}, all_as_expected=run_ok(results))
    return Outcome(run_dir, results, run_ok(results), summary(scenario, results))


def run_variant(scenario: Scenario, v: Variant, run_dir: RunDir, resolved: dict[str, Kernel],
                into: dict[str, Any] | None = None) -> dict[str, Any]:
    """One sub-run. Its section is placed in `into` from the start, so a run interrupted in the middle
    of it still writes what it had (a suite's finished tests) to results.json.

    An attempt whose guest met the emulator's fault (TCG only, with nothing wrong in that boot
    before it) is run again from a fresh boot, at most SUBRUN_ATTEMPTS in all. A discarded attempt
    is kept whole under attempt-N/ and listed in the section; one that failed a case or logged a
    kernel problem keeps the sub-run from ending PASS."""
    sub = run_dir.child(f"subruns/{v.label}", kernel_ref=v.kernel, facets=v.facets)
    sub.update(scenario=scenario.name, options=scenario.options.to_dict())
    section: dict[str, Any] = {"label": v.label, "kernel": v.kernel, "facets": v.facets, "verdict": ERROR, "reason": "",
                               "outcome": "error", "cases": {}, "run_dir": str(sub.path), "boot": {}}
    if into is not None:
        into[v.label] = section
    started = time.monotonic()
    status = "interrupted"
    assert v.rendered is not None
    ctx: Context | None = None
    fresh = dict(section)  # what a sub-run run again after an emulator fault starts from
    discarded: list[dict[str, Any]] = []
    try:
        for attempt in range(1, SUBRUN_ATTEMPTS + 1):
            lab = Lab(v.rendered, kernel_ref=v.kernel, accel=scenario.options.accel, run=sub, resolved=resolved)
            ctx = Context(scenario, v, lab, sub, section, resolved=resolved)
            fault = run_attempt(scenario, ctx)
            if fault is None:
                break
            if attempt == SUBRUN_ATTEMPTS:
                raise ScenarioError(f"{fault}, in each of {attempt} attempts")
            discarded.append(discard_attempt(attempt, fault, ctx))
            info(f"{v.label}: {fault}; running the sub-run again from a fresh boot (attempt {attempt} kept in "
                 f"{sub.path / discarded[-1]['dir']})")
            section.clear()
            section.update(fresh, cases={}, boot={}, attempts=list(discarded))
        assert ctx is not None
        verdict, reason = aggregate(section["cases"])
        held = held_against(discarded)
        if held and verdict == PASS:
            verdict, reason = FAIL, f"{held}; the attempt after it passed ({reason})"
            section["attempt_failed"] = held
        section.update(verdict=verdict, reason=reason)
        if scenario.options.repeat > 1 or ctx.repetition > 1:
            rate = Rate(len(ctx.failed_repetitions), len(ctx.counted_repetitions))
            section["rate"] = rate.to_dict() | {"repetitions": ctx.repetition}
        status = "done"
    except NotApplicable as exc:
        section.update(verdict=NOT_APPLICABLE, reason=str(exc))
        status = "done"
    except BootError as exc:
        section.update(verdict=ERROR, reason=f"boot failed: {str(exc).splitlines()[0]}")
        sub.write("error.txt", str(exc))
        status = "error"
    except LabError as exc:
        section.update(verdict=ERROR, reason=str(exc).splitlines()[0])
        sub.write("error.txt", str(exc))
        status = "error"
    except Exception as exc:  # a bug in a scenario (maybe a plugin's) is this sub-run's ERROR, not the run's end
        LOG.exception("scenario %s raised", scenario.name)
        section.update(verdict=ERROR, reason=f"the scenario raised {exc.__class__.__name__}: {str(exc)[:160]} (see lab.log)")
        status = "error"
    finally:
        if status == "interrupted":
            section.update(verdict=ERROR, reason="interrupted")
        elif section["verdict"] == ERROR:
            status = "error"
        if discarded:
            section["attempts"] = discarded
        if ctx is not None:
            section["boot"]["retries"] = list(ctx.lab.boot_retries)
            if ctx.lab.kernels and "release" not in section:
                section["release"] = next(iter(ctx.lab.kernels.values())).release
            section["boot"]["boots"] = ctx.boots
        section["seconds"] = round(time.monotonic() - started, 1)
        section["outcome"] = section_outcome(section)
        sub.write("verdict.json", json.dumps(section, indent=2, default=str))
        sub.finish(status, verdict=section["verdict"])
    info(verdict_line(v.label, section))
    return section


def run_attempt(scenario: Scenario, ctx: Context) -> str | None:
    """Boot, set up and run every repetition; the machines are stopped whatever happens. Returns
    the emulator's fault when the attempt met it (the caller runs it again), else None; a failure
    of the kernel or the scenario is raised."""
    section = ctx.section
    try:
        ctx.lab.start()
        first = next(iter(ctx.lab.machines))
        section["release"] = ctx.lab.kernels[first].release
        section["boot"] = {"seconds": dict(ctx.lab.boot_seconds), "retries": list(ctx.lab.boot_retries)}
        scenario.setup(ctx)
        started_at = time.monotonic()
        while True:
            scenario.exercise(ctx)
            if not scenario.more(ctx, started_at):
                break
            ctx.repetition += 1
        judge_rest_of_log(ctx)
    except BootError:
        raise
    except LabError as exc:
        # A command that failed because its machine stopped answering: say that, with evidence.
        fault = emulator_fault(ctx.lab)
        if fault is not None:
            return fault
        stalled = diagnose(ctx.lab, ctx.sub)
        if stalled:
            raise ScenarioError(stalled) from exc
        raise
    finally:
        ctx.lab.stop()
    return emulator_fault(ctx.lab)


def judge_rest_of_log(ctx: Context) -> None:
    """What the kernels logged after the last case (tear-down, late messages): a problem no rule
    explains is a case of its own."""
    if not ctx.section["cases"]:
        return
    judged = ctx.judge_kernel_log("kernel log", dict(ctx.variant.facets))
    if judged.unexpected:
        ctx.case("kernel log", FAIL, judged.headline(), kernel_window={},
                 kernel_log_problems=judged.to_dict())


def discard_attempt(attempt: int, fault: str, ctx: Context) -> dict[str, Any]:
    """Move what the attempt left in the sub-run directory (consoles, program output, cases) to
    attempt-N/ and say what it had: its cases, failures and kernel problems before the fault."""
    sub = ctx.sub
    keep = sub.path / f"attempt-{attempt}"
    keep.mkdir()
    for entry in list(sub.path.iterdir()):
        if entry.name == sub.manifest_path.name or entry.name.startswith("attempt-"):
            continue
        entry.rename(keep / entry.name)
    cases = ctx.section.get("cases", {})
    (keep / "verdict.json").write_text(json.dumps({**ctx.section, "discarded": fault}, indent=2, default=str))
    problems: list[dict[str, Any]] = []
    rules = ctx.scenario.kernel_log_rules(ctx, "kernel log", dict(ctx.variant.facets))
    for name, machine in ctx.lab.machines.items():
        console = keep / machine.console_log.relative_to(sub.path) if machine.console_log.is_relative_to(sub.path) else machine.console_log
        text = read_text(console).split("Oops: int3", 1)[0]
        for p in kernel_log.judge(kernel_log.detect(text), rules).unexpected:
            problems.append({"machine": name, **p.to_dict()})
    return {"attempt": attempt, "fault": fault, "dir": keep.name,
            "cases": {name: c.get("verdict") for name, c in cases.items()},
            "failed": [name for name, c in cases.items() if c.get("verdict") == FAIL and not outcome_ok(c.get("outcome", "error"))],
            "kernel_problems": problems[:8]}


def held_against(discarded: list[dict[str, Any]]) -> str | None:
    """Why a sub-run may not end PASS after its discarded attempts: one failed a case, or its kernel
    logged a problem before the emulator's fault."""
    for a in discarded:
        if a["failed"]:
            return f"attempt {a['attempt']} (run again after an emulator fault) failed {', '.join(a['failed'][:3])}"
        if a["kernel_problems"]:
            p = a["kernel_problems"][0]
            return (f"attempt {a['attempt']} (run again after an emulator fault) logged {p['kind']} on {p['machine']}: "
                    f"{p['line'][:100]}")
    return None


def emulator_fault(lab: Lab | None) -> str | None:
    """A guest that died of the known multi-threaded TCG fault after it was ready (its console
    says so, with nothing wrong before it in that boot), or, under KVM, a guest QEMU stopped with
    "KVM internal error" (the hypervisor could not handle an exit: seen with KVM nested in a TCG
    guest); else None."""
    if lab is None or lab.chosen_accel is None:
        return None
    if lab.chosen_accel.name == "kvm":
        for name, machine in lab.machines.items():
            error = machine.kvm_internal_error()
            if error:
                return f"{name}: {error} (QEMU paused the guest; the hypervisor's failure, not the kernel's)"
        return None
    if lab.chosen_accel.name != "tcg":
        return None
    for name, machine in lab.machines.items():
        detail = emulator_fault_after_ready(read_text(machine.console_log))
        if detail:
            return f"{name}: {detail}"
    return None


def diagnose(lab: Lab | None, sub: RunDir) -> str | None:
    """After a guest command failed: a machine that stopped running (paused, crashed, gone) is the
    reason, with its QMP status and console kept in the sub-run directory."""
    if lab is None:
        return None
    for name, machine in lab.machines.items():
        if not machine.alive():
            return f"{name}: QEMU is gone (exit {machine.proc.returncode if machine.proc else '?'}); console kept"
        try:
            status = machine.qmp_cmd("query-status")
        except LabError:
            LOG.debug("%s: query-status failed while diagnosing", name, exc_info=True)
            continue
        sub.write(f"machines/{name}/query-status.json", json.dumps(status, indent=2))
        if not status.get("running", True):
            return f"{name} stopped answering: QMP says it is {status.get('status')!r} (console and query-status kept)"
    return None
