"""What fstests and blktests share, so each suite's scenario says only what differs: test lists
from names and presets, the source checked before anything boots, the tree packed for the guest,
the known-issues entries (validated, with signatures) that apply to a test, each test's class read
as a kdevops baseline reads it (its status against the known issues and the rerun of a failure
nobody knew of; the class gives the verdict CI acts on), the kernel log cut per test, and the ERROR
of a transport or section that tested nothing."""

from __future__ import annotations

import io
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pydantic import model_validator

from lab import kernel_log
from lab.errors import LabError, UsageError
from lab.scenarios.expect import Expectation, expectation_for, load_rules
from lab.scenarios.options import ScenarioOptions, Seconds, opt
from lab.scenarios.verdict import ERROR, FAIL, NOT_APPLICABLE, PASS
from lab.scenarios.verdict import FLAKY as FLAKY_V
from lab.suites.build import SUITES, check_layout
from lab.suites.source import is_bare_repository, is_url, split_ref

LOG = logging.getLogger(__name__)


# -- classes ------------------------------------------------------------------------------------------
PASS_S, FAIL_S, NOTRUN_S, TIMEOUT_S = "pass", "fail", "notrun", "timeout"

STATUS_VERDICT = {PASS_S: PASS, FAIL_S: FAIL, NOTRUN_S: NOT_APPLICABLE}

PASSED, KNOWN, NEW, FIXED, FLAKY, NOTRUN, UNREPORTED, HUNG = ("pass", "known failure", "new failure", "fixed", "flaky",
                                                             "notrun", "not reported", "timed out")


def classify(status: str, known_failure: bool, rerun: str | None = None) -> str:
    """A test's class from its status, whether a known-issues entry says it fails on this kernel,
    and its status when a failure nobody knew of was run again."""
    if status == NOTRUN_S:
        return NOTRUN
    if status == PASS_S:
        return FIXED if known_failure else PASSED
    if status == FAIL_S:
        if known_failure:
            return KNOWN
        return FLAKY if rerun == PASS_S else NEW
    if status == TIMEOUT_S:  # killed after --test-timeout: a hang is new even for a test known to fail
        return HUNG
    return UNREPORTED


def class_verdict(cls: str) -> tuple[str, str]:
    """(verdict, expected verdict) so that CI's outcome follows the class: a known failure is an
    expected FAIL, a new failure a regression, a fix a finding, a flake its own verdict (FLAKY)."""
    return {PASSED: (PASS, PASS), KNOWN: (FAIL, FAIL), NEW: (FAIL, PASS), FIXED: (PASS, FAIL), FLAKY: (FLAKY_V, PASS),
            NOTRUN: (NOT_APPLICABLE, PASS), UNREPORTED: (ERROR, PASS), HUNG: (FAIL, PASS)}[cls]


def test_verdict(status: str) -> tuple[str, str]:
    """A test's verdict: pass and fail as they are, notrun not applicable, unreported an ERROR."""
    if status in STATUS_VERDICT:
        return STATUS_VERDICT[status], status
    return ERROR, "check did not report this test (it stopped, timed out or crashed before it)"


def side_by_side(results: dict[str, Any], runs_key: str = "runs") -> list[str]:
    """One table of every sub-run's runs (kernel x PI format x transport or section): a row per test,
    a column per (sub-run, run), each cell the test's class, so a matrix reads across."""
    columns: list[tuple[str, str, dict[str, Any]]] = []
    for label, sub in results.get("subruns", {}).items():
        for run, data in (sub.get(runs_key) or {}).items():
            columns.append((label, run, data))
    if len(columns) < 2 or len(results.get("subruns", {})) < 2:
        return []
    tests = list(dict.fromkeys(t for _, _, d in columns for t in (d.get("tests") or d.get("statuses") or {})))
    if not tests:
        return []
    width = min(28, max(15, *(len(label) + 2 for label, _, _ in columns), *(len(run) + 2 for _, run, _ in columns)))
    lines = ["side by side:", f"  {'':14}" + "".join(f"{label[:width - 1]:>{width}}" for label, _, _ in columns),
             f"  {'test':14}" + "".join(f"{run:>{width}}" for _, run, _ in columns)]
    for test in tests:
        cells = []
        for _, _, data in columns:
            value = (data.get("classes") or {}).get(test) or (data.get("statuses") or {}).get(test, "-")
            cells.append(f"{str(value)[:width - 1]:>{width}}")
        lines.append(f"  {test:14}" + "".join(cells))
    return lines


