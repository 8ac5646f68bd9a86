"""blktests on the lab's NVMe: the tests that need a device (block/041's PI metadata, nvme/064's
passthrough metadata) get the topology's PI namespace as TEST_DEVS, and the NVMe-oF tests run once
per target transport (NVMET_TRTYPES loop, tcp, rdma over rdma_rxe, rdma over siw). The config is
written from the topology, never by hand. Results are classed against known issues like fstests'."""

from __future__ import annotations

import logging
import re
import shlex
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import model_validator

from lab import kernel_log
from lab.errors import LabError, UsageError
from lab.paths import scenarios_dir
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.options import Seconds, opt
from lab.scenarios.verdict import ERROR
from lab.settings import settings
from lab.suites.build import suite_tree
from lab.scenarios.suite import (FAIL_S, NOTRUN, NOTRUN_S, PASS_S, TIMEOUT_S, class_verdict,
                                side_by_side)
from lab.scenarios import suite
from lab.suites.monitor import kill_children_command, run_monitored
from lab.topology.kernel_needs import RDMA_OPTIONS

LOG = logging.getLogger(__name__)

NAME = "blktests"
KNOWN_ISSUES = scenarios_dir() / NAME / "known-issues.toml"
GUEST_TREE = "/root/blktests"
Transport = Literal["loop", "tcp", "rdma", "siw"]
# What each transport means to blktests' config: rdma is soft-RoCE (rdma_rxe), siw soft-iWARP.
TRANSPORT_CONFIG = {"loop": "NVMET_TRTYPES=loop", "tcp": "NVMET_TRTYPES=tcp", "rdma": "NVMET_TRTYPES=rdma\nUSE_RXE=1",
                    "siw": "NVMET_TRTYPES=rdma"}
# The kernel options each transport needs (host and target side); Debian's kernels have no siw.
TRANSPORT_OPTIONS = {"loop": ("NVME_TARGET_LOOP",), "tcp": ("NVME_TCP", "NVME_TARGET_TCP"),
                     "rdma": ("NVME_RDMA", "NVME_TARGET_RDMA", RDMA_OPTIONS["rxe"]),
                     "siw": ("NVME_RDMA", "NVME_TARGET_RDMA", RDMA_OPTIONS["siw"])}
PRESETS = {
    # Block-layer and NVMe tests of integrity metadata: they need a PI-formatted TEST_DEV.
    "pi": "block/041 block/043 nvme/049 nvme/064".split(),
    # NVMe-oF target set-up, connect and I/O on each transport.
    "fabrics": "nvme/003 nvme/004 nvme/006 nvme/008 nvme/010".split(),
}
PRESETS["nvme-pi"] = PRESETS["pi"] + PRESETS["fabrics"]
DEFAULT_PRESET = "nvme-pi"
# "nvme/004 (tr=tcp) (test nvme and nvmet UUID NS descriptors)   [passed]", "block/041 => nvme0n1 (...) [not run]"
_RESULT_RE = re.compile(r"^([a-z0-9_-]+/\d{3,})(?: => (\S+))?\s.*\[(passed|failed|not run)\]\s*$")
# A test that runs under several conditions prints them first: "nvme/006 (tr=loop bd=file) (...)"
_COND_RE = re.compile(r"^\S+(?: => \S+)? \(((?:tr|bd)=[^)]*)\)")
_HEADER_RE = re.compile(r"^([a-z0-9_-]+/\d{3,})(?: => \S+)?\s")
_STATUS = {"passed": PASS_S, "failed": FAIL_S, "not run": NOTRUN_S}
# A test that sets up an NVMe-oF target uses the transport; the others only see TEST_DEVS.
_FABRICS_MARKERS = ("_nvmet_target_setup", "_setup_nvmet", "_nvme_connect_subsys", "_require_nvme_trtype", "nvme_trtype")


def missing_options(ctx: Context, transport: str) -> list[str]:
    """The transport's kernel options this kernel's config does not set (none when it has no config)."""
    return [o for o in TRANSPORT_OPTIONS[transport] if ctx.kernel_config(o, "vm") is None]


