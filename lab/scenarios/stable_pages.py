"""Stable-pages scenario: O_DIRECT writes and reads on a PI namespace (through XFS, ext4 or the raw
block device) while another thread keeps changing the buffer, with a control run that does not.
One guest per kernel; the kernels' verdicts side by side."""

from __future__ import annotations

import errno as errno_mod
import time
from typing import Annotated, Any, Literal, Sequence

from pydantic import AfterValidator, BeforeValidator

from lab import guestprog, kernel_log
from lab.errors import UsageError
from lab.paths import scenarios_dir
from lab.scenarios import kmsg
from lab.scenarios.framework import Context, Scenario, Variant, register
from lab.scenarios.options import ScenarioOptions, Seconds, opt
from lab.units import parse_size
from lab.scenarios.verdict import ERROR, FAIL, PASS, ProgramResult, errno_list, errno_name

NAME = "stable-pages"
PROGRAM = f"{NAME}/dio_mutate.c"
GUEST_PROGRAM = "/usr/local/bin/dio_mutate"
MOUNTPOINT = "/mnt/lab"
INTEGRITY_ERRNOS = (errno_mod.EILSEQ, errno_mod.EIO)


def _block_size(value: int) -> int:
    if value < 512 or value % 512 or value > 16 << 20:
        raise ValueError("a block size is a multiple of 512 between 512 and 16M (4K, 64K, 1M)")
    return value


BlockSize = Annotated[int, BeforeValidator(parse_size), AfterValidator(_block_size)]


def parse_block_size(text: str) -> int:
    """'64K' -> 65536, for callers outside the options model."""
    from lab.scenarios.options import validate

    return validate(StablePagesOptions, {"bs": [text]}).bs[0]  # type: ignore[attr-defined]


def human_size(n: int) -> str:
    return f"{n >> 20}M" if n % (1 << 20) == 0 else f"{n >> 10}K" if n % 1024 == 0 else str(n)


class StablePagesOptions(ScenarioOptions):
    targets: list[Literal["xfs", "ext4", "raw"]] = opt(["xfs"], "where the I/O goes, repeatable (default: xfs)",
                                                       flag="--target", min_length=1)
    direction: Literal["write", "read", "both"] = opt("both", "write, read or both (default: both)")
    bs: list[BlockSize] = opt([64 << 10], "block size, repeatable: 4K, 64K, 1M (default: 64K)", metavar="SIZE", min_length=1)
    duration: Seconds = opt(20.0, "seconds of I/O per mutating run (default: 20)", metavar="SECONDS")
    control_duration: Seconds = opt(5.0, "seconds of I/O per control run (default: 5)", metavar="SECONDS")
    control: bool = opt(True, "skip the control runs without mutation", negate="--no-control")
    size: int = opt(32, "MiB of the file or device area the I/O cycles over (default: 32)", gt=0, le=4096)
    fault: Literal["none", "no-mutation"] = opt("none", "inject a fault: no-mutation keeps the buffer still "
                                                "(the run must be ERROR, never PASS)", hidden=False)

    @property
    def directions(self) -> list[str]:
        return ["write", "read"] if self.direction == "both" else [self.direction]


def case_name(target: str, direction: str, bs: int) -> str:
    return f"{target}-{direction}-{human_size(bs)}"


# -- verdict ----------------------------------------------------------------------------------------
def judge(mutating: ProgramResult | None, control: ProgramResult | None,
          mutating_log: kmsg.KernelMessages | None = None, control_log: kmsg.KernelMessages | None = None,
          control_expected: bool = True) -> tuple[str, str]:
    """(verdict, reason). PASS needs mutations that happened, zero integrity errors while mutating
    and zero errors at all in the control. EILSEQ is an integrity error; EIO is one only when the
    kernel logged a PI error in the same run. Anything that prevented a measurement is ERROR."""
    runs = [("mutating run", mutating, mutating_log)]
    if control_expected:
        runs.insert(0, ("control run", control, control_log))
    for label, res, log in runs:
        if res is None:
            return ERROR, f"{label} did not happen"
        if res.error:
            return ERROR, f"{label}: {res.error}"
        assert res.data is not None
        if res.data.get("prefill_errors"):
            return ERROR, (f"{label}: {res.data['prefill_errors']} writes of the prefill failed, so the reads "
                           f"would check blocks without valid protection information")
        other = {k: v for k, v in res.errnos.items() if k not in INTEGRITY_ERRNOS}
        if other:
            return ERROR, f"{label} failed with errors unrelated to integrity: {errno_list(other)}"
        eio = res.errnos.get(errno_mod.EIO, 0)
        if eio and not (log and log.integrity_lines):
            return ERROR, f"{label}: I/O error not explained by PI (EIO x{eio}, no PI error in the kernel log)"
    assert mutating is not None and mutating.data is not None
    if not mutating.data.get("mutations"):
        return ERROR, "the mutating thread changed the buffer 0 times: nothing was tested"
    if control_expected:
        assert control is not None and control.data is not None
        if control.failed:
            return FAIL, f"control run (no mutation) had {control.failed} failed of {control.data['ops']}"
    if mutating.failed:
        short = f", short x{mutating.data['short']}" if mutating.data["short"] else ""
        return FAIL, (f"{mutating.failed} of {mutating.data['ops']} operations failed while the buffer changed "
                      f"({errno_list(mutating.errnos)}{short})")
    reason = f"0 of {mutating.data['ops']} operations failed with {mutating.data['mutations']} buffer mutations"
    return PASS, reason + ("" if control_expected else " (no control run)")