# -- lists, sources, trees, known issues, kernel logs ---------------------------------------------------
TEST_NAME_RE = re.compile(r"^[a-z0-9_-]+/\d{3,}$")


def resolve_tests(tests: Sequence[str] | None, preset: str | None, presets: Mapping[str, Sequence[str]],
                  default: str, example: str) -> list[str]:
    """The test names a run asks for: a preset's, then each --test (comma-separated or repeated),
    else the default preset; each name checked (they reach a shell in the guest)."""
    names: list[str] = []
    if preset:
        if preset not in presets:
            raise UsageError(f"--preset {preset!r}: known presets: {', '.join(presets)}")
        names += presets[preset]
    for item in tests or []:
        names += item.replace(",", " ").split()
    if not names:
        names = list(presets[default])
    for n in names:
        if not TEST_NAME_RE.match(n):
            raise UsageError(f"test {n!r}: expected names like {example}")
    return list(dict.fromkeys(names))


def check_source(suite: str, spec: str, flag: str) -> None:
    """A local source must exist and, when it is a tree on disk, look like the suite; a URL or a
    repository is read later, at its commit."""
    where, ref = split_ref(spec)
    if is_url(where):
        return
    path = Path(where).expanduser()
    if not path.is_dir():
        raise UsageError(f"{flag} {spec}: no such directory")
    if ref is None and not is_bare_repository(path):
        check_layout(SUITES[suite], path, f"{flag} {spec}")


# The keys a known-issues entry may match: the suite's facets and the topology's namespace format.
SUITE_FACETS = frozenset({"test", "transport", "section", "format", "pi", "pif", "lba"})


def check_known_issue_files(files: Sequence[str], shipped: Path | None = None) -> None:
    """Every known-issues file (the user's and the shipped one) validated before anything boots."""
    for f in files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise UsageError(f"--known-issues {f}: no such file")
        load_rules(path, SUITE_FACETS, ("test",))
    if shipped is not None:
        load_rules(shipped, SUITE_FACETS, ("test",))


def known_failure(files: Sequence[str], shipped: Path, facets: dict[str, Any], release: str) -> Expectation | None:
    """The entry saying this test fails here: the user's files first, then the shipped one. An entry
    that expects anything but FAIL says the test is fine here."""
    for path in [Path(f).expanduser() for f in files] + [shipped]:
        rule = expectation_for(path, facets, release, SUITE_FACETS, ("test",))
        if rule is not None:
            return rule if rule.verdict == FAIL else None
    return None


def failing_differently(known: dict[str, Expectation | None], failed: Sequence[str],
                        evidence: Callable[[str], str]) -> dict[str, str]:
    """Known failures whose output and kernel log do not match their entry's signature: they fail
    differently, so they are new. Removed from `known`; test -> the signature they missed."""
    out: dict[str, str] = {}
    for test in failed:
        entry = known.get(test)
        if entry is not None and not entry.fails_the_same_way(evidence(test)):
            out[test] = entry.signature
            known[test] = None
    return out


def tree_tarball(path: Path, arcname: str, skip: Sequence[str] = (".git", "results")) -> bytes:
    """The tree as a gzip tarball for the guest, without git metadata, old results and object files."""
    buf = io.BytesIO()

    def keep(info_: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info_.name).parts
        if len(parts) > 1 and parts[1] in skip or info_.name.endswith((".o", ".lo")):
            return None
        return info_

    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(str(path), arcname=arcname, filter=keep)
    return buf.getvalue()


class SuiteOptions(ScenarioOptions):
    """The options every suite scenario has besides its tree and test list."""

    known_issues: list[str] = opt([], "a known-issues TOML file ([[expect]] entries: test, transport or section, "
                                  "kernel_from, kernel_below, verdict = \"FAIL\", why, link), repeatable; read before the "
                                  "shipped one", flag="--known-issues", metavar="FILE")
    rerun: int = opt(1, "times a failure not in the known issues is run again before it is called new (default: 1)",
                     ge=0, le=5)
    stall_timeout: Seconds = opt(900.0, "seconds a test may go without progress (no CPU time, no I/O in its processes) "
                                 "before it is killed as hung and check moves on (default: 900)", metavar="SECONDS")
    shard: str | None = opt(None, "run only part I of N of the test list (I/N), parts of about equal time by the "
                            "durations the lab ships (scenarios/fstests/durations.toml; else by count), the same on every "
                            "runner: one matrix cell per part",
                            metavar="I/N", pattern=r"^[1-9][0-9]?/[1-9][0-9]?$")

    @model_validator(mode="after")
    def _shard_exists(self) -> "SuiteOptions":
        if self.shard:
            index, count = (int(x) for x in self.shard.split("/"))
            if index > count:
                raise ValueError(f"--shard {self.shard}: part {index} of {count} does not exist")
        return self

    def sharded(self, tests: list[str], scenario: str) -> list[str]:
        if not self.shard:
            return tests
        index, count = (int(x) for x in self.shard.split("/"))
        durations, default = shipped_durations(scenario)
        return shard(tests, index, count, durations, default)


