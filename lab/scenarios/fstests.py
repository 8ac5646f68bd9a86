"""fstests (xfstests) against the NFS mount of nfs-rdma-pair, per transport: the user's tree is copied
into the client, configured for FSTYP=nfs with the transport's mount options, and `./check` runs
the test list; the result is a pass/fail/notrun table per test and transport.

The parts that do not need a guest (the check script, the result parser, the table) are plain
functions, tested against a tiny fake fstests tree."""

from __future__ import annotations

import logging
import re
import shlex
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

from pydantic import model_validator

from lab import kernel_log
from lab.errors import LabError, UsageError
from lab.scenarios import nfs
from lab.paths import scenarios_dir
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.options import Seconds, opt
from lab.scenarios.verdict import ERROR
from lab.settings import settings
from lab.scenarios.suite import (FAIL_S, NOTRUN_S, PASS_S, TIMEOUT_S, side_by_side)
from lab.suites.build import suite_tree
from lab.scenarios import suite
from lab.suites.monitor import kill_tree_command, run_monitored

LOG = logging.getLogger(__name__)

NAME = "nfs-fstests"
# Named test lists (--preset).
PRESETS = {
    # Direct I/O while the buffer changes (mmap, splice, fsx): what stable pages on a PI device break
    # before the bounce series (seed 003), which says it fixes all such failures but generic/095.
    # generic/761 (dio-writeback-race) is the one that tells the kernels apart here: guard errors on
    # its writes before 7.0.
    "pi-dio": "generic/091 generic/095 generic/247 generic/263 generic/465 generic/708 generic/761".split(),
    # The list the NFS direct-I/O series (seed 000) was tested with, over RDMA and TCP.
    "nfs-dio": ("generic/091 generic/130 generic/139 generic/143 generic/154 generic/155 generic/183 generic/188 "
                "generic/190 generic/196 generic/198 generic/203 generic/214 generic/240 generic/263 generic/287 "
                "generic/290 generic/292 generic/330 generic/444 generic/450 generic/451 generic/586 generic/647 "
                "generic/708 generic/729 generic/760").split(),
}
DEFAULT_PRESET = "nfs-dio"
GUEST_TREE = "/root/fstests"
TEST_DIR = "/mnt/fstests-test"
SCRATCH_MNT = "/mnt/fstests-scratch"
_TEST_RE = suite.TEST_NAME_RE
_LINE_RE = re.compile(r"^([a-z0-9_-]+/\d{3,})\s+(.*)$")


# Tests that race buffered or mapped reads with direct writes on TEST_DEV: on a PI namespace QEMU's
# NVMe may return a block's new PI with its old data, and the READ is rejected (a fact of the
# emulation, seen on both kernels while both tests pass).
READ_RACES = {"generic/451": "buffered reads race AIO direct writes", "generic/617": "mapped reads race direct writes"}


def resolve_tests(tests: list[str] | None, preset: str | None) -> list[str]:
    return suite.resolve_tests(tests, preset, PRESETS, DEFAULT_PRESET, "generic/091")


def local_config(server: str, mount_options: str) -> str:
    return "\n".join([
        "export FSTYP=nfs",
        f"export TEST_DEV={server}:{nfs.EXPORT}/test",
        f"export TEST_DIR={TEST_DIR}",
        f"export SCRATCH_DEV={server}:{nfs.EXPORT}/scratch",
        f"export SCRATCH_MNT={SCRATCH_MNT}",
        f"export NFS_MOUNT_OPTIONS={shlex.quote('-o ' + mount_options)}",
        "",
    ])


def check_script(tree: str, config: str, tests: list[str]) -> str:
    """What runs in the client (detached, watched by lab.suites.monitor): write local.config, run
    check with an xunit report, print it."""
    return f"""cd {shlex.quote(tree)} || exit 97
cat > local.config <<'LAB_EOF'
{config}LAB_EOF
mkdir -p {TEST_DIR} {SCRATCH_MNT}
rm -rf results
./check -R xunit {shlex.join(tests)}
rc=$?
echo "LAB-CHECK-EXIT $rc"
for x in results/result.xml results/*/result.xml; do
    [ -f "$x" ] && {{ echo LAB-XUNIT-BEGIN; cat "$x"; echo; echo LAB-XUNIT-END; break; }}
done
exit 0
"""


