"""repro: any reproducer on any topology, repeated until it fails. A reviewer's path from "fio verify
fails with PI type 3 and 512-byte sectors after patch 5" to seeing it happen: boot the reporter's
topology with each kernel, copy the reporter's files in, run their command (or fio job) again and
again, and judge every run from its exit status and from what the guest kernel logged. The result
is failures / runs with a 95 % interval per kernel, side by side, with the first failing run's
output and kernel log kept."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import model_validator

from lab import kernel_log
from lab.errors import LabError, UsageError
from lab.progress import info, warn
from lab.safepaths import links_out_of
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.options import ScenarioOptions, Seconds, opt
from lab.scenarios.verdict import ERROR, FAIL, PASS
from lab.guest import GuestCommandError
from lab.stats import Rate
from lab.transfer import download, upload

NAME = "repro"
GUEST_DIR = "/root/repro"
UNTIL_FAIL_CAP = 10000


class ReproOptions(ScenarioOptions):
    command: str | None = opt(None, "shell command run in the guest, in /root/repro (lab repro takes it after --); "
                                    "exit 0 passes, 125 means it could not test (ERROR, as git bisect run's skip), "
                                    "any other status fails",
                              max_length=8192)
    put: list[str] = opt([], "file or directory copied to /root/repro in the guest before the runs, repeatable", metavar="PATH")
    get: list[str] = opt([], "guest path kept in the run directory after the first failing run and the last one, "
                         "repeatable", metavar="PATH")
    fio: str | None = opt(None, "a fio job file, run with --output-format=json; a job error (a verify failure) fails "
                          "the run", metavar="JOB")
    expect: Literal["pass", "fail"] | None = opt(None, "what the reproducer should do here: pass or fail (default: pass)")
    until_fail: bool = opt(False, "repeat until the first failure (at most --repeat times if given, and --max-time)")
    dump_on_fail: bool = opt(False, "keep a vmcore of the guest at the first failing run (QMP dump-guest-memory; open it "
                                    "with drgn or crash)")
    max_time: Seconds | None = opt(None, "with --until-fail: stop repeating after this many seconds", metavar="SECONDS")
    reboot_each: bool = opt(False, "boot again, from fresh disks, before every repetition")
    machine: str | None = opt(None, "the machine that runs the command (default: the topology's first)", max_length=15)
    timeout: Seconds = opt(600.0, "seconds one run may take before it counts as hung (default: 600)", metavar="SECONDS")

    @model_validator(mode="after")
    def _something_to_run(self) -> "ReproOptions":
        if not self.command and not self.fio:
            raise ValueError("give a command (after --) or --fio JOB")
        if self.max_time is not None and not self.until_fail:
            raise ValueError("--max-time goes with --until-fail")
        for path in [*self.put, *([self.fio] if self.fio else [])]:
            local = Path(path).expanduser()
            if not local.exists():
                raise ValueError(f"{path}: no such file or directory")
            # A FIFO or a device would hang or stream for ever; a link out of a directory would carry a host file.
            if not (local.is_file() or local.is_dir()) or (path == self.fio and not local.is_file()):
                raise ValueError(f"{path}: not a regular file{' or a directory' if path != self.fio else ''}")
            if local.is_dir():
                escaping = links_out_of(local)
                if escaping:
                    raise ValueError(f"{path}: {escaping[0]} is a symlink out of the directory; refusing to follow it")
        return self


def fio_errors(text: str) -> tuple[dict[str, Any] | None, list[str]]:
    """fio's JSON report (it may follow other output) and the jobs that ended with an error."""
    start = text.find("{")
    if start < 0:
        return None, []
    try:
        report = json.loads(text[start:])
    except ValueError:
        return None, []
    failed = [f"{job.get('jobname', '?')}: error {job['error']}" for job in report.get("jobs", []) if job.get("error")]
    return report, failed