def tree_from_environment(data: Any, field: str, value: str | None, message: str) -> Any:
    """A suite tree option filled from its environment variable (LAB_FSTESTS, LAB_BLKTESTS), else required."""
    if isinstance(data, dict) and not data.get(field) and value:
        data = {**data, field: value}
    if isinstance(data, dict) and not data.get(field):
        raise ValueError(message)
    return data


def install_tree(ctx: Any, guest: Any, tree: Any, suite: str, guest_tree: str, skip: Sequence[str] = (".git", "results")) -> None:
    """The built tree unpacked at guest_tree (a tarball through SSH), recorded in the section, and its
    programs' libraries checked before any test runs (the first missing one is the ERROR)."""
    from lab.suites.build import library_packages
    from lab.suites.libcheck import check_libraries

    name = Path(guest_tree).name
    local = ctx.sub.path / f"{name}.tar.gz"
    local.write_bytes(tree_tarball(tree.path, name, skip))
    guest.put(local, f"/root/{name}.tar.gz")
    local.unlink()
    parent = str(Path(guest_tree).parent)
    guest.run(f"rm -rf {guest_tree} && tar -xzf /root/{name}.tar.gz -C {parent} && rm /root/{name}.tar.gz",
              timeout=600, check=True)
    ctx.section["tree"] = {"path": str(tree.path), **tree.meta}
    check_libraries(guest, guest_tree, suite, library_packages(tree))


# -- the kernel log per test -----------------------------------------------------------------------
def kernel_log_rules(test: str | None, read_races: Mapping[str, str] | None = None) -> tuple[kernel_log.Rule, ...]:
    """A suite's test judges the errors of the storage path itself (its golden output, its exit);
    READ guard errors of a test that races buffered or mapped reads with direct writes are the
    emulation's. A crash-class problem is never the test's to judge."""
    rules: list[kernel_log.Rule] = []
    read_races = read_races or {}
    if test is not None and test in read_races:
        rules.append(kernel_log.emulation_read_race(f"{test} ({read_races[test]})"))
    rules.append(kernel_log.Rule(frozenset(kernel_log.DEVICE), "storage errors: the suite's test judges them itself"))
    return tuple(rules)


