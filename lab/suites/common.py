"""What the fstests and blktests scenarios do alike before and around check: test lists from names
and presets, the source argument checked before anything boots, the tree packed for the guest, and
the known-issues entry that applies to a test."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lab import kernel_log
from lab.errors import UsageError
from lab.scenarios.options import ScenarioOptions, Seconds, opt
from lab.scenarios.expect import Expectation, expectation_for, load_rules
from lab.scenarios.verdict import ERROR, FAIL
from lab.suites.build import SUITES, check_layout
from lab.suites.source import is_bare_repository, is_url, split_ref

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
    from lab.suites.classes import NOTRUN

    if classes and all(cls == NOTRUN for cls in classes.values()):
        test = next(iter(classes))
        ctx.case(f"check ({label})", ERROR, f"nothing was tested over {label}: all {len(classes)} test(s) were not run; "
                 f"first: {test}: {first_reason}", facets=facets, kernel_window={})
