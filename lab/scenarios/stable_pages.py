"""Stable-pages scenario: O_DIRECT writes and reads on a PI namespace (through XFS, ext4 or the raw
block device) while another thread keeps changing the buffer, with a control run that does not.
One guest per kernel; the kernels' verdicts side by side."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import guestprog, junit
from lab.errors import BootError, LabError, UsageError
from lab.lab import Lab
from lab.paths import scenarios_dir
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios import kmsg
from lab.scenarios.verdict import (ERROR, Expectation, ProgramResult, combine, errno_name, expectation_for, judge,
                                   outcome, outcome_ok, parse_program_output)
from lab.ssh import GuestCommandError
from lab.topology.render import render

NAME = "stable-pages"
DEFAULT_KERNELS = ["debian:6.12", "debian:7.3"]
DEFAULT_TOPOLOGY = "nvme-pi"
TARGETS = ("xfs", "ext4", "raw")
DIRECTIONS = ("write", "read")
EXPECT_FILE = scenarios_dir() / NAME / "expect.toml"
PROGRAM = f"{NAME}/dio_mutate.c"
MOUNTPOINT = "/mnt/lab"
_SIZE_RE = re.compile(r"^(\d+)([KM]?)$", re.IGNORECASE)


def parse_block_size(text: str) -> int:
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise UsageError(f"block size {text!r}: use a number with optional K or M (4K, 64K, 1M)")
    value = int(m.group(1)) * {"": 1, "K": 1024, "M": 1 << 20}[m.group(2).upper()]
    if value < 512 or value % 512 or value > 16 << 20:
        raise UsageError(f"block size {text!r}: must be a multiple of 512 between 512 and 16M")
    return value


def human_size(n: int) -> str:
    return f"{n >> 20}M" if n % (1 << 20) == 0 else f"{n >> 10}K" if n % 1024 == 0 else str(n)


@dataclass
class Options:
    kernels: list[str] = field(default_factory=lambda: list(DEFAULT_KERNELS))
    topology: str = DEFAULT_TOPOLOGY
    params: dict = field(default_factory=dict)
    targets: list[str] = field(default_factory=lambda: ["xfs"])
    directions: list[str] = field(default_factory=lambda: list(DIRECTIONS))
    block_sizes: list[int] = field(default_factory=lambda: [64 << 10])
    duration: float = 20.0
    control_duration: float = 5.0
    control: bool = True
    size: int = 32 << 20
    accel: str = "auto"

    def validate(self) -> None:
        for t in self.targets:
            if t not in TARGETS:
                raise UsageError(f"--target {t!r}: choose from {', '.join(TARGETS)}")
        for d in self.directions:
            if d not in DIRECTIONS:
                raise UsageError(f"--direction {d!r}: choose from write, read, both")
        if self.duration <= 0 or self.control_duration <= 0:
            raise UsageError("--duration and --control-duration must be positive")
        if not self.kernels:
            raise UsageError("give at least one --kernel")

    def to_dict(self) -> dict:
        return {"kernels": self.kernels, "topology": self.topology, "params": self.params, "targets": self.targets,
                "directions": self.directions, "block_sizes": self.block_sizes, "duration": self.duration,
                "control_duration": self.control_duration, "control": self.control, "size": self.size}


def case_name(target: str, direction: str, bs: int) -> str:
    return f"{target}-{direction}-{human_size(bs)}"


def kernel_label(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", ref).strip("-")[:60]


# -- guest side -----------------------------------------------------------------------------------
def prepare_target(guest, target: str, device: str) -> str:
    """Make the file system (or not) and return the path the program does I/O on."""
    guest.run(f"umount {MOUNTPOINT} 2>/dev/null; mkdir -p {MOUNTPOINT}", timeout=60)
    if target == "raw":
        return device
    mkfs = {"xfs": f"mkfs.xfs -f -q {device}", "ext4": f"mkfs.ext4 -q -F {device}"}[target]
    guest.run(f"modprobe {target} 2>/dev/null; {mkfs} && mount {device} {MOUNTPOINT}", timeout=300, check=True)
    return f"{MOUNTPOINT}/dio-target"


def run_program(guest, path: str, direction: str, bs: int, duration: float, size: int, mutate: bool) -> tuple[ProgramResult, str]:
    """One program run with the kernel log cleared before and read after."""
    guest.run("dmesg -C", timeout=30)
    cmd = (f"/usr/local/bin/dio_mutate --path {path} --direction {direction} --bs {bs} --duration {duration:g} "
           f"--size {size} --mutate {1 if mutate else 0}")
    try:
        res = guest.run(cmd, timeout=duration + 300)
        result = parse_program_output(res.stdout)
        if res.exit_code != 0 and not result.error:
            result.error = f"program exited {res.exit_code}: {res.stderr.strip()[:200]}"
    except GuestCommandError as exc:
        result = ProgramResult("", None, str(exc))
    dmesg = guest.run("dmesg", timeout=60).stdout
    return result, dmesg


# -- one kernel -----------------------------------------------------------------------------------
def run_kernel(options: Options, ref: str, sub: RunDir) -> dict:
    """Boot one kernel, run every case; returns the kernel's section of the results."""
    params = dict(options.params)
    rendered = render(options.topology, params)
    section: dict = {"kernel": ref, "cases": {}, "verdict": ERROR, "reason": "", "run_dir": str(sub.path)}
    sub.update(scenario=NAME, options=options.to_dict(), kernel_ref=ref)
    program = guestprog.build(PROGRAM)
    started = time.monotonic()
    try:
        with Lab(rendered, kernel_ref=ref, accel=options.accel, run=sub) as lab:
            name = next(iter(lab.machines))
            guest = lab.guest(name)
            release = lab.kernels[name].release
            section.update(release=release, boot_seconds=lab.boot_seconds.get(name))
            guest.put(program, "/usr/local/bin/dio_mutate")
            guest.run("chmod +x /usr/local/bin/dio_mutate", check=True)
            ident = guest.run("uname -a; cat /proc/cmdline; cat /sys/block/nvme0n1/integrity/format", timeout=30).stdout
            sub.write("guest-identity.txt", ident)
            section["integrity_format"] = ident.strip().splitlines()[-1] if ident.strip() else None
            for target in options.targets:
                path = prepare_target(guest, target, "/dev/nvme0n1")
                for direction in options.directions:
                    for bs in options.block_sizes:
                        section["cases"][case_name(target, direction, bs)] = _run_case(
                            guest, sub, options, target, path, direction, bs, release, ref)
                guest.run(f"umount {MOUNTPOINT} 2>/dev/null", timeout=60)
    except (BootError, LabError) as exc:
        section["reason"] = str(exc).splitlines()[0]
        sub.write("error.txt", str(exc))
        info(f"{ref}: ERROR: {section['reason']}")
    section["seconds"] = round(time.monotonic() - started, 1)
    verdicts = [c["verdict"] for c in section["cases"].values()]
    expected_cases = len(options.targets) * len(options.directions) * len(options.block_sizes)
    if len(verdicts) == expected_cases and verdicts:
        section["verdict"] = combine(verdicts)
        section["reason"] = "; ".join(f"{n}: {c['verdict']}" for n, c in section["cases"].items())
    sub.write("verdict.json", json.dumps(section, indent=2))
    sub.finish("done" if section["verdict"] != ERROR else "error", verdict=section["verdict"])
    return section


