"""dio-bench (`lab bench dio`): the bounce series' performance table (seed 003) as ratios, on the lab's
emulated NVMe: sequential io_uring reads and writes at QD 16 with 4k, 64K and 1M blocks on XFS,
zero copy against bounce on the same kernel.

Arrangements, all on one boot of nvme-pi with a second controller without PI (`-p plain=1`):
- zero-copy: XFS on the namespace without PI, the queue's stable_writes off.
- bounce: the same namespace and file system with stable_writes switched on in sysfs before the
  mount, so XFS bounces direct I/O (7.0+) and the bounce is the only difference. A PI namespace
  cannot be measured without the bounce: the block layer reports stable writes for every device
  with an integrity checksum.
- pi-bounce: XFS on the PI namespace (bounce plus PI generation and verification), for reference.

Each arrangement is proven before it is measured: a kprobe on bio_iov_iter_bounce() must fire for
the bounce arrangements and stay silent for zero copy, otherwise the cell is ERROR. Runs interleave
the arrangements (A, B, C, A, B, C, ...) so drift on the host hits all of them alike; the table shows
medians with min-max, and the ratio bounce/zero-copy next to the seed's."""

from __future__ import annotations

import json
import shlex
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from lab.errors import LabError, UsageError
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.kprobes import Kprobes
from lab.scenarios.options import ScenarioOptions, opt
from lab.scenarios.verdict import ERROR, NOT_APPLICABLE, PASS
from lab.guest import Guest

NAME = "dio-bench"
ARRANGEMENTS = ("zero-copy", "bounce", "pi-bounce")
Direction = Literal["read", "write"]
Block = Literal["4k", "64k", "1m"]
DIRECTIONS: tuple[Direction, ...] = ("read", "write")
BLOCKS: tuple[Block, ...] = ("4k", "64k", "1m")
MOUNT = "/mnt/diobench"
FILE = f"{MOUNT}/dio-bench.dat"
PROBE = "bio_iov_iter_bounce"

# Seed 003's figures (MiB/s, usr %, sys %) on the author's NVMe PI setup: zero copy, then bounce.
SEED: dict[tuple[str, str], tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    ("read", "4k"): ((1316, 12.65, 55.40), (1081, 11.76, 49.78)),
    ("read", "64k"): ((3370, 5.46, 18.20), (3365, 4.47, 15.68)),
    ("read", "1m"): ((3401, 0.76, 23.05), (3400, 0.80, 9.06)),
    ("write", "4k"): ((882, 11.83, 33.88), (750, 10.53, 34.08)),
    ("write", "64k"): ((2009, 7.33, 15.80), (2007, 7.47, 24.71)),
    ("write", "1m"): ((1992, 7.26, 9.13), (1992, 9.21, 19.11)),
}


@dataclass(frozen=True)
class Sample:
    mib_per_s: float
    usr: float
    sys: float


def seed_ratio(direction: str, block: str) -> float:
    zero, bounce = SEED[(direction, block)]
    return bounce[0] / zero[0]


def fio_argv(path: str, direction: str, block: str, *, seconds: float, size_mib: int, output: str,
             ramp: float = 1) -> list[str]:
    """One fio job as the seed ran it: sequential, io_uring, queue depth 16, O_DIRECT."""
    return ["fio", "--name=dio", f"--filename={path}", f"--rw={direction}", f"--bs={block}", "--iodepth=16",
            "--ioengine=io_uring", "--direct=1", f"--size={size_mib}M", "--time_based", f"--runtime={seconds:g}",
            f"--ramp_time={ramp:g}", "--output-format=json", f"--output={output}"]


def parse_fio(text: str, direction: str) -> Sample:
    """Bandwidth and the job's CPU from fio's JSON; a job that moved nothing is an error."""
    start = text.find("{")
    if start < 0:
        raise LabError("fio printed no JSON")
    try:
        job = json.loads(text[start:])["jobs"][0]
    except (json.JSONDecodeError, KeyError, IndexError) as exc:
        raise LabError(f"fio's JSON is unreadable ({exc})") from None
    if job.get("error"):
        raise LabError(f"fio job error {job['error']}")
    side = job.get(direction, {})
    if not side.get("io_bytes"):
        raise LabError(f"fio moved no data ({direction} io_bytes is {side.get('io_bytes')!r})")
    return Sample(side["bw_bytes"] / 2**20, float(job.get("usr_cpu", 0.0)), float(job.get("sys_cpu", 0.0)))


def spread(samples: list[Sample]) -> dict[str, float]:
    bw = [s.mib_per_s for s in samples]
    return {"median": statistics.median(bw), "min": min(bw), "max": max(bw), "runs": len(bw),
            "usr": statistics.median(s.usr for s in samples), "sys": statistics.median(s.sys for s in samples)}