def parse_check_output(text: str) -> dict[str, str]:
    """Per-test status from check's console output: pass, fail or notrun. The summary lines
    (Not run:, Failures:) override a test's own line."""
    status: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _LINE_RE.match(line)
        if m:
            test, rest = m.group(1), m.group(2)
            if "no such test" in rest:  # a name the tree does not have: left "not reported" (an ERROR)
                continue
            if rest.startswith("[not run]") or rest.startswith("[expunged]"):
                status[test] = NOTRUN_S
            elif (rest.startswith("- output mismatch") or rest.startswith("[failed") or "inconsistent" in rest
                  or "_check_" in rest or rest.startswith("- ")):
                status[test] = FAIL_S
            elif re.match(r"^(\d+s\s*\.\.\.\s*)?\d+s$", rest) or re.match(r"^\d+s\s*\.\.\.\s*\d+s", rest):
                status.setdefault(test, PASS_S)
            continue
        for prefix, value in (("Not run:", NOTRUN_S), ("Failures:", FAIL_S)):
            if line.startswith(prefix):
                for test in line[len(prefix):].split():
                    if _TEST_RE.match(test):
                        status[test] = value
    return status


def _xunit_cases(xml_text: str) -> list[ET.Element]:
    """The report's testcase elements that name a test ([] when it is not XML)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return []
    return [case for case in root.iter("testcase") if _TEST_RE.match(case.get("name", ""))]


def parse_xunit(xml_text: str) -> dict[str, str]:
    """Per-test status from fstests' xunit report (check -R xunit)."""
    status = {}
    for case in _xunit_cases(xml_text):
        if case.find("skipped") is not None:
            status[case.get("name", "")] = NOTRUN_S
        elif case.find("failure") is not None or case.find("error") is not None:
            status[case.get("name", "")] = FAIL_S
        else:
            status[case.get("name", "")] = PASS_S
    return status


def xunit_durations(xml_text: str) -> dict[str, int]:
    """Seconds per test from the xunit report, which times failures too (check's console does not)."""
    return {case.get("name", ""): int(case.get("time", "")) for case in _xunit_cases(xml_text)
            if case.get("time", "").isdigit() and case.find("skipped") is None}


def results_from(output: str, tests: list[str]) -> dict:
    """Statuses of every requested test (missing = not reported), from xunit when check wrote it."""
    xunit = ""
    if "LAB-XUNIT-BEGIN" in output:
        xunit = output.split("LAB-XUNIT-BEGIN", 1)[1].split("LAB-XUNIT-END", 1)[0]
    console = output.split("LAB-CHECK-EXIT", 1)[0]
    exit_m = re.search(r"LAB-CHECK-EXIT (\d+)", output)
    found = parse_check_output(console)
    found.update(parse_xunit(xunit))
    statuses = {t: found.get(t, "not reported") for t in tests}
    details = check_details(console)
    return {"statuses": statuses, "check_exit": int(exit_m.group(1)) if exit_m else None, "source": "xunit" if xunit else "console",
            "seconds_per_test": {**durations(console), **xunit_durations(xunit)}, "details": {t: d for t, d in details.items() if t in statuses}}