def _run_case(guest, sub: RunDir, options: Options, target: str, path: str, direction: str, bs: int,
              release: str, ref: str) -> dict:
    label = case_name(target, direction, bs)
    started = time.monotonic()
    runs: dict[str, ProgramResult | None] = {"control": None, "mutate": None}
    messages: dict[str, dict] = {}
    modes = (["control"] if options.control else []) + ["mutate"]
    for mode in modes:
        seconds = options.control_duration if mode == "control" else options.duration
        info(f"{ref}: {label} {mode} run ({seconds:g} s of I/O)")
        result, dmesg = run_program(guest, path, direction, bs, seconds, options.size, mode == "mutate")
        runs[mode] = result
        sub.write(f"cases/{label}/{mode}.out", result.raw)
        sub.write(f"cases/{label}/{mode}.dmesg", dmesg)
        messages[mode] = kmsg.parse(dmesg).to_dict()
        info(f"{ref}: {label} {mode}: {describe(result)}; kernel: {messages[mode]['integrity_lines']} integrity lines"
             f" (+{messages[mode]['suppressed_total']} suppressed)")
    if not options.control:
        # Without a control the verdict rests on the mutating run alone; say so in the reason.
        runs["control"] = ProgramResult("", {"ops": 1, "ok": 1, "short": 0, "errno": {}}, None)
    verdict, reason = judge(runs["mutate"], runs["control"])
    if not options.control:
        reason += " (no control run)"
    expected = expectation_for(EXPECT_FILE, target, release)
    case = {
        "verdict": verdict, "reason": reason,
        "expected": expected.verdict if expected else None, "expected_why": expected.why if expected else None,
        "outcome": outcome(verdict, expected),
        "runs": {m: (r.data if r else None) for m, r in runs.items()},
        "run_errors": {m: r.error for m, r in runs.items() if r and r.error},
        "kernel_messages": messages,
        "seconds": round(time.monotonic() - started, 1),
    }
    sub.write(f"cases/{label}/verdict.json", json.dumps(case, indent=2))
    return case