def ratios(cells: dict[str, dict[str, Any]], direction: str, block: str) -> dict[str, float | None]:
    """bounce / zero-copy and pi-bounce / zero-copy from the medians of one run."""
    zero = cells.get(f"zero-copy-{direction}-{block}", {}).get("bandwidth")
    out: dict[str, float | None] = {}
    for arrangement in ("bounce", "pi-bounce"):
        other = cells.get(f"{arrangement}-{direction}-{block}", {}).get("bandwidth")
        out[arrangement] = other["median"] / zero["median"] if zero and other and zero["median"] else None
    return out


def render_table(section: dict[str, Any]) -> str:
    cells = section["cases"]
    measured = {(d, b) for d in DIRECTIONS for b in BLOCKS if any(f"{a}-{d}-{b}" in cells for a in ARRANGEMENTS)}

    def cell(name: str) -> str:
        c = cells.get(name, {})
        b = c.get("bandwidth")
        if not b:
            return f"{c.get('verdict', '-'):>26}"
        return f"{b['median']:6.0f} [{b['min']:.0f}-{b['max']:.0f}] ({b['usr']:4.1f}/{b['sys']:4.1f}%)"

    lines = []
    for direction in [d for d in DIRECTIONS if any(d == m[0] for m in measured)]:
        lines.append(f"Sequential {direction}s, io_uring QD 16, MiB/s median [min-max] (guest usr/sys CPU of fio)")
        lines.append(f"  {'size':5} {'zero copy':>30} {'bounce':>30} {'pi-bounce':>30}  bounce/zc  seed  pi/zc")
        for block in [b for b in BLOCKS if (direction, b) in measured]:
            r = ratios(cells, direction, block)
            fmt = lambda x: f"{100 * x:5.0f}%" if x is not None else "    -"  # noqa: E731
            lines.append(f"  {block:5} {cell(f'zero-copy-{direction}-{block}'):>30} {cell(f'bounce-{direction}-{block}'):>30} "
                         f"{cell(f'pi-bounce-{direction}-{block}'):>30}  {fmt(r['bounce']):>9} {fmt(seed_ratio(direction, block))} {fmt(r['pi-bounce'])}")
        lines.append("")
    return "\n".join(lines)


class DioBenchOptions(ScenarioOptions):
    runs: int = opt(3, "measured runs per cell, interleaved across arrangements (default: 3)", ge=1, le=50)
    seconds: float = opt(4.0, "seconds per fio run after 1 s of ramp (default: 4)", gt=0, le=600, metavar="SECONDS")
    size_mib: int = opt(256, "file size in MiB (default: 256)", ge=16, le=768, metavar="MIB")
    directions: list[Direction] = opt(list(DIRECTIONS), "read and/or write (default: both)", flag="--direction", min_length=1)
    blocks: list[Block] = opt(list(BLOCKS), "block sizes among 4k, 64k, 1m (default: all)", flag="--block", min_length=1)