def resolve_tests(tests: list[str] | None, preset: str | None) -> list[str]:
    return suite.resolve_tests(tests, preset, PRESETS, DEFAULT_PRESET, "nvme/004")


def uses_transport(tree: Path, test: str) -> bool:
    """Whether a test sets up an NVMe-oF target (so it runs once per transport), from its source."""
    path = tree / "tests" / test
    return path.is_file() and any(marker in path.read_text(errors="replace") for marker in _FABRICS_MARKERS)


def config_text(test_devs: list[str], transport: str | None) -> str:
    lines = [f"TEST_DEVS=({' '.join(test_devs)})"]
    if transport is not None:
        lines.append(TRANSPORT_CONFIG[transport])
    return "\n".join(lines) + "\n"


def check_script(tree: str, config: str, tests: list[str]) -> str:
    return f"""cd {shlex.quote(tree)} || exit 97
cat > config <<'LAB_EOF'
{config}LAB_EOF
rm -rf results
./check {shlex.join(tests)}
echo "LAB-CHECK-EXIT $?"
"""


def _worst(statuses: list[str]) -> str:
    """A test run under several conditions (bd=device, bd=file) fails if any failed, passes if any
    passed, else did not run."""
    for status in (FAIL_S, PASS_S):
        if status in statuses:
            return status
    return NOTRUN_S


def parse_output(text: str) -> dict[str, dict[str, Any]]:
    """Per test: status (the worst over its conditions), each condition's status, and for a failure
    or a notrun the indented lines that follow (the diff or the reason). A test that ran on a device
    is keyed by its name all the same (one TEST_DEV)."""
    found: dict[str, dict[str, Any]] = {}
    last: str | None = None
    for line in text.split("LAB-CHECK-EXIT", 1)[0].splitlines():
        m = _RESULT_RE.match(line)
        if m:
            last = m.group(1)
            cond_m = _COND_RE.match(line)
            cond = " ".join(c for c in (cond_m.group(1).split() if cond_m else []) if not c.startswith("tr=")) or "-"
            entry = found.setdefault(last, {"conditions": {}, "details": []})
            entry["conditions"][cond] = _STATUS[m.group(3)]
            entry["status"] = _worst(list(entry["conditions"].values()))
            if cond != "-" and m.group(3) != "passed":
                entry["details"].append(f"[{cond}]")
            continue
        if _HEADER_RE.match(line):  # the next test's start line
            last = None
        elif last and (rt := re.match(r"^\s+runtime\s.*?(\d+(?:\.\d+)?)s\s*$", line)):
            found[last].setdefault("seconds", {})[cond] = float(rt.group(1))
        elif last and line.startswith("    ") and not re.match(r"^\s+(runtime|date|exit_status|description)\b", line):
            if len(found[last]["details"]) < 12 and line.strip() not in found[last]["details"]:
                found[last]["details"].append(line.strip())
    return found


def startup_failure(output: str) -> str:
    """Why check ran no test at all: its last words ("_have_fio: fio is not installed", a bad config)."""
    lines = [ln.strip() for ln in output.split("LAB-CHECK-EXIT", 1)[0].splitlines() if ln.strip()]
    return f"blktests did not start: {lines[-1][:200] if lines else 'check printed nothing'}"


def stray_lines(text: str) -> list[str]:
    """Lines that are neither a test's header or result nor its indented details: a shell error of
    check or of a test's requires() (Debian's release string once broke blktests' version parser)."""
    out = []
    for line in text.split("LAB-CHECK-EXIT", 1)[0].splitlines():
        if line.strip() and not line.startswith((" ", "\t")) and not _HEADER_RE.match(line):
            out.append(line.strip())
    return out


