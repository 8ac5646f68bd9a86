"""The scenario framework without guests: the registry (decorator and entry points), options built
from their declarations, the per-sub-run verdict and outcome, the verdict line with retries, JUnit
with skipped cases, bisect's signature."""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.junit import write as write_junit
from lab.rundir import RunDir
from lab.scenarios import framework
from lab.scenarios.framework import Outcome, Scenario, junit_cases, register, section_outcome, verdict_line
from lab.scenarios.options import ScenarioOptions, add_arguments, from_args, opt, validate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_shipped_scenarios_are_registered():
    names = set(framework.scenarios())
    assert {"stable-pages", "p2p-block", "nfs-dio", "nfs-p2p", "nfs-fstests"} <= names
    with pytest.raises(UsageError, match="unknown scenario 'nope'"):
        framework.get("nope")


def test_register_checks_names():
    class Bad(Scenario):
        name = "Not A Name"

    with pytest.raises(TypeError, match="short lower-case word"):
        register(Bad)


def test_entry_point_scenarios_are_found(monkeypatch):
    """A package that declares a `lab.scenarios` entry point (here a dist-info on sys.path) is loaded."""
    monkeypatch.syspath_prepend(str(FIXTURES / "example-scenario"))
    for mod in [m for m in sys.modules if m.startswith("lab_example_scenario")]:
        monkeypatch.delitem(sys.modules, mod)
    found = framework.scenarios(refresh=True)
    assert "example-integrity" in found
    assert found["example-integrity"].__module__ == "lab_example_scenario"


class DemoOptions(ScenarioOptions):
    count: int = opt(3, "how many", gt=0)
    mode: str = opt("a", "which")
    flags: list[str] = opt(["x"], "repeatable", flag="--flag")
    control: bool = opt(True, "skip the control", negate="--no-control")
    enable: bool | None = opt(None, "true or false", metavar="BOOL")


def parse(*argv: str) -> ScenarioOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser, DemoOptions)
    return from_args(DemoOptions, parser.parse_args(list(argv)))


def test_options_come_from_their_declaration():
    o = parse()
    assert (o.count, o.flags, o.control, o.kernels, o.accel) == (3, ["x"], True, [], "auto")
    o = parse("--count", "7", "--flag", "a", "--flag", "b", "--no-control", "--kernel", "debian:7.3", "-p", "pi=3",
              "--enable", "yes")
    assert (o.count, o.flags, o.control, o.kernels, o.params, o.enable) == (7, ["a", "b"], False, ["debian:7.3"], {"pi": 3}, True)


@pytest.mark.parametrize("argv,message", [
    (["--count", "0"], "--count: Input should be greater than 0"),
    (["--count", "nan"], "--count: Input should be a valid integer"),
    (["--enable", "banana"], "--enable: Input should be a valid boolean"),
    (["--kernel", ""], "--kernel: a kernel reference cannot be empty"),
    (["--kernel", "debian:banana"], "packaged kernels are debian:MAJOR.MINOR"),
    (["--kernel", "a b"], "no spaces"),
    (["--kernel", "x" * 600], "at most 512"),
    (["--accel", "warp"], "--accel: Input should be 'auto', 'kvm' or 'tcg'"),
    (["-p", "pi=1", "-p", "pi=2"], "given twice"),
])
def test_bad_options_are_one_line_naming_the_flag(argv, message):
    with pytest.raises(UsageError) as info:
        parse(*argv)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_seconds_refuse_nan_infinity_zero_and_negative():
    from lab.scenarios.stable_pages import StablePagesOptions

    for value in ("nan", "inf", "0", "-1", "abc", "1e9"):
        with pytest.raises(UsageError, match="--duration"):
            validate(StablePagesOptions, {"duration": value})
    assert validate(StablePagesOptions, {"duration": "2.5"}).duration == 2.5  # type: ignore[attr-defined]


def case(verdict: str, outcome: str = "as expected", reason: str = "r") -> dict:
    return {"verdict": verdict, "outcome": outcome, "reason": reason}


def test_section_outcome_and_run_ok():
    assert section_outcome({"verdict": "ERROR", "cases": {}}) == "error"
    assert section_outcome({"verdict": "N/A", "cases": {}}) == "not applicable"
    assert section_outcome({"verdict": "FAIL", "cases": {"a": case("FAIL")}}) == "as expected"
    assert section_outcome({"verdict": "FAIL", "cases": {"a": case("FAIL", "unexpected failure (regression)")}}) \
        == "unexpected failure (regression)"
    assert framework.run_ok({"subruns": {"a": {"outcome": "as expected"}, "b": {"outcome": "not applicable"}}})
    assert not framework.run_ok({"subruns": {"a": {"outcome": "error"}}})
    assert not framework.run_ok({"subruns": {}})