@register
class DioBench(Scenario):
    name = NAME
    summary = "the bounce series' table: io_uring QD16 zero copy vs bounce on XFS, bandwidth and CPU (a benchmark)"
    Options = DioBenchOptions
    topology = "nvme-pi"
    machines = ("vm",)
    default_kernels = ("debian:7.3",)
    options: DioBenchOptions

    def variants(self):
        variants = super().variants()
        for v in variants:
            v.params.setdefault("plain", 1)
        return variants

    def check(self, variant) -> None:
        assert variant.rendered is not None
        nvme = variant.rendered.topology.machines["vm"].nvme
        if len(nvme) < 2 or nvme[1].namespaces[0].pi:
            raise UsageError("dio-bench needs the topology's second controller without PI (nvme-pi with -p plain=1)")

    def setup(self, ctx: Context) -> None:
        vm = ctx.guest("vm")
        ctx.require_integrity("vm")
        self.devices = {"plain": f"/dev/{ctx.namespace_device('vm', 1)}", "pi": f"/dev/{ctx.namespace_device('vm', 0)}"}
        self.queue = f"/sys/block/{self.devices['plain'].rsplit('/', 1)[1]}/queue/stable_writes"
        self.has_bounce = vm.run(f"grep -qw {PROBE} /proc/kallsyms", timeout=60).ok
        ctx.section["bounce_in_kernel"] = self.has_bounce
        vm.run(["mkdir", "-p", MOUNT], check=True)
        self.kprobes = Kprobes(vm, "labdio")
        if self.has_bounce:
            self.kprobes.install({"bounce": PROBE})
        for device in self.devices.values():
            vm.run(["mkfs.xfs", "-f", "-q", device], timeout=300, check=True)
        self.samples: dict[str, list[Sample]] = {}
        self.proven: dict[str, str | None] = {}  # arrangement -> None when proven, else why not

    def _mount(self, vm: Guest, arrangement: str) -> None:
        vm.run(f"mountpoint -q {MOUNT} && umount {MOUNT}; true", timeout=120, check=True)
        if arrangement == "pi-bounce":
            device = self.devices["pi"]
        else:
            device = self.devices["plain"]
            vm.run(f"echo {1 if arrangement == 'bounce' else 0} > {self.queue}", timeout=30, check=True)
            got = vm.run(["cat", self.queue], timeout=30).stdout.strip()
            if got != ("1" if arrangement == "bounce" else "0"):
                raise LabError(f"stable_writes of {device} reads {got!r} after it was set")
        vm.run(["mount", device, MOUNT], timeout=120, check=True)
        # Lay the file out once per file system; later runs overwrite it in place (no allocation).
        vm.run(f"test -s {FILE} || fio --name=layout --filename={FILE} --rw=write --bs=1m --size={self.options.size_mib}M "
               "--direct=1 --ioengine=psync >/dev/null", timeout=900, check=True)
        vm.run("sync; echo 3 > /proc/sys/vm/drop_caches", timeout=120)

    def _prove(self, vm: Guest, arrangement: str) -> str | None:
        """None when the arrangement really does what it says, else the reason it does not."""
        if not self.has_bounce:
            return None if arrangement == "zero-copy" else f"this kernel has no {PROBE}() (bounced direct I/O is 7.0+)"
        self.kprobes.arm()  # no comm filter: io_uring may issue from its io-wq workers
        res = vm.run(fio_argv(FILE, "write", "64k", seconds=1, size_mib=self.options.size_mib, output="/dev/null", ramp=0),
                     timeout=300)
        count = self.kprobes.counts()["bounce"]
        if not res.ok:
            return f"fio failed: {res.stderr.strip()[-200:]}"
        if arrangement == "zero-copy" and count:
            return f"{PROBE}() ran {count} times on the zero-copy arrangement"
        if arrangement != "zero-copy" and not count:
            return f"{PROBE}() never ran: XFS did not bounce"
        return None

    def exercise(self, ctx: Context) -> None:
        vm = ctx.guest("vm")
        for arrangement in ARRANGEMENTS:
            self._mount(vm, arrangement)
            self.proven[arrangement] = self._prove(vm, arrangement)
        for run in range(1, self.options.runs + 1):
            for direction in self.options.directions:
                for block in self.options.blocks:
                    for arrangement in ARRANGEMENTS:
                        if self.proven[arrangement] is not None:
                            continue
                        self._mount(vm, arrangement)
                        out = f"/tmp/fio-{arrangement}-{direction}-{block}-{run}.json"
                        argv = fio_argv(FILE, direction, block, seconds=self.options.seconds,
                                        size_mib=self.options.size_mib, output=out)
                        res = vm.run(f"{shlex.join(argv)} && cat {out}", timeout=self.options.seconds + 300)
                        ctx.sub.write(ctx.path(f"fio/{arrangement}-{direction}-{block}-{run}.json"), res.stdout)
                        if not res.ok:
                            raise LabError(f"fio {arrangement} {direction} {block}: {res.stderr.strip()[-200:]}")
                        self.samples.setdefault(f"{arrangement}-{direction}-{block}", []).append(parse_fio(res.stdout, direction))
            ctx.note(f"run {run}/{self.options.runs} measured")
        vm.run(f"umount {MOUNT}", timeout=120)
        self._record(ctx)

    def _record(self, ctx: Context) -> None:
        for arrangement in ARRANGEMENTS:
            why = self.proven[arrangement]
            for direction in self.options.directions:
                for block in self.options.blocks:
                    name = f"{arrangement}-{direction}-{block}"
                    facets = {"arrangement": arrangement, "direction": direction, "block": block}
                    if why is not None:
                        verdict = NOT_APPLICABLE if not self.has_bounce else ERROR
                        ctx.case(name, verdict, why, facets=facets)
                        continue
                    stats = spread(self.samples[name])
                    ctx.case(name, PASS, f"{stats['median']:.0f} MiB/s median of {stats['runs']} runs "
                             f"[{stats['min']:.0f}-{stats['max']:.0f}]", facets=facets, bandwidth=stats)
        for direction in self.options.directions:
            for block in self.options.blocks:
                r = ratios(ctx.section["cases"], direction, block)
                ctx.section.setdefault("ratios", {})[f"{direction}-{block}"] = {**r, "seed": seed_ratio(direction, block)}

    def table(self, results: dict[str, Any]) -> str:
        parts = []
        for label, section in results.get("subruns", {}).items():
            parts.append(f"{label} ({section.get('release', '?')})")
            parts.append(render_table(section))
        parts.append("seed 003 (real NVMe PI device): bounce at 82 % of zero copy for 4k reads, 85 % for 4k writes, "
                     "within 1 % at 64K and 1M")
        return "\n".join(parts)