def describe(result: ProgramResult) -> str:
    if result.error:
        return f"ERROR ({result.error})"
    d = result.data or {}
    errs = errno_list(result.errnos)
    return f"{result.failed}/{d['ops']} failed{' (' + errs + ')' if errs else ''}, {d.get('mib_per_s', 0):.1f} MiB/s"


# -- scenario ---------------------------------------------------------------------------------------
@register
class StablePages(Scenario):
    name = NAME
    summary = "O_DIRECT on a PI namespace while the buffer changes; kernels side by side"
    Options = StablePagesOptions
    topology = "nvme-pi"
    default_kernels = ("debian:6.12", "debian:7.3")
    expect_file = scenarios_dir() / NAME / "expect.toml"
    options: StablePagesOptions

    def check(self, variant: Variant) -> None:
        assert variant.rendered is not None
        machine = next(iter(variant.rendered.topology.machines.values()))
        if not machine.nvme or not machine.nvme[0].namespaces:
            raise UsageError(f"{NAME}: topology {variant.topology} gives its first machine no NVMe namespace")
        ns = machine.nvme[0].namespaces[0]
        for bs in self.options.bs:
            if bs % ns.lba:
                raise UsageError(f"--bs {human_size(bs)}: not a multiple of the namespace's {ns.lba}-byte logical block")
        if (self.options.size << 20) < max(self.options.bs):
            raise UsageError(f"--size {self.options.size} MiB is smaller than one block of {human_size(max(self.options.bs))}")
        if (self.options.size << 20) > ns.size:
            raise UsageError(f"--size {self.options.size} MiB is larger than the {ns.size >> 20} MiB namespace")

    def prepare(self) -> None:
        self.program = guestprog.build(PROGRAM)

    def setup(self, ctx: Context) -> None:
        pi = ctx.require_integrity()
        self.device = f"/dev/{pi['device']}"
        ctx.section["integrity"] = pi
        guest = ctx.guest()
        guest.put(self.program, GUEST_PROGRAM)
        guest.run(["chmod", "+x", GUEST_PROGRAM], check=True)
        ctx.sub.write("guest-identity.txt", guest.run("uname -a; cat /proc/cmdline", timeout=30).stdout)

    def kernel_log_rules(self, ctx: Context, case: str, facets: dict[str, Any]) -> Sequence[kernel_log.Rule]:
        # Guard errors are what a buffer changed in flight provokes: each case counts them itself
        # and fails when they are not expected (XFS from 7.0 on), so they do not fail it twice.
        return (kernel_log.Rule(kernel_log.PI | {"nvme_status", "io_error"},
                                "integrity errors: stable-pages counts them in each case's verdict"),)

    def exercise(self, ctx: Context) -> None:
        guest = ctx.guest()
        for target in self.options.targets:
            path = self._prepare_target(ctx, target)
            for direction in self.options.directions:
                for bs in self.options.bs:
                    self._case(ctx, target, path, direction, bs)
            guest.run(f"umount {MOUNTPOINT} 2>/dev/null", timeout=60)

    def _prepare_target(self, ctx: Context, target: str) -> str:
        """Make the file system (or not) and return the path the program does I/O on."""
        guest = ctx.guest()
        guest.run(f"umount {MOUNTPOINT} 2>/dev/null; mkdir -p {MOUNTPOINT}", timeout=60)
        if target == "raw":
            return self.device
        mkfs = {"xfs": ["mkfs.xfs", "-f", "-q", self.device], "ext4": ["mkfs.ext4", "-q", "-F", self.device]}[target]
        guest.run(["modprobe", "-q", target], timeout=60)
        guest.run(mkfs, timeout=300, check=True)
        guest.run(["mount", self.device, MOUNTPOINT], timeout=60, check=True)
        return f"{MOUNTPOINT}/dio-target"

    def _program(self, ctx: Context, label: str, mode: str, path: str, direction: str, bs: int) -> tuple[ProgramResult, kmsg.KernelMessages]:
        seconds = self.options.control_duration if mode == "control" else self.options.duration
        ctx.note(f"{label} {mode} run ({seconds:g} s of I/O)")
        ctx.guest().run("dmesg -C", timeout=30)
        argv: list[object] = [GUEST_PROGRAM, "--path", path, "--direction", direction, "--bs", bs, "--duration", f"{seconds:g}",
                              "--size", self.options.size << 20, "--mutate", int(mode == "mutate")]
        if mode == "mutate" and self.options.fault == "no-mutation":
            argv += ["--fault", "no-mutation"]
        result = ctx.run_program(argv, timeout=seconds + 300, save_as=ctx.path(f"cases/{label}/{mode}.out"))
        dmesg = ctx.dmesg()
        ctx.sub.write(ctx.path(f"cases/{label}/{mode}.dmesg"), dmesg)
        messages = kmsg.parse(dmesg)
        ctx.note(f"{label} {mode}: {describe(result)}; kernel: {messages.integrity_lines} integrity lines "
                 f"(+{messages.suppressed_total} suppressed)")
        return result, messages

    def _case(self, ctx: Context, target: str, path: str, direction: str, bs: int) -> None:
        label = case_name(target, direction, bs)
        started = time.monotonic()
        control = control_log = None
        if self.options.control:
            control, control_log = self._program(ctx, label, "control", path, direction, bs)
        mutating, mutating_log = self._program(ctx, label, "mutate", path, direction, bs)
        verdict, reason = judge(mutating, control, mutating_log, control_log, control_expected=self.options.control)
        ctx.case(label, verdict, reason, facets={"target": target, "direction": direction, "bs": bs},
                 runs={"control": control.data if control else None, "mutate": mutating.data},
                 run_errors={m: r.error for m, r in (("control", control), ("mutate", mutating)) if r and r.error},
                 kernel_messages={m: log.to_dict() for m, log in (("control", control_log), ("mutate", mutating_log)) if log},
                 seconds=round(time.monotonic() - started, 1))

    def table(self, results: dict[str, Any]) -> str:
        return side_by_side(results)