def describe(result: ProgramResult) -> str:
    if result.error:
        return f"ERROR ({result.error})"
    d = result.data
    errs = ", ".join(f"{errno_name(k)} x{v}" for k, v in result.errnos.items())
    return f"{result.failed}/{d['ops']} failed{' (' + errs + ')' if errs else ''}, {d.get('mib_per_s', 0):.1f} MiB/s"


# -- whole run ------------------------------------------------------------------------------------
def run(options: Options, run_dir: RunDir | None = None) -> tuple[RunDir, dict]:
    options.validate()
    render(options.topology, options.params)  # bad topology input fails before anything boots
    run_dir = run_dir or RunDir.create(NAME, options.topology)
    run_dir.update(scenario=NAME, options=options.to_dict())
    results: dict = {"scenario": NAME, "options": options.to_dict(), "kernels": {}}
    status = "interrupted"
    try:
        for ref in options.kernels:
            label = kernel_label(ref)
            results["kernels"][label] = run_kernel(options, ref, run_dir.child(f"kernels/{label}", kernel_ref=ref))
            write_outputs(run_dir, results)
        status = "done"
    finally:
        write_outputs(run_dir, results)
        run_dir.finish(status, verdicts={k: v["verdict"] for k, v in results["kernels"].items()},
                       all_as_expected=all_ok(results))
    return run_dir, results


def all_ok(results: dict) -> bool:
    kernels = results.get("kernels", {})
    if not kernels:
        return False
    for section in kernels.values():
        if section["verdict"] == ERROR:
            return False
        if not all(outcome_ok(c["outcome"]) for c in section["cases"].values()):
            return False
    return True


def write_outputs(run_dir: RunDir, results: dict) -> None:
    run_dir.write("results.json", json.dumps(results, indent=2))
    run_dir.write("summary.txt", table(results) + "\n")
    cases = []
    for label, section in results.get("kernels", {}).items():
        if not section["cases"]:
            cases.append({"name": "boot", "classname": f"{NAME}.{label}", "outcome": "error", "ok": False,
                          "message": section.get("reason") or "no cases ran", "seconds": section.get("seconds", 0)})
        for name, c in section["cases"].items():
            cases.append({"name": name, "classname": f"{NAME}.{label}", "outcome": c["outcome"], "ok": outcome_ok(c["outcome"]),
                          "message": f"{c['verdict']} ({c['outcome']}): {c['reason']}", "seconds": c.get("seconds", 0),
                          "details": json.dumps(c["kernel_messages"].get("mutate", {}), indent=1)})
    junit.write(NAME, cases, run_dir.path / "junit.xml")


def table(results: dict) -> str:
    kernels = results.get("kernels", {})
    if not kernels:
        return "no kernel was run"
    labels = list(kernels)
    case_names: list[str] = []
    for s in kernels.values():
        for n in s["cases"]:
            if n not in case_names:
                case_names.append(n)
    rows: list[list[str]] = [["", *labels], ["kernel", *[kernels[l].get("release", "?") for l in labels]]]
    for n in case_names:
        for mode in ("mutate", "control"):
            row = [f"{n} {'(mutating)' if mode == 'mutate' else '(control)'}"]
            for l in labels:
                c = kernels[l]["cases"].get(n)
                data = c["runs"].get(mode) if c else None
                if not data or "ops" not in data:
                    row.append("-")
                    continue
                failed = sum(data["errno"].values()) + data["short"]
                errs = ",".join(errno_name(int(k)) for k in data["errno"]) or ""
                row.append(f"{failed}/{data['ops']} failed {errs} {data.get('mib_per_s', 0):.1f}MiB/s".replace("  ", " "))
            rows.append(row)
        row = [f"{n} kernel log"]
        for l in labels:
            c = kernels[l]["cases"].get(n)
            m = c["kernel_messages"].get("mutate") if c else None
            row.append(f"{m['integrity_lines']} lines +{m['suppressed_total']} suppressed" if m else "-")
        rows.append(row)
    verdict_row = ["verdict"]
    expect_row = ["expected"]
    for l in labels:
        s = kernels[l]
        verdict_row.append(s["verdict"])
        outcomes = {c["outcome"] for c in s["cases"].values()} or {"error"}
        expect_row.append(", ".join(sorted(outcomes)))
    rows += [verdict_row, expect_row]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for i, r in enumerate(rows):
        out.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 1:
            out.append("  ".join("-" * w for w in widths))
    errors = [f"{l}: {s['reason']}" for l, s in kernels.items() if s["verdict"] == ERROR]
    return "\n".join(out + errors)