def check_details(console: str, limit: int = 8) -> dict[str, list[str]]:
    """What check printed under a test that did not pass: the notrun reason on its line, the first
    lines of the .out.bad diff indented below it (the whole diff stays in the results tarball)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for raw in console.splitlines():
        m = _LINE_RE.match(raw.strip()) if not raw.startswith((" ", "\t")) else None
        if m:
            current = m.group(1)
            rest = m.group(2).strip()
            if rest.startswith("[not run]"):
                out[current] = [rest.removeprefix("[not run]").strip()]
            elif rest.startswith("- "):
                out[current] = [rest]
            continue
        if current and raw.startswith((" ", "\t")) and current in out and len(out[current]) < limit:
            line = raw.strip()
            # the diff's own headers and context say nothing a reader needs in one line: its +/- lines do
            if not line.startswith(("--- ", "+++ ", "@@", "QA output created by", "...", "(Run 'diff")):
                out[current].append(line)
        elif not raw.startswith((" ", "\t")):
            current = None
    return out


def durations(console: str) -> dict[str, int]:
    """Seconds per finished test from check's lines ("generic/091 5s ...  12s": the last figure is this run's)."""
    out = {}
    for raw in console.splitlines():
        m = _LINE_RE.match(raw.strip())
        if m:
            secs = re.findall(r"(\d+)s\b", m.group(2))
            if secs and not m.group(2).startswith(("[", "-")):
                out[m.group(1)] = int(secs[-1])
    return out


_FATAL_RE = re.compile(r"(not found|[Ee]rror|cannot|failed|[Nn]o such|must be|not set|not supported|[Uu]sage)")


def startup_failure(output: str) -> str:
    """The message check stopped with when it ran no test at all ("bc not found", "common/config:
    Error: ..."): the first line that reads like an error, else the last line it printed."""
    console = output.split("LAB-CHECK-EXIT", 1)[0]
    lines = [ln.strip() for ln in console.splitlines() if ln.strip() and not ln.startswith("LAB-")]
    for line in lines:
        if _FATAL_RE.search(line):
            return line[:200]
    return lines[-1][:200] if lines else "check printed nothing"


class FstestsConsole:
    """What check's console says while it runs: it prints a test's name when the test starts and the
    rest of the line when it ends, so an unfinished last line names the running test."""

    def running(self, output: str) -> str | None:
        last = output.split("LAB-CHECK-EXIT", 1)[0].rsplit("\n", 1)[-1].strip()
        m = re.match(r"^([a-z0-9_-]+/\d{3,})\b", last)
        return m.group(1) if m else None

    def counts(self, output: str) -> dict[str, int]:
        values = list(parse_check_output(output.split("LAB-CHECK-EXIT", 1)[0]).values())
        return {s: values.count(s) for s in (PASS_S, FAIL_S, NOTRUN_S)}

    def kill_test(self, test: str) -> str:
        # check runs each test as `bash -c "...; exec ./tests/generic/091"`: bash execs it by its full path
        return kill_tree_command(f"/tests/{test}$")


def tree_tarball(path: Path) -> bytes:
    return suite.tree_tarball(path, "fstests")


class FstestsCommonOptions(suite.SuiteOptions):
    fstests: str = opt(None, "an fstests source tree, git repository[@REF] or git URL[@REF], built for the guest "
                       "(lab suite build); or a tree built elsewhere, used as it is (default: $LAB_FSTESTS)",
                       metavar="PATH|URL", min_length=1, max_length=1024)
    test: list[str] = opt([], "tests to run (generic/091), comma-separated or repeated", metavar="NAME")
    preset: str | None = opt(None, "a named test list: nfs-dio (the 27 tests the NFS direct-I/O series was tested "
                             "with; nfs-fstests' default), pi-dio (buffers changed during direct I/O; fstests' default)",
                             max_length=40)
    timeout: Seconds = opt(86400.0, "seconds for one whole check run (default: 86400; under TCG the seed's 27 tests "
                           "over NFS take hours)", metavar="SECONDS")
    test_timeout: Seconds = opt(14400.0, "seconds one test may run, progressing or not, before it is killed and check "
                                "moves on (default: 14400; a hung test is found sooner, see --stall-timeout)",
                                metavar="SECONDS")

    @model_validator(mode="before")
    @classmethod
    def _tree_from_environment(cls, data: Any) -> Any:
        return suite.tree_from_environment(data, "fstests", settings().fstests,
                                            "fstests needs a tree: --fstests PATH (or a git URL), or LAB_FSTESTS=PATH")

    default_preset: ClassVar[str] = DEFAULT_PRESET
    scenario_name: ClassVar[str] = NAME  # whose recorded durations balance the shards

    @property
    def tests(self) -> list[str]:
        return self.sharded(resolve_tests(self.test, self.preset or (None if self.test else self.default_preset)), self.scenario_name)


class FstestsOptions(FstestsCommonOptions):
    transports: list[nfs.Transport] = opt(["tcp", "rdma"], "tcp or rdma, repeatable (default: both)", flag="--transport",
                                          min_length=1)
    nfs_version: nfs.Version = opt("4.2", "NFS version (default: 4.2)")


class FstestsSuite(Scenario):
    """What both fstests scenarios share: the tree built and installed in one guest, its libraries
    checked, check run per run label (a transport, a section) with progress and timeouts, reruns and
    classes. Subclasses say where TEST_DEV is."""

    runs_key: ClassVar[str] = "runs"  # where each label's results go in the sub-run's section
    facet: ClassVar[str] = "run"       # the known-issues key that labels match (transport, section)
    runner: ClassVar[str] = "vm"       # the machine that runs check
    options: FstestsCommonOptions
    extra_facets: dict[str, Any] = {}  # more keys known-issues entries may match (the PI format)

    def check(self, variant) -> None:
        self.options.tests  # noqa: B018 - names are checked here, before anything boots
        suite.check_known_issue_files(self.options.known_issues, self.known_issues_file)
        suite.check_source("fstests", self.options.fstests, "--fstests")

    def prepare(self) -> None:
        self.tree = suite_tree("fstests", self.options.fstests, self.guest_images[0])

    def install_tree(self, ctx: Context) -> None:
        suite.install_tree(ctx, ctx.guest(self.runner), self.tree, "fstests", GUEST_TREE)
        ctx.section[self.runs_key] = {}

    def run_check(self, ctx: Context, label: str, config: str) -> dict[str, Any]:
        """check with this local.config, watched; then reruns and one case per test."""
        guest = ctx.guest(self.runner)
        t0 = time.monotonic()
        tests = self.options.tests
        parsed: dict[str, Any] = {"statuses": {t: "not reported" for t in tests}, "config": config}
        ctx.section[self.runs_key][label] = parsed

        def keep(output: str) -> None:  # every finished test is on disk and in the results as it ends
            ctx.sub.write(ctx.path(f"{label}/check.out"), output)
            parsed.update(results_from(output, tests))
            for test in parsed.get("timed_out", {}):
                parsed["statuses"][test] = TIMEOUT_S

        def hung(test: str, seconds: float) -> None:
            parsed.setdefault("timed_out", {})[test] = seconds
            parsed["statuses"][test] = TIMEOUT_S

        watched = run_monitored(guest, check_script(GUEST_TREE, config, tests), FstestsConsole(), f"fstests {label}",
                                len(tests), self.options.test_timeout, self.options.timeout, on_output=keep, on_kill=hung,
                                stall_timeout=self.options.stall_timeout)
        parsed["kill_reasons"] = dict(watched.kill_reasons)
        output = watched.output
        keep(output)
        if watched.run_timed_out:
            ctx.note(f"{label}: check ran past --timeout {self.options.timeout:.0f} s and was killed; finished tests kept")
        guest.run(f"cd {GUEST_TREE} && tar -czf /root/results-{label}.tar.gz results 2>/dev/null", timeout=120)
        try:
            guest.get(f"/root/results-{label}.tar.gz", ctx.sub.path / ctx.path(f"{label}/results.tar.gz"))
        except LabError:  # the results tree is a bonus; the console output is kept anyway
            LOG.debug("fstests %s: no results tarball from the guest", label, exc_info=True)
        parsed["seconds"] = round(time.monotonic() - t0, 1)
        if all(status == "not reported" for status in parsed["statuses"].values()) and not watched.timed_out_tests:
            # check stopped before its first test: one ERROR with its own words, not a column of "not reported"
            fatal = startup_failure(output)
            parsed["fatal"] = fatal
            ctx.case(f"check ({label})", ERROR, f"fstests did not start (check exited {parsed['check_exit']}): {fatal}",
                     facets={self.facet: label})
            return parsed
        kill_reasons = dict(parsed.get("kill_reasons", {}))
        for test, seconds in parsed.get("timed_out", {}).items():
            kill_reasons.setdefault(test, f"still running after {seconds:.0f} s")
        run = suite.CheckRun(label, tests, parsed["statuses"], parsed.get("details", {}), kill_reasons)
        known = {t: self._known(ctx, t, label) for t in tests}
        parsed.update(suite.record(ctx, run, known, self.runner, kernel_log.FSTESTS_MARKER, {self.facet: label, **self.extra_facets},
                                   self.options.rerun, lambda failed: self._rerun(ctx, label, config, failed)))
        parsed["seconds"] = round(time.monotonic() - t0, 1)  # reruns included
        return parsed

    def kernel_log_rules(self, ctx: Context, case: str, facets: dict[str, Any]) -> Sequence[kernel_log.Rule]:
        return suite.kernel_log_rules(facets.get("test"), READ_RACES)

    def _known(self, ctx: Context, test: str, label: str):
        facets = {self.facet: label, "test": test, **self.extra_facets}
        return suite.known_failure(self.options.known_issues, self.known_issues_file, facets, ctx.release(self.runner))

    @property
    def known_issues_file(self) -> Path:
        return scenarios_dir() / self.name / "known-issues.toml"

    def _rerun(self, ctx: Context, label: str, config: str, failed: list[str]) -> dict[str, str]:
        """Failures nobody knew of, run again: a test that passes now is a flake, not a regression."""
        status: dict[str, str] = {t: FAIL_S for t in failed}
        for attempt in range(1, self.options.rerun + 1):
            still = [t for t, s in status.items() if s != PASS_S]
            if not still:
                break
            ctx.note(f"{label}: running {len(still)} new failure(s) again ({attempt}/{self.options.rerun}): {' '.join(still)}")
            watched = run_monitored(ctx.guest(self.runner), check_script(GUEST_TREE, config, still), FstestsConsole(),
                                    f"fstests {label} rerun {attempt}", len(still), self.options.test_timeout,
                                    self.options.timeout, stall_timeout=self.options.stall_timeout)
            ctx.sub.write(ctx.path(f"{label}/rerun{attempt}.out"), watched.output)
            status.update(results_from(watched.output, still)["statuses"])
        return status

    def table(self, results: dict[str, Any]) -> str:
        lines = []
        for label, k in results.get("subruns", {}).items():
            runs = k.get(self.runs_key, {})
            lines.append(f"{label} ({k.get('release', '?')})" + (f", {k['devices']}" if k.get("devices") else ""))
            if not runs:
                continue
            tests = list(next(iter(runs.values())).get("statuses", {}))
            lines.append(f"  {'test':14}" + "".join(f"{t:>14}" for t in runs))
            for test in tests:
                lines.append(f"  {test:14}" + "".join(
                    f"{runs[t].get('classes', runs[t]['statuses']).get(test, '-'):>14}" for t in runs))
            totals = []
            for t, v in runs.items():
                values = list(v["statuses"].values())
                counts = {s: values.count(s) for s in (PASS_S, FAIL_S, NOTRUN_S, TIMEOUT_S)}
                missing = len(values) - sum(counts.values())
                totals.append(f"{t}: {counts[PASS_S]} pass, {counts[FAIL_S]} fail, {counts[NOTRUN_S]} notrun"
                              + (f", {counts[TIMEOUT_S]} timed out" if counts[TIMEOUT_S] else "")
                              + (f", {missing} not reported" if missing else "")
                              + (f" in {v['seconds']:.0f} s" if v.get("seconds") else ""))
            lines.append("  " + "; ".join(totals))
        lines += side_by_side(results, self.runs_key)
        return "\n".join(lines) if lines else "no kernel was run"


NFS_EXPORT_SIZE = "16G"  # the server's namespace, holding both exports (test, scratch)
LOCAL_DEV_SIZE = "8G"  # each of TEST_DEV and SCRATCH_DEV


@register
class NfsFstests(FstestsSuite):
    name = NAME
    summary = "an fstests tree against the NFS mount, per transport: pass/fail/notrun per test"
    Options = FstestsOptions
    topology = "nfs-rdma-pair"
    machines = ("server", "client")
    runs_key = "transports"
    facet = "transport"
    runner = "client"
    options: FstestsOptions

    def variants(self):
        variants = super().variants()
        for v in variants:
            # fstests sizes files by the file system's block size, which NFS reports as its wsize
            # (1 MiB): generic/154 writes 4 x 2000 blocks and met ENOSPC on the 1 GiB default here.
            # The namespace image is sparse: only what the tests write takes host disk.
            v.params.setdefault("ns_size", NFS_EXPORT_SIZE)
        return variants

    def setup(self, ctx: Context) -> None:
        nfs.setup_server(ctx.guest("server"), f"/dev/{ctx.namespace_device('server')}", subdirs=("test", "scratch"))
        self.install_tree(ctx)

    def exercise(self, ctx: Context) -> None:
        client = ctx.guest("client")
        for transport in self.options.transports:
            try:
                server = nfs.server_address(ctx.lab)
                opts = nfs.mount_options(self.options.nfs_version, transport)
                # Mount TEST_DEV ourselves first: fstests reuses it, and /proc/mounts proves the transport.
                line = nfs.mount(client, server, self.options.nfs_version, transport, export=f"{nfs.EXPORT}/test",
                                 mountpoint=TEST_DIR)
                parsed = self.run_check(ctx, transport, local_config(server, opts))
                parsed["mount"] = line
            except LabError as exc:
                ctx.case(f"setup ({transport})", ERROR, str(exc).splitlines()[0], facets={"transport": transport})
            client.run(f"umount -f {SCRATCH_MNT} 2>/dev/null; umount -f {TEST_DIR} 2>/dev/null", timeout=120)


Section = Literal["xfs", "ext4"]
MKFS = {"xfs": "mkfs.xfs -f -q", "ext4": "mkfs.ext4 -F -q"}


def section_config(section: str, test_dev: str, scratch_dev: str) -> str:
    return "\n".join([
        f"export FSTYP={section}",
        f"export TEST_DEV={test_dev}",
        f"export TEST_DIR={TEST_DIR}",
        f"export SCRATCH_DEV={scratch_dev}",
        f"export SCRATCH_MNT={SCRATCH_MNT}",
        "",
    ])


class LocalFstestsOptions(FstestsCommonOptions):
    sections: list[Section] = opt(["xfs"], "a local file system section: xfs or ext4, repeatable (default: xfs)",
                                  flag="--section", min_length=1)
    default_preset: ClassVar[str] = "pi-dio"
    scenario_name: ClassVar[str] = "fstests"


@register
class LocalFstests(FstestsSuite):
    name = "fstests"
    summary = "an fstests tree on XFS or ext4 over the PI namespaces (TEST_DEV and SCRATCH_DEV), per section"
    Options = LocalFstestsOptions
    topology = "nvme-pi"
    machines = ("vm",)
    runs_key = "sections"
    facet = "section"
    runner = "vm"
    options: LocalFstestsOptions

    def variants(self):
        variants = super().variants()
        for v in variants:  # TEST_DEV and SCRATCH_DEV: two namespaces of the same format, unless the user chose
            v.params.setdefault("namespaces", 2)
            v.params.setdefault("ns_size", LOCAL_DEV_SIZE)  # sparse; room for the tests that size by free space
        return variants

    def check(self, variant) -> None:
        super().check(variant)
        machine = variant.rendered.topology.machines.get("vm") if variant.rendered else None
        if machine is None or not machine.nvme or len(machine.nvme[0].namespaces) < 2:
            raise UsageError("fstests needs two namespaces on vm's first NVMe controller (TEST_DEV, SCRATCH_DEV): "
                             "-p namespaces=2 on nvme-pi")

    def setup(self, ctx: Context) -> None:
        ctrl = ctx.topology.machines["vm"].nvme[0]
        self.devices = [f"/dev/{ctx.namespace_device('vm', 0, n)}" for n in (0, 1)]
        fmt = ctx.guest("vm").run(f"cat /sys/block/{self.devices[0][5:]}/integrity/format", timeout=30).stdout.strip()
        ns = ctrl.namespaces[0]
        self.extra_facets = {"pi": ns.pi, "pif": ns.pif, "lba": ns.lba}
        ctx.section["devices"] = (f"TEST_DEV {self.devices[0]}, SCRATCH_DEV {self.devices[1]}: {fmt or 'no PI'} "
                                  f"({ns.lba}+{ns.ms}, pi={ns.pi}, pif={ns.pif})")
        self.install_tree(ctx)

    def exercise(self, ctx: Context) -> None:
        vm = ctx.guest("vm")
        for section in self.options.sections:
            try:
                # TEST_DEV made and mounted here: check expects a file system of FSTYP on it and reuses the mount
                vm.run(f"umount {TEST_DIR} {SCRATCH_MNT} 2>/dev/null; {MKFS[section]} {self.devices[0]} && "
                       f"mkdir -p {TEST_DIR} && mount {self.devices[0]} {TEST_DIR}", timeout=600, check=True)
                self.run_check(ctx, section, section_config(section, *self.devices))
            except LabError as exc:
                ctx.case(f"setup ({section})", ERROR, str(exc).splitlines()[0], facets={"section": section})
            vm.run(f"umount {SCRATCH_MNT} 2>/dev/null; umount {TEST_DIR} 2>/dev/null", timeout=120)