def test_every_retry_shows_in_the_verdict_line():
    section = {"verdict": "PASS", "outcome": "as expected", "reason": "3 case(s) passed",
               "boot": {"retries": [{"attempt": 1, "phase": "tcg-int3", "detail": "oops"}]}}
    line = verdict_line("debian-7.3", section)
    assert line.startswith("debian-7.3: PASS - 3 case(s) passed")
    assert "[boot retried 1x after emulator faults: attempt 1: tcg-int3]" in line
    assert verdict_line("x", {"verdict": "N/A", "outcome": "not applicable", "reason": "no PI"}) == "x: N/A (not applicable) - no PI"


def test_junit_skips_what_did_not_apply(tmp_path):
    results = {"subruns": {
        "old": {"verdict": "N/A", "reason": "no PCI_P2PDMA", "cases": {}},
        "new": {"verdict": "FAIL", "reason": "", "cases": {
            "generic/001 (tcp)": case("PASS"), "generic/003 (tcp)": case("N/A", "not applicable", "notrun"),
            "generic/002 (tcp)": case("FAIL", "unexpected failure (regression)"),
            "generic/004 (tcp)": case("ERROR", "error", "not reported"),
            "xfs-write": case("FAIL", "as expected")}},
        "boot": {"verdict": "ERROR", "reason": "boot failed", "cases": {}}}}
    path = tmp_path / "junit.xml"
    write_junit("demo", junit_cases("demo", results), path)
    suite = ET.parse(path).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("7", "1", "2", "2")
    kinds = {c.get("name") + "@" + c.get("classname"): [e.tag for e in c] for c in suite}
    assert kinds["run@demo.old"] == ["skipped"] and kinds["generic/003 (tcp)@demo.new"] == ["skipped"]
    assert kinds["generic/002 (tcp)@demo.new"] == ["failure"] and kinds["generic/004 (tcp)@demo.new"] == ["error"]
    assert kinds["xfs-write@demo.new"] == ["system-out"]  # an expected failure is not a CI failure
    assert kinds["run@demo.boot"] == ["error"]