class BlktestsConsole:
    """check prints a test's header line when it starts and the same line with [status] when it ends."""

    def running(self, output: str) -> str | None:
        lines = [ln for ln in output.split("LAB-CHECK-EXIT", 1)[0].splitlines() if ln and not ln.startswith(" ")]
        if not lines:
            return None
        m = _HEADER_RE.match(lines[-1])
        return m.group(1) if m and not _RESULT_RE.match(lines[-1]) else None

    def counts(self, output: str) -> dict[str, int]:
        statuses = [r["status"] for r in parse_output(output).values()]
        return {s: statuses.count(s) for s in (PASS_S, FAIL_S, NOTRUN_S)}

    def kill_test(self, test: str) -> str:
        # check runs the test in a subshell of itself: kill check's children, check records a failure and goes on
        return kill_children_command(r"^(/usr)?/bin/bash \./check( |$)")


TARBALL_SKIP = (".git", "results", "config")  # config is written by the lab per run


def tree_tarball(path: Path) -> bytes:
    return suite.tree_tarball(path, "blktests", skip=TARBALL_SKIP)


class BlktestsOptions(suite.SuiteOptions):
    blktests: str = opt(None, "a blktests source tree, git repository[@REF] or git URL[@REF], built for the guest "
                        "(lab suite build); or a tree built elsewhere, used as it is (default: $LAB_BLKTESTS)",
                        metavar="PATH|URL", min_length=1, max_length=1024)
    test: list[str] = opt([], "tests to run (nvme/004), comma-separated or repeated", metavar="NAME")
    preset: str | None = opt(None, "a named list: pi (integrity metadata on the PI namespace), fabrics (NVMe-oF per "
                             "transport), nvme-pi (both; the default)", max_length=40)
    transports: list[Transport] = opt(["loop", "tcp", "rdma"], "NVMe-oF target transport for the tests that set one up: "
                                      "loop, tcp, rdma (rdma_rxe) or siw, repeatable (default: loop, tcp, rdma)",
                                      flag="--transport", min_length=1)
    timeout: Seconds = opt(43200.0, "seconds for one check run (default: 43200)", metavar="SECONDS")
    test_timeout: Seconds = opt(7200.0, "seconds one test may run, progressing or not, before it is killed (default: "
                                "7200; a hung test is found sooner, see --stall-timeout)", metavar="SECONDS")

    @model_validator(mode="before")
    @classmethod
    def _tree_from_environment(cls, data: Any) -> Any:
        return suite.tree_from_environment(data, "blktests", settings().blktests,
                                            "blktests needs a blktests tree: --blktests PATH (or a git URL), or LAB_BLKTESTS=PATH")

    @property
    def tests(self) -> list[str]:
        return self.sharded(resolve_tests(self.test, self.preset), NAME)