def kernel_windows(ctx: Any, runner: str, marker: re.Pattern[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The kernel logs since the last case: the runner's cut per test at the line each test writes to
    /dev/kmsg, and every other machine's (an NFS server) whole."""
    windows = ctx.kernel_log_window()
    per_test = kernel_log.split_by_marker(windows.get(runner, ""), marker)
    return per_test, {m: text for m, text in windows.items() if m != runner}


def judge_other_machines(ctx: Any, label: str, windows: dict[str, str], facets: dict[str, Any]) -> None:
    """Problems on the other machines of the run (the server) while the suite ran: a case of their
    own when no rule explains them (they cannot be told to one test)."""
    judged = ctx.judge_kernel_log(f"kernel log ({label})", facets, windows)
    if judged.unexpected:
        ctx.case(f"kernel log ({label})", FAIL, judged.headline(), facets=facets, kernel_window={})


def require_a_test_ran(ctx: Any, label: str, classes: Mapping[str, str], first_reason: str, facets: dict[str, Any]) -> None:
    """A transport or section in which no test ran (every one not run) tested nothing: an ERROR case
    of its own, so a passing neighbour cannot make the sub-run PASS."""
    if classes and all(cls == NOTRUN for cls in classes.values()):
        test = next(iter(classes))
        ctx.case(f"check ({label})", ERROR, f"nothing was tested over {label}: all {len(classes)} test(s) were not run; "
                 f"first: {test}: {first_reason}", facets=facets, kernel_window={})


# -- one test's case, for both suites ---------------------------------------------------------------
@dataclass
class CheckRun:
    """What one check run (a transport or a section) left, in the terms both suites share."""

    label: str
    tests: list[str]
    statuses: dict[str, str]  # test -> pass, fail, notrun, timeout, not reported
    details: dict[str, list[str]]  # test -> what check printed of it (diff lines, the notrun reason)
    kill_reasons: dict[str, str]  # test -> why the monitor killed it
    unreported_note: str = ""  # what check complained of when it stopped reporting (blktests' stray lines)


def _reason(cls: str, status: str, details: list[str], kill_reason: str, reruns: int, note: str) -> str:
    if cls == PASSED:
        return "passed"
    if cls == NOTRUN:
        return "not run: " + (details[0] if details else "no reason given")
    if cls == UNREPORTED:
        return "check did not report this test (it stopped, timed out or crashed before it)" + (
            f"; check printed: {note[:160]}" if note else "")
    if cls == FLAKY:
        return f"flaky: failed, then passed when run again ({reruns} rerun(s))"
    if cls == HUNG:
        return f"timed out: {kill_reason or (details[0] if details else 'no progress')}, killed; check went on with the next test"
    return cls + (": " + " | ".join(details[:3]) if details and status == FAIL_S else "")


def record(ctx: Any, run: CheckRun, known: dict[str, Expectation | None], runner: str, marker: re.Pattern[str],
           facets: dict[str, Any], reruns: int, rerun_once: Callable[[list[str]], dict[str, str]]) -> dict[str, Any]:
    """From a finished check run to cases: known failures that fail differently are new, new
    failures run again (`rerun_once`), each test classed and recorded with its kernel log window,
    the other machines' logs judged, and a run that tested nothing is an ERROR. Returns the run's
    classes, reruns and those that failed differently, for the scenario's own record."""
    logs = kernel_log.split_by_marker(ctx.kernel_log_window(peek=True).get(runner, ""), marker)
    differently = failing_differently(known, [t for t in run.tests if run.statuses[t] == FAIL_S],
                                      lambda t: "\n".join(run.details.get(t, [])) + "\n" + logs.get(t, ""))
    rerun = rerun_once([t for t in run.tests if run.statuses[t] == FAIL_S and not known[t]])
    per_test, others = kernel_windows(ctx, runner, marker)
    classes: dict[str, str] = {}
    for test in run.tests:
        status, entry = run.statuses[test], known[test]
        cls = classify(status, entry is not None, rerun.get(test))
        classes[test] = cls
        verdict, expected = class_verdict(cls)
        reason = _reason(cls, status, run.details.get(test, []), run.kill_reasons.get(test, ""), reruns, run.unreported_note)
        if entry is not None:
            reason += f" ({entry.why}{', ' + entry.link if entry.link else ''})"
        if test in differently:
            reason += f" (fails differently from its known issue: no match for {differently[test]!r})"
        ctx.case(f"{test} ({run.label})", verdict, reason, facets={**facets, "test": test}, expected=expected, status=status,
                 classification=cls, rerun=rerun.get(test), kernel_window={runner: per_test.get(test, "")})
    judge_other_machines(ctx, run.label, others, facets)
    first = next(iter(classes), "")
    require_a_test_ran(ctx, run.label, classes, (run.details.get(first) or ["no reason given"])[0], facets)
    return {"classes": classes, "rerun": rerun, "fails_differently": differently}


# -- shards ---------------------------------------------------------------------------------------------
def shard(tests: list[str], index: int, count: int, durations: Mapping[str, float], default: float | None = None) -> list[str]:
    """Part `index` of `count` (from 1): the longest tests first, each into the part with the least
    time so far (a test never timed counts as `default`, else the median of those that were; with
    none, as 1 s, which is a split by count). The parts keep the list's order and together are the
    whole list."""
    known = sorted(v for t, v in durations.items() if t in tests)
    if default is None:
        default = known[len(known) // 2] if known else 1.0
    loads = [0.0] * count
    part_of: dict[str, int] = {}
    for test in sorted(tests, key=lambda t: (-durations.get(t, default), tests.index(t))):
        part = min(range(count), key=lambda p: (loads[p], p))
        part_of[test] = part
        loads[part] += durations.get(test, default)
    return [t for t in tests if part_of[t] == index - 1]


def shipped_durations(scenario: str) -> tuple[dict[str, float], float | None]:
    """(seconds per test, seconds of a test not listed) from the lab's scenarios/fstests/durations.toml:
    the same on every runner, so the shards of one night are the same parts everywhere."""
    import tomllib

    from lab.paths import DATA_ROOT

    path = DATA_ROOT / "scenarios" / "fstests" / "durations.toml"
    try:
        table = tomllib.loads(path.read_text()).get(scenario) or {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LabError(f"{path}: {exc}") from None
    default = table.get("default")
    durations = {str(t): float(v) for t, v in table.items() if t != "default" and isinstance(v, (int, float))}
    return durations, float(default) if isinstance(default, (int, float)) else None