def test_signature_for_bisect(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS", str(tmp_path))
    run = RunDir.create("x", "y")
    one = Outcome(run, {"subruns": {"k": {"verdict": "FAIL", "facets": {}}}}, False, "")
    assert one.signature() == "FAIL"
    two = Outcome(run, {"subruns": {"k-switch": {"verdict": "PASS", "facets": {"placement": "switch"}},
                                    "k-root-port": {"verdict": "ERROR", "facets": {"placement": "root-port"}}}}, False, "")
    assert two.signature() == "switch=PASS, root-port=ERROR"
    assert Outcome(run, {"subruns": {}}, False, "").signature() == "ERROR"


def test_bisect_decides_only_on_pass_and_fail():
    from lab.bisect import decides

    assert decides("PASS") and decides("FAIL") and decides("switch=PASS, root-port=FAIL")
    assert not decides("BUILD-ERROR")  # skipped, as git bisect skip does
    assert not decides("ERROR") and not decides("N/A") and not decides("switch=PASS, root-port=ERROR")


def test_plan_checks_machines_and_duplicate_kernels():
    from lab.scenarios.nfs_dio import NfsDio, NfsDioOptions
    from lab.scenarios.stable_pages import StablePages, StablePagesOptions

    with pytest.raises(UsageError, match="has no machine server, client"):
        NfsDio(validate(NfsDioOptions, {"topology": "nvme-pi"})).plan()
    with pytest.raises(UsageError, match="share the name"):
        StablePages(validate(StablePagesOptions, {"kernels": ["debian:7.3", "debian:7.3"]})).plan()
    with pytest.raises(UsageError, match="not a multiple of the namespace's 4096-byte logical block"):
        StablePages(validate(StablePagesOptions, {"bs": ["1K"]})).plan()
    StablePages(validate(StablePagesOptions, {"bs": ["1K"], "params": {"lba": 512}})).plan()
    with pytest.raises(UsageError, match="matches none of the 44 cases"):
        NfsDio(validate(NfsDioOptions, {"only": "size=huge"})).plan()


FSTESTS_FAKE = str(Path(__file__).resolve().parent.parent / "fixtures" / "fstests-fake")


def test_a_parameter_matrix_is_one_sub_run_per_cell():
    from lab.scenarios.framework import param_matrix
    from lab.scenarios.fstests import LocalFstests as Fstests, LocalFstestsOptions as FstestsOptions
    from lab.topology.render import parse_params

    params = parse_params(["pi=1,3", "pif=0,2", "lba=4096", "cpu=EPYC,pmu=off"])
    cells = param_matrix(params)
    assert [vary for _, vary in cells] == [{"pi": 1, "pif": 0}, {"pi": 1, "pif": 2}, {"pi": 3, "pif": 0}, {"pi": 3, "pif": 2}]
    assert all(p["lba"] == 4096 and p["cpu"] == "EPYC,pmu=off" for p, _ in cells)  # a string with commas is one value
    assert param_matrix({"pi": [1, 2]}) == [({"pi": 1}, {"pi": 1}), ({"pi": 2}, {"pi": 2})]  # lists, from a bundle
    assert param_matrix({"pi": 1}) == [({"pi": 1}, {})]
    with pytest.raises(UsageError, match="given twice"):
        param_matrix({"pi": "1,1"})
    params.pop("cpu")  # nvme-pi takes no cpu
    opts = validate(FstestsOptions, {"kernels": ["debian:6.12", "debian:7.3"], "params": params, "fstests": FSTESTS_FAKE})
    variants = Fstests(opts).plan()
    assert [v.label for v in variants][:2] == ["debian-6.12-pi=1-pif=0", "debian-6.12-pi=1-pif=2"] and len(variants) == 8
    assert variants[3].facets == {"pi": 3, "pif": 2}
    ns = variants[3].rendered.topology.machines["vm"].nvme[0].namespaces
    assert len(ns) == 2 and (ns[0].pi, ns[0].pif, ns[0].ms) == (3, 2, 16)  # the scenario's own defaults still apply
    with pytest.raises(UsageError, match="pi"):
        Fstests(validate(FstestsOptions, {"params": {"pi": "1,7"}, "fstests": FSTESTS_FAKE})).plan()


# -- preconditions: what a topology promised against what the guest shows ---------------------------
class Guest:
    """Answers the few guest commands the preconditions send (a stand-in for SSH, not for a guest)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def run(self, command, timeout=0, check=False):
        from lab.guest import Result, shell_join

        text = command if isinstance(command, str) else shell_join(command)
        for key, out in self.answers.items():
            if key in text:
                return Result(text, 0 if out is not None else 1, out or "", "")
        return Result(text, 1, "", "")


class Kernel:
    def __init__(self, config: dict | None) -> None:
        self.config = config
        self.release = "7.3.4"

    def config_value(self, option):
        return (self.config or {}).get(option)


def context(topology: str, params: dict, guest: Guest, config: dict | None):
    from types import SimpleNamespace

    from lab.scenarios.framework import Context, Variant
    from lab.topology.render import render

    rendered = render(topology, params)
    name = next(iter(rendered.topology.machines))
    lab = SimpleNamespace(rendered=rendered, machines={name: None}, kernels={name: Kernel(config)}, guest=lambda n: guest)
    return Context(Scenario(ScenarioOptions()), Variant("v", "k", topology, params), lab, None, {"cases": {}})  # type: ignore[arg-type]


SERIAL = {"/sys/class/nvme/nvme*; do [": "nvme0\n"}


def test_no_pi_in_the_topology_is_not_applicable():
    with pytest.raises(framework.NotApplicable, match="without protection information"):
        context("nvme-pi", {"pi": 0}, Guest(SERIAL), None).require_integrity()


def test_pi_promised_but_missing_in_the_guest_is_an_error():
    ctx = context("nvme-pi", {"pi": 3}, Guest({**SERIAL, "integrity/format": "none\n"}), None)
    with pytest.raises(framework.ScenarioError, match="promised PI type 3 .*T10-DIF-TYPE3-CRC.* shows integrity format 'none'"):
        ctx.require_integrity()
    ok = context("nvme-pi", {"pi": 3}, Guest({**SERIAL, "integrity/format": "T10-DIF-TYPE3-CRC\n"}), None)
    assert ok.require_integrity()["device"] == "nvme0n1"


P2PMEM = "for c in /sys/class/nvme/nvme*; do d="


def test_cmb_without_p2pdma_is_not_applicable_but_missing_p2pmem_is_an_error():
    with pytest.raises(framework.NotApplicable, match="no PCI_P2PDMA"):
        context("p2p-switch", {}, Guest({}), {"NVME": "m"}).require_p2pmem()
    with pytest.raises(framework.NotApplicable, match="no controller of vm a CMB"):
        context("p2p-switch", {"cmb_mb": 0}, Guest({}), {"PCI_P2PDMA": "y"}).require_p2pmem()
    # PCI_P2PDMA and a CMB, but the guest published nothing: the thing under test did not happen.
    nothing = Guest({P2PMEM: "lab-p2p-0 0000:03:00.0 - - -\nlab-p2p-1 0000:04:00.0 - - -\n"})
    with pytest.raises(framework.ScenarioError, match="published no P2P memory"):
        context("p2p-switch", {}, nothing, {"PCI_P2PDMA": "y"}).require_p2pmem()
    # A kernel without its config: the guest's symbols decide.
    with pytest.raises(framework.ScenarioError, match="published no P2P memory"):
        context("p2p-switch", {}, Guest({**nothing.answers, "pci_p2pdma_add_resource": ""}), None).require_p2pmem()
    published = Guest({P2PMEM: "lab-p2p-0 0000:03:00.0 67108864 66977792 1\nlab-p2p-1 0000:04:00.0 67108864 66977792 1\n"})
    found = context("p2p-switch", {}, published, {"PCI_P2PDMA": "y"}).require_p2pmem()
    assert found["nvme0"] == {"bdf": "0000:03:00.0", "size": 67108864, "available": 66977792, "published": True}


def test_a_run_whose_lab_process_died_reads_abandoned(tmp_path, monkeypatch):
    import subprocess

    from lab.results import list_runs, status_of

    monkeypatch.setenv("LAB_RESULTS", str(tmp_path))
    alive = RunDir.create("x", "alive")
    assert status_of(alive.manifest()) == "running"  # this process owns it
    child = subprocess.Popen(["sleep", "30"])
    dead = RunDir.create("x", "dead")
    from lab.rundir import process_identity

    dead.update(owner=process_identity(child.pid))
    assert status_of(dead.manifest()) == "running"
    child.kill()
    child.wait()
    assert status_of(dead.manifest()) == "abandoned"
    dead.finish("interrupted")
    assert status_of(dead.manifest()) == "interrupted"  # a written status is never second-guessed
    old = RunDir.create("x", "old")
    old.update(owner=None)  # made by a lab before owners were recorded
    assert {r["id"].split("-")[3]: r["status"] for r in list_runs()} == {"alive": "running", "dead": "interrupted",
                                                                         "old": "running"}


def test_junit_carries_a_sub_run_error_after_passing_cases_flakes_and_no_control_characters(tmp_path):
    import xml.etree.ElementTree as ET

    from lab import junit
    from lab.scenarios.framework import junit_cases

    results = {"subruns": {"debian-7.3": {
        "verdict": "ERROR", "reason": "interrupted", "seconds": 3,
        "cases": {
            "generic/001 (tcp)": {"verdict": "PASS", "outcome": "as expected", "reason": "passed"},
            "generic/002 (tcp)": {"verdict": "FLAKY", "outcome": "flaky", "reason": "flaky: failed, then passed"},
            "generic/003 (tcp)": {"verdict": "FAIL", "outcome": "unexpected failure (regression)", "rerun": "fail",
                                  "reason": "new failure: +\x1b[31mcorrupt\x00 output\x07"},
        }}}}
    path = tmp_path / "junit.xml"
    junit.write("nfs-fstests", junit_cases("nfs-fstests", results), path)
    suite = ET.parse(path).getroot()  # parses: no control character reached the file
    by_name = {c.get("name"): c for c in suite}
    assert by_name["run"].find("error").get("message") == "interrupted"  # the sub-run ERROR is there beside the passes
    assert by_name["generic/002 (tcp)"].find("flakyFailure") is not None
    failed = by_name["generic/003 (tcp)"]
    assert failed.find("failure") is not None and failed.find("rerunFailure") is not None
    assert "\x1b" not in path.read_text() and "\x00" not in path.read_text()


def test_a_kvm_internal_error_is_the_emulators_fault_only_under_kvm():
    from types import SimpleNamespace

    from lab.scenarios.framework import emulator_fault
    from lab.topology.argv import Accel

    class Machine:
        def __init__(self, error):
            self.error = error

        def kvm_internal_error(self):
            return self.error

    lab = SimpleNamespace(chosen_accel=Accel("kvm", "Nehalem"), machines={"a": Machine(None), "vm": Machine("KVM internal error. Suberror: 1")})
    assert emulator_fault(lab).startswith("vm: KVM internal error. Suberror: 1 (QEMU paused the guest")
    lab.machines["vm"].error = None
    assert emulator_fault(lab) is None