def side_by_side(results: dict[str, Any]) -> str:
    """The kernels as columns: per case the mutating and control runs, the kernel log, the verdict."""
    subruns = results.get("subruns", {})
    if not subruns:
        return "no kernel was run"
    labels = list(subruns)
    case_names: list[str] = []
    for s in subruns.values():
        for n in s["cases"]:
            if n not in case_names:
                case_names.append(n)
    rows: list[list[str]] = [["", *labels], ["kernel", *[subruns[lb].get("release", "?") for lb in labels]]]
    for n in case_names:
        for mode in ("mutate", "control"):
            row = [f"{n} {'(mutating)' if mode == 'mutate' else '(control)'}"]
            for lb in labels:
                c = subruns[lb]["cases"].get(n)
                data = (c.get("runs") or {}).get(mode) if c else None
                if not data or "ops" not in data:
                    row.append("-")
                    continue
                failed = sum(data["errno"].values()) + data["short"]
                errs = ",".join(errno_name(k) for k in data["errno"])
                row.append(f"{failed}/{data['ops']} failed {errs} {data.get('mib_per_s', 0):.1f}MiB/s".replace("  ", " "))
            rows.append(row)
        row = [f"{n} kernel log"]
        for lb in labels:
            c = subruns[lb]["cases"].get(n)
            m = (c.get("kernel_messages") or {}).get("mutate") if c else None
            row.append(f"{m['integrity_lines']} lines +{m['suppressed_total']} suppressed" if m else "-")
        rows.append(row)
    rows.append(["verdict", *[subruns[lb]["verdict"] for lb in labels]])
    rows.append(["expected", *[subruns[lb].get("outcome", "?") for lb in labels]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for i, r in enumerate(rows):
        out.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 1:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