# `git bisect run`'s convention, which kernel developers' reproducers already follow: this run could
# not test (a missing tool, a setup step that failed), so it says nothing about the kernel.
CANNOT_TEST = 125


def judge(exit_code: int | None, problems: dict[str, list[str]], fio_failed: list[str], note: str = "") -> tuple[str, str]:
    """FAIL when the command failed, a fio job failed, or the kernel logged a problem; ERROR when the
    reproducer said it could not test (exit 125) and the kernel logged nothing."""
    if exit_code == CANNOT_TEST and not problems and not note and not fio_failed:
        return ERROR, f"the reproducer could not test (exit {CANNOT_TEST}, git bisect run's 'skip'): nothing was learnt about the kernel"
    reasons = []
    if note:
        reasons.append(note)
    if exit_code not in (0, None):
        reasons.append(f"exit status {exit_code}")
    reasons += [f"fio {f}" for f in fio_failed]
    for kind, lines in problems.items():
        reasons.append(f"kernel: {kind.replace('_', ' ')} ({lines[0][:100]})")
    if reasons:
        return FAIL, "; ".join(reasons)
    return PASS, "exit status 0, nothing in the kernel log"


@register
class Repro(Scenario):
    name = NAME
    summary = "any reproducer (a command or a fio job) on any topology, repeated, with failure rates per kernel"
    Options = ReproOptions
    topology = "nvme-pi"
    file_options = ("put", "fio")
    options: ReproOptions

    def check(self, variant) -> None:
        assert variant.rendered is not None
        if self.options.machine and self.options.machine not in variant.rendered.topology.machines:
            raise UsageError(f"--machine {self.options.machine}: topology {variant.topology} has "
                             f"{', '.join(variant.rendered.topology.machines)}")

    def _machine(self, ctx: Context) -> str:
        return self.options.machine or next(iter(ctx.lab.machines))

    def setup(self, ctx: Context) -> None:
        guest = ctx.guest(self._machine(ctx))
        guest.run(["mkdir", "-p", GUEST_DIR], check=True)
        for path in self.options.put:
            upload(guest, Path(path).expanduser(), GUEST_DIR)
        if self.options.fio:
            guest.put(Path(self.options.fio).expanduser(), f"{GUEST_DIR}/job.fio")

    def more(self, ctx: Context, started: float) -> bool:
        if not self.options.until_fail:
            return ctx.repetition < self.options.repeat
        cap = self.options.repeat if self.options.repeat > 1 else UNTIL_FAIL_CAP
        if ctx.failed_repetitions or ctx.repetition >= cap:
            return False
        return self.options.max_time is None or time.monotonic() - started < self.options.max_time

    def exercise(self, ctx: Context) -> None:
        name = self._machine(ctx)
        if ctx.repetition > 1 and (self.options.reboot_each or not ctx.lab.machines[name].alive()):
            ctx.reboot()
            self.setup(ctx)
        guest = ctx.guest(name)
        guest.run("dmesg -C", timeout=30)
        t0 = time.monotonic()
        exit_code: int | None = None
        note = ""
        fio_failed: list[str] = []
        out, err = io.BytesIO(), io.BytesIO()
        command = f"cd {GUEST_DIR} && " + (self.options.command or "fio --output-format=json job.fio")
        try:
            exit_code = guest.stream(["bash", "-c", command], None, out, err, timeout=self.options.timeout)
        except GuestCommandError as exc:
            note = self._what_happened(ctx, name, str(exc))
        stdout, stderr = out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")
        ctx.sub.write(ctx.path("stdout"), stdout)
        ctx.sub.write(ctx.path("stderr"), stderr)
        if self.options.fio and not self.options.command:
            report, fio_failed = fio_errors(stdout)
            ctx.sub.write(ctx.path("fio.json"), json.dumps(report, indent=1) if report else "")
            if report is None and exit_code == 0:
                ctx.case("repro", ERROR, "fio printed no JSON report", expected=self._expected())
                return
        dmesg = ""
        if ctx.lab.machines[name].alive():
            try:
                dmesg = ctx.dmesg(name)
            except LabError:
                dmesg = ""
        if not dmesg:
            dmesg = ctx.lab.machines[name].console_log.read_text(errors="replace")[-200_000:]
        ctx.sub.write(ctx.path("dmesg"), dmesg)
        problems = kernel_log.summary(dmesg)
        verdict, reason = judge(exit_code, problems, fio_failed, note)
        if note and not ctx.lab.machines[name].alive():
            verdict = FAIL
        first_failure = verdict == FAIL and not ctx.failed_repetitions
        if first_failure or not self.more(ctx, t0):
            self._fetch(ctx, name, "first-failure" if first_failure else "last")
        vmcore = self._dump(ctx, name) if first_failure and self.options.dump_on_fail else None
        ctx.case("repro", verdict, reason, expected=self._expected(), exit_code=exit_code, kernel_problems=problems,
                 seconds=round(time.monotonic() - t0, 1), output=ctx.path("stdout"), kernel_log=ctx.path("dmesg"),
                 vmcore=vmcore)

    def kernel_log_rules(self, ctx: Context, case: str, facets: dict[str, Any]) -> Sequence[kernel_log.Rule]:
        # The reproducer's verdict reads the guest's whole dmesg itself (judge() above).
        return (kernel_log.Rule(frozenset(kernel_log.CRASH + kernel_log.DEVICE), "judged by the reproducer's own verdict"),)

    def _expected(self) -> str | None:
        return {"pass": PASS, "fail": FAIL}.get(self.options.expect or "")

    def _what_happened(self, ctx: Context, name: str, error: str) -> str:
        """A run that did not finish: a dead guest (panic) or a hang is the kernel's failure."""
        machine = ctx.lab.machines[name]
        if not machine.alive():
            from lab.machine import classify_console, read_text

            died = classify_console(read_text(machine.console_log))
            return f"the guest died ({died[1] if died else 'QEMU exited'})"
        if "timed out" in error:
            return f"did not finish within {self.options.timeout:g} s (hung?)"
        raise LabError(error)

    def _dump(self, ctx: Context, name: str) -> str | None:
        """The guest's memory at its first failure, beside the run's other files (a guest that died
        has no memory left to dump: said, not hidden)."""
        from lab.dump import dump

        machine = ctx.lab.machines[name]
        if not machine.alive():
            warn(f"{name}: no vmcore, the guest is gone")
            return None
        rel = ctx.path("vmcore-first-failure")
        target = ctx.sub.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        done = dump(lambda command, arguments: {"return": machine.qmp_cmd(command, **arguments)}, target)
        info(f"{name}: vmcore of the first failure: {target} ({done['format']}, {done['bytes'] >> 20} MiB)")
        return rel

    def _fetch(self, ctx: Context, name: str, label: str) -> None:
        if not self.options.get or not ctx.lab.machines[name].alive():
            return
        dest = ctx.sub.path / ctx.path(f"get-{label}")
        dest.mkdir(parents=True, exist_ok=True)
        for path in self.options.get:
            try:
                download(ctx.guest(name), path, dest)
            except (LabError, OSError) as exc:
                ctx.note(f"--get {path}: {exc}")

    def table(self, results: dict[str, Any]) -> str:
        rows = [["", "verdict", "failure rate", "first failure"]]
        for label, s in results.get("subruns", {}).items():
            case = s["cases"].get("repro", {})
            rate = case.get("rate")
            first = case.get("first_failure") or {}
            rows.append([f"{label} ({s.get('release', '?')})", s["verdict"],
                         Rate(rate["failed"], rate["runs"]).describe() if rate else "-",
                         f"run {first['repetition']}: {first['reason'][:80]}" if first else "-"])
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)