@register
class Blktests(Scenario):
    name = NAME
    summary = "blktests on the topology's NVMe: device tests on the PI namespace, NVMe-oF tests per transport"
    Options = BlktestsOptions
    topology = "nvme-pi"
    machines = ("vm",)
    options: BlktestsOptions

    def check(self, variant) -> None:
        self.options.tests  # noqa: B018 - names are checked before anything boots
        suite.check_known_issue_files(self.options.known_issues, KNOWN_ISSUES)
        suite.check_source("blktests", self.options.blktests, "--blktests")

    def prepare(self) -> None:
        self.tree = suite_tree("blktests", self.options.blktests, self.guest_images[0])
        missing = [t for t in self.options.tests if not (self.tree.path / "tests" / t).is_file()]
        if missing:
            raise UsageError(f"blktests tree {self.tree.path} has no test {', '.join(missing)}")

    def setup(self, ctx: Context) -> None:
        vm = ctx.guest("vm")
        suite.install_tree(ctx, vm, self.tree, "blktests", GUEST_TREE, skip=TARBALL_SKIP)
        device = ctx.namespace_device("vm")
        ns = ctx.topology.machines["vm"].nvme[0].namespaces[0]
        if any(t in PRESETS["pi"] for t in self.options.tests) and ns.pi:
            ctx.require_integrity("vm")  # the PI tests on another format than promised test nothing they claim: ERROR
        seen = vm.run(f"cat /sys/block/{device}/integrity/format", timeout=30).stdout.strip() or "none"
        # The format as known-issues entries name it: what the guest reports, and the topology's numbers
        self.format = f"{seen} {ns.lba}+{ns.ms}"
        self.ns_facets = {"format": self.format, "pi": ns.pi, "pif": ns.pif, "lba": ns.lba}
        ctx.section["test_dev"] = {"device": f"/dev/{device}", "format": self.format, "pi": ns.pi, "pif": ns.pif}
        # blktests reads the kernel's config (/boot/config-$(uname -r)) and sets up NVMe-oF targets in configfs.
        kernel = ctx.kernel("vm")
        if kernel.config is not None and kernel.config.is_file():
            vm.put(kernel.config, f"/boot/config-{kernel.release}")
        vm.run("mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config", timeout=30, check=True)
        ctx.section["runs"] = {}

    def exercise(self, ctx: Context) -> None:
        vm = ctx.guest("vm")
        fabrics = [t for t in self.options.tests if uses_transport(self.tree.path, t)]
        device_only = [t for t in self.options.tests if t not in fabrics]
        plan: list[tuple[str, list[str]]] = []
        if device_only:
            plan.append(("device", device_only))
        plan += [(tr, fabrics) for tr in self.options.transports] if fabrics else []
        for label, tests in plan:
            try:
                self._run(ctx, vm, label, tests)
            except LabError as exc:
                ctx.case(f"setup ({label})", ERROR, str(exc).splitlines()[0], facets={"transport": label})

    def _run(self, ctx: Context, vm, label: str, tests: list[str]) -> None:
        t0 = time.monotonic()
        transport = None if label == "device" else label
        config = config_text([ctx.section["test_dev"]["device"]], transport)
        run: dict[str, Any] = {"tests": tests, "config": config, "results": {}}
        ctx.section["runs"][label] = run
        if transport is not None and (missing := missing_options(ctx, transport)):
            self._not_in_kernel(ctx, run, label, tests, missing)
            return

        hung: dict[str, float] = {}
        seen = [""]  # the output so far

        def keep(output: str) -> None:  # finished tests (and hung ones) in the results as they end
            seen[0] = output
            ctx.sub.write(ctx.path(f"{label}/check.out"), output)
            run["results"] = parse_output(output)
            for test, seconds in hung.items():
                run["results"][test] = {"status": TIMEOUT_S, "details": [f"killed after {seconds:.0f} s"]}

        def killed(test: str, seconds: float) -> None:
            hung[test] = seconds
            keep(seen[0])

        watched = run_monitored(vm, check_script(GUEST_TREE, config, tests), BlktestsConsole(), f"blktests {label}",
                                len(tests), self.options.test_timeout, self.options.timeout, on_output=keep, on_kill=killed,
                                stall_timeout=self.options.stall_timeout)
        keep(watched.output)
        results = run["results"]
        vm.run(f"cd {GUEST_TREE} && tar -czf /root/blktests-results-{label}.tar.gz results 2>/dev/null", timeout=120)
        try:
            vm.get(f"/root/blktests-results-{label}.tar.gz", ctx.sub.path / ctx.path(f"{label}/results.tar.gz"))
        except LabError:  # the results tree is a bonus; the console output is kept anyway
            LOG.debug("blktests %s: no results tarball from the guest", label, exc_info=True)
        if not results and not watched.timed_out_tests:
            ctx.case(f"check ({label})", ERROR, startup_failure(watched.output), facets={"transport": label})
            return
        statuses = {t: results.get(t, {}).get("status", "not reported") for t in tests}
        stray = stray_lines(watched.output)  # what blktests itself complained of: "common/rc: line 274: read: 4deb13: value too great"
        check_run = suite.CheckRun(label, tests, statuses, {t: results.get(t, {}).get("details", []) for t in tests},
                                   dict(watched.kill_reasons), stray[0] if stray else "")
        known = {t: self._known(ctx, t, label) for t in tests}
        run["statuses"] = statuses
        run.update(suite.record(ctx, check_run, known, "vm", kernel_log.BLKTESTS_MARKER, {"transport": label, **self.ns_facets},
                                self.options.rerun, lambda failed: self._rerun(ctx, vm, label, config, failed)))
        run["seconds"] = round(time.monotonic() - t0, 1)  # reruns included

    def kernel_log_rules(self, ctx: Context, case: str, facets: dict[str, Any]) -> Sequence[kernel_log.Rule]:
        return suite.kernel_log_rules(facets.get("test"))

    def _not_in_kernel(self, ctx: Context, run: dict[str, Any], label: str, tests: list[str], missing: list[str]) -> None:
        """A transport the kernel lacks: its tests do not run, and the reason names the options
        (blktests alone would say only "driver siw is not available")."""
        why = (f"the kernel has no {', '.join('CONFIG_' + o for o in missing)} (the {label} transport needs it)"
               + ("; Debian's kernels build rdma_rxe only: use --transport rdma, or a kernel built with the "
                  "nfs-rdma fragment and --config nvmet" if "RDMA_SIW" in missing else ""))
        run.update(results={t: {"status": NOTRUN_S, "details": [why]} for t in tests}, statuses=dict.fromkeys(tests, NOTRUN_S),
                   rerun={}, seconds=0.0, classes=dict.fromkeys(tests, NOTRUN))
        verdict, expected = class_verdict(NOTRUN)
        for test in tests:
            ctx.case(f"{test} ({label})", verdict, f"not run: {why}", facets={"transport": label, "test": test, **self.ns_facets},
                     expected=expected, status=NOTRUN_S, classification=NOTRUN)
        suite.require_a_test_ran(ctx, label, run["classes"], why, {"transport": label, **self.ns_facets})

    def _known(self, ctx: Context, test: str, transport: str):
        facets = {"transport": transport, "test": test, **self.ns_facets}
        return suite.known_failure(self.options.known_issues, KNOWN_ISSUES, facets, ctx.release("vm"))

    def _rerun(self, ctx: Context, vm, label: str, config: str, failed: list[str]) -> dict[str, str]:
        status = {t: FAIL_S for t in failed}
        for attempt in range(1, self.options.rerun + 1):
            still = [t for t, s in status.items() if s != PASS_S]
            if not still:
                break
            ctx.note(f"{label}: running {len(still)} new failure(s) again ({attempt}/{self.options.rerun}): {' '.join(still)}")
            watched = run_monitored(vm, check_script(GUEST_TREE, config, still), BlktestsConsole(),
                                    f"blktests {label} rerun {attempt}", len(still), self.options.test_timeout,
                                    self.options.timeout, stall_timeout=self.options.stall_timeout)
            ctx.sub.write(ctx.path(f"{label}/rerun{attempt}.out"), watched.output)
            found = parse_output(watched.output)
            status.update({t: found[t]["status"] for t in still if t in found})
        return status

    def table(self, results: dict[str, Any]) -> str:
        lines = []
        for label, sub in results.get("subruns", {}).items():
            dev = sub.get("test_dev", {})
            lines.append(f"{label} ({sub.get('release', '?')}), TEST_DEV {dev.get('device', '?')} {dev.get('format', '')}")
            runs = sub.get("runs", {})
            tests = list(dict.fromkeys(t for r in runs.values() for t in r.get("tests", [])))
            if not tests:
                continue
            lines.append(f"  {'test':12}" + "".join(f"{r:>16}" for r in runs))
            for test in tests:
                lines.append(f"  {test:12}" + "".join(
                    f"{(r.get('classes') or r.get('statuses') or {}).get(test, '-'):>16}" for r in runs.values()))
            lines.append("  " + "; ".join(f"{r}: {v.get('seconds', 0):.0f} s" for r, v in runs.items()))
        lines += side_by_side(results)
        return "\n".join(lines) if lines else "no kernel was run"
