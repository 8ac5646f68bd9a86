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

import importlib.metadata
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from lab import junit, kernel_log
from lab.errors import BootError, LabError, UsageError
from lab.kernels.kernel import Kernel
from lab.lab import Lab
from lab.machine import emulator_fault_after_ready, read_text, stale_int3
from lab.paths import scenarios_dir
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios.expect import ERROR, FLAKY, INFO, NOT_APPLICABLE, PASS, expectation_for, outcome, outcome_ok
from lab.scenarios.options import ScenarioOptions
from lab.topology.kernel_needs import check_kernel_fits
from lab.scenarios.verdict import FAIL, ProgramResult, aggregate, parse_program_output
from lab.stats import Rate
from lab.guest import Guest
from lab.topology.render import Rendered, render

LOG = logging.getLogger(__name__)
GUEST_DIR = "/usr/local/lib/lab"
# A sub-run whose guest met the emulator's fault after it booted runs again (a fresh boot), at most
# this many times in all; a fault of the kernel under test is never retried.
SUBRUN_ATTEMPTS = 3
ENTRY_POINT_GROUP = "lab.scenarios"


class NotApplicable(LabError):
    """The kernel or the topology lacks what the scenario tests: the sub-run's verdict is N/A."""


class ScenarioError(LabError):
    """What the scenario needed did not happen (a promised device is missing, nothing ran): ERROR."""


def safe_label(text: str, limit: int = 60) -> str:
    """A file-system-safe, bounded name for a sub-run or case directory."""
    label = re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-.")[:limit]
    return label or "run"


_INT_LIST = re.compile(r"^-?\d+(,-?\d+)+$")


def param_matrix(params: dict[str, Any], limit: int = 500, kernels: int = 1) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Cross the parameters that hold several values: a list (a bundle, a matrix file) or a string
    of comma-separated integers from `-p pi=1,3`; other strings are one value (`cpu=EPYC,pmu=off`).
    More than `limit` sub-runs (with `kernels` kernels each) is refused before anything is made."""
    expanded: dict[str, list[Any]] = {}
    for key, value in params.items():
        if isinstance(value, str) and _INT_LIST.match(value):
            values: list[Any] = [int(v) for v in value.split(",")]
        elif isinstance(value, list):
            values = list(value)
        else:
            values = [value]
        if not values:
            raise UsageError(f"parameter {key}: an empty list of values")
        if len(values) != len(set(map(repr, values))):
            raise UsageError(f"parameter {key}: a value is given twice ({value})")
        expanded[key] = values
    count = kernels
    for values in expanded.values():
        count *= len(values)
    if count > limit:
        raise UsageError(f"{count} sub-runs ({kernels} kernel(s) x the -p lists), above the limit of {limit}; "
                         f"--max-subruns N raises it")
    cells: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {})]
    for key, values in expanded.items():
        varying = len(values) > 1
        cells = [({**p, key: v}, {**vary, key: v} if varying else vary) for p, vary in cells for v in values]
    return cells


def matrix_label(ref: str, varying: dict[str, Any]) -> str:
    """A sub-run's name: its kernel, then the matrix parameters it has (debian-7.3-pi=3-pif=2)."""
    return safe_label("-".join([ref, *(f"{k}={v}" for k, v in varying.items())]), limit=80)


@dataclass
class Variant:
    """One sub-run: a kernel, the topology it boots, and the facets that tell it from its siblings."""

    label: str
    kernel: str
    topology: str
    params: dict[str, Any]
    facets: dict[str, Any] = field(default_factory=dict)
    rendered: Rendered | None = None


class Scenario:
    """Base class. Subclasses set the class attributes and implement exercise()."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type[ScenarioOptions]] = ScenarioOptions
    topology: ClassVar[str] = "nvme-pi"
    machines: ClassVar[tuple[str, ...]] = ()  # machine names exercise() drives; the topology must have them
    default_kernels: ClassVar[tuple[str, ...]] = ("debian:7.3",)
    expect_file: ClassVar[Path | None] = None
    source_file: ClassVar[Path | None] = None  # set for a scenario loaded from a file (lab run ./mine.py)
    file_options: ClassVar[tuple[str, ...]] = ()  # options naming host files a bundle must carry (repro's --put)

    def __init__(self, options: ScenarioOptions) -> None:
        self.options = options
        self.guest_images: tuple[str, ...] = ("lab-trixie",)  # the run's image recipes, set before prepare()

    @property
    def kernels(self) -> list[str]:
        return list(self.options.kernels) or list(self.default_kernels)

    def param_sets(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(parameters, the ones that vary) per cell of the -p matrix: `-p pi=1,3 -p pif=0,2` is four
        cells, crossed in the order given; without a list it is the one set of parameters."""
        return param_matrix(self.options.params, self.options.max_subruns, len(self.kernels))

    # -- what a scenario may override ----------------------------------------------------------
    def variants(self) -> list[Variant]:
        """One sub-run per kernel and cell of the -p matrix by default."""
        return [Variant(matrix_label(ref, varying), ref, self.options.topology or self.topology, params, dict(varying))
                for ref in self.kernels for params, varying in self.param_sets()]

    def check(self, variant: Variant) -> None:
        """Checks of the options against a rendered topology (block size vs logical block size, ...).
        Raise UsageError; runs before anything boots."""

    def prepare(self) -> None:
        """Host-side work before the first boot (build a guest program, fetch a tree); the guests'
        image recipes are in self.guest_images."""

    def setup(self, ctx: "Context") -> None:
        """Once per boot, before the first repetition: put programs in place, start servers."""

    def exercise(self, ctx: "Context") -> None:
        """One repetition of the scenario's cases (ctx.repetition counts from 1)."""
        raise NotImplementedError

    def kernel_log_rules(self, ctx: "Context", case: str, facets: dict[str, Any]) -> Sequence[kernel_log.Rule]:
        """Why problems in the kernel log of this case's window are there (the scenario provoked
        them, or a known emulation fact explains them); any other problem fails the case."""
        return ()

    def more(self, ctx: "Context", started: float) -> bool:
        """Whether to run another repetition; by default --repeat of them."""
        return ctx.repetition < self.options.repeat

    def table(self, results: dict[str, Any]) -> str:
        """The scenario's table; the default lists each sub-run's cases."""
        lines = []
        for label, s in results.get("subruns", {}).items():
            lines.append(f"{label} ({s.get('release', '?')})")
            for name, c in s["cases"].items():
                lines.append(f"  {name:40} {c['verdict']:5} {c['reason']}")
        return "\n".join(lines)

    # -- the framework's part -------------------------------------------------------------------
    def plan(self) -> list[Variant]:
        variants = self.variants()
        if not variants:
            raise UsageError(f"{self.name}: nothing to run (no kernel)")
        labels = [v.label for v in variants]
        if len(set(labels)) != len(labels):
            raise UsageError(f"{self.name}: two sub-runs would share the name {next(x for x in labels if labels.count(x) > 1)!r}; "
                             f"give each --kernel once")
        for v in variants:
            v.rendered = render(v.topology, v.params)
            missing = [m for m in self.machines if m not in v.rendered.topology.machines]
            if missing:
                raise UsageError(f"{self.name}: topology {v.topology} has no machine {', '.join(missing)} "
                                 f"(this scenario drives {', '.join(self.machines)})")
            self.check(v)
        return variants


# -- registry -------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Scenario]] = {}
_LOADED = False
BUILTIN_MODULES = ("stable_pages", "p2p_block", "nfs_dio", "nfs_p2p", "fstests", "blktests", "repro", "netfs", "fault_injection",
                   "pin_audit", "dio_bench")


def register(cls: type[Scenario]) -> type[Scenario]:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{1,39}", name):
        raise TypeError(f"scenario {cls.__name__}: name must be a short lower-case word (got {name!r})")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"scenario {name!r} is registered twice ({existing.__module__} and {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def scenarios() -> dict[str, type[Scenario]]:
    """Every registered scenario: the lab's own, then those of installed packages."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in BUILTIN_MODULES:
            importlib.import_module(f"lab.scenarios.{module}")
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
                if isinstance(loaded, type) and issubclass(loaded, Scenario):
                    register(loaded)
            except Exception as exc:  # a broken plugin must not break the lab's own scenarios
                LOG.warning("scenario plugin %s (%s) failed to load: %s", ep.name, ep.value, exc, exc_info=True)
                info(f"warning: scenario plugin {ep.name} ({ep.value}) failed to load: {exc}")
    return dict(_REGISTRY)


def load_file(path: Path) -> str:
    """A Python file with one Scenario subclass (lab run ./my_scenario.py): imported and registered;
    returns the scenario's name."""
    import importlib.util

    if not path.is_file():
        raise UsageError(f"{path}: no such scenario file")
    module_name = f"lab_user_scenario_{safe_label(path.stem, 40).replace('-', '_').replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # sys.exit() at import is the file's error too, not the lab's exit
        raise UsageError(f"{path}: importing it called sys.exit({exc.code!r})") from None
    except Exception as exc:  # the user's file: its error, in one line
        raise UsageError(f"{path}: importing it raised {exc.__class__.__name__}: {str(exc)[:200]}") from None
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Scenario) and obj.__module__ == module_name and hasattr(obj, "name")]
    if len(found) != 1:
        raise UsageError(f"{path}: defines {len(found)} Scenario subclasses with a name; lab run takes a file with one")
    cls = found[0]
    builtin = scenarios().get(getattr(cls, "name", None))  # type: ignore[arg-type]
    if builtin is not None and builtin.source_file is None:
        raise UsageError(f"{path}: scenario name {cls.name!r} is the lab's own ({builtin.__module__}); give yours another name")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, ScenarioOptions)):
        raise UsageError(f"{path}: {cls.__name__}.Options must be a subclass of lab.scenarios.options.ScenarioOptions "
                         f"(a pydantic model), not {cls.Options!r}")
    if not callable(getattr(cls, "exercise", None)) or cls.exercise is Scenario.exercise:
        raise UsageError(f"{path}: {cls.__name__} does not define exercise(self, ctx)")
    cls.source_file = path.resolve()
    try:
        register(cls)
    except TypeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return cls.name


def get(name: str) -> type[Scenario]:
    found = scenarios()
    if name not in found:
        raise UsageError(f"unknown scenario {name!r}; scenarios: {', '.join(sorted(found))}")
    return found[name]


# -- a booted sub-run -----------------------------------------------------------------------------
@dataclass
class Context:
    """What exercise() gets: the booted lab, the sub-run directory, and ways to record cases."""

    scenario: Scenario
    variant: Variant
    lab: Lab
    sub: RunDir
    section: dict[str, Any]
    repetition: int = 1
    resolved: dict[str, Kernel] = field(default_factory=dict)
    boots: int = 1
    failed_repetitions: set[int] = field(default_factory=set)
    counted_repetitions: set[int] = field(default_factory=set)
    log_marks: dict[str, int] = field(default_factory=dict)  # console file -> bytes already judged

    @property
    def topology(self):
        return self.lab.rendered.topology

    def machine_name(self, name: str | None = None) -> str:
        return name or next(iter(self.lab.machines))

    def guest(self, name: str | None = None) -> Guest:
        return self.lab.guest(self.machine_name(name))

    def kernel(self, name: str | None = None) -> Kernel:
        return self.lab.kernels[self.machine_name(name)]

    def release(self, name: str | None = None) -> str:
        return self.kernel(name).release

    def note(self, message: str) -> None:
        info(f"{self.variant.label}: {message}")

    def kernel_log_window(self, peek: bool = False) -> dict[str, str]:
        """What each machine's console printed since the last window (the first one starts at boot;
        a reboot starts new consoles). `peek` leaves it to the next case's window."""
        out: dict[str, str] = {}
        for name, machine in self.lab.machines.items():
            key = str(machine.console_log)
            start = self.log_marks.get(key, 0)
            try:
                with open(machine.console_log, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except OSError:
                data = b""
            if not peek:
                self.log_marks[key] = start + len(data)
            out[name] = data.decode(errors="replace")
        return out

    def judge_kernel_log(self, name: str, facets: dict[str, Any],
                         windows: dict[str, str] | None = None) -> kernel_log.Judgement:
        """Every machine's kernel log over this case's window, against the scenario's rules."""
        windows = self.kernel_log_window() if windows is None else windows
        rules = self.scenario.kernel_log_rules(self, name, facets)
        tcg = self.lab.chosen_accel is not None and self.lab.chosen_accel.name == "tcg"
        # The emulator's own fault and what follows it (the oops, the panic) are not the case's:
        # the attempt is run again, and what came before the fault is still judged.
        found = [p for text in windows.values()
                 for p in kernel_log.detect(text.split("Oops: int3", 1)[0] if tcg and stale_int3(text) else text)]
        return kernel_log.judge(found, rules)

    def case(self, name: str, verdict: str, reason: str, *, facets: dict[str, Any] | None = None,
             machine: str | None = None, expected: str | None = None, kernel_window: dict[str, str] | None = None,
             **data: Any) -> dict[str, Any]:
        """Record one case. Its expectation is `expected`, else the scenario's expect.toml rule for
        its facets and the kernel's version, else PASS. Over several repetitions the case keeps a
        tally, its first failure and its failure rate. The kernel log of every machine since the
        previous case (or `kernel_window`, per machine) is judged: a problem no rule explains
        turns a PASS into a FAIL."""
        facets = {**self.variant.facets, **(facets or {})}
        judged = self.judge_kernel_log(name, facets, kernel_window)
        if judged.unexpected or judged.explained:
            data["kernel_log_problems"] = judged.to_dict()
        if judged.unexpected and verdict == PASS:
            verdict, reason = FAIL, f"{judged.headline()} (the case itself passed: {reason})"
        why = None
        if expected is None and self.scenario.expect_file is not None:
            rule = expectation_for(self.scenario.expect_file, facets, self.release(machine))
            expected, why = (rule.verdict, rule.why) if rule else (None, None)
        entry = {"verdict": verdict, "reason": reason, "expected": expected, "expected_why": why, "facets": facets, **data}
        if verdict in (PASS, FAIL):
            self.counted_repetitions.add(self.repetition)
        if verdict == FAIL:
            self.failed_repetitions.add(self.repetition)
        previous = self.section["cases"].get(name)
        if self.scenario.options.repeat > 1 or previous is not None:
            entry = merge_repetition(previous, entry, self.repetition)
        entry["outcome"] = outcome(entry["verdict"], expected)
        self.section["cases"][name] = entry
        self.note(f"{name}: {verdict}: {reason}" + (f" (repetition {self.repetition})" if self.repetition > 1 else ""))
        return entry

    def path(self, relative: str) -> str:
        """Where a repetition keeps a file of its own in the sub-run directory."""
        return f"rep{self.repetition}/{relative}" if self.scenario.options.repeat > 1 or self.repetition > 1 else relative

    def reboot(self) -> None:
        """Boot the sub-run's topology again from fresh overlays (a repetition across boots)."""
        old = self.lab
        old.stop()
        self.boots += 1
        new = Lab(old.rendered, kernel_ref=old.kernel_ref, accel=old.accel, run=self.sub.child(f"boot{self.boots}"),
                  resolved=self.resolved)
        self.lab = new
        new.start()
        self.section["boot"].setdefault("reboots", []).append({"boot": self.boots, "seconds": dict(new.boot_seconds),
                                                             "retries": list(new.boot_retries)})

    def run_program(self, argv: Sequence[object], *, machine: str | None = None, timeout: float = 600,
                    save_as: str | None = None, required: Sequence[str] = ("ops", "ok", "short", "errno"),
                    count: str | None = "ops") -> ProgramResult:
        """Run a guest program (argv, quoted here), keep its raw output, parse its JSON result."""
        res = self.guest(machine).run(argv, timeout=timeout)
        if save_as:
            self.sub.write(save_as, res.stdout + (f"\n--- stderr ---\n{res.stderr}" if res.stderr else ""))
        result = parse_program_output(res.stdout, required, count)
        if res.exit_code != 0 and not result.error:
            result.error = f"program exited {res.exit_code}: {res.stderr.strip()[-200:]}"
        elif res.exit_code != 0 and result.data is None:
            # It crashed before it reported: its own last error line, and what the kernels logged meanwhile.
            last = next((line.strip() for line in reversed(res.stderr.splitlines()) if line.strip()), "")
            result.error = f"the program crashed (exit {res.exit_code}{', ' + last[:160] if last else ', nothing on stderr'})"
            found = [p for text in self.kernel_log_window(peek=True).values() for p in kernel_log.detect(text)]
            if found:
                result.error += "; kernel log: " + "; ".join(f"{p.kind}: {p.line[:120]}" for p in found[:3])
        return result

    def dmesg(self, machine: str | None = None, clear: bool = False) -> str:
        text = self.guest(machine).run("dmesg", timeout=60).stdout
        if clear:
            self.guest(machine).run("dmesg -C", timeout=30)
        return text

    def put_scenario_file(self, relative: str, machine: str | None = None, remote_dir: str = GUEST_DIR) -> str:
        """Copy scenarios/<relative> into the guest; returns its path there."""
        guest = self.guest(machine)
        guest.run(["mkdir", "-p", remote_dir], check=True)
        remote = f"{remote_dir}/{Path(relative).name}"
        guest.put(scenarios_dir() / relative, remote)
        return remote

    def kernel_config(self, option: str, machine: str | None = None) -> str | None:
        """'y'/'m'/a value from the kernel's config; 'unknown' when the kernel came without one."""
        kernel = self.kernel(machine)
        if kernel.config is None:
            return "unknown"
        return kernel.config_value(option)

    # -- preconditions shared by scenarios -----------------------------------------------------
    def require_integrity(self, machine: str | None = None, controller: int = 0, namespace: int = 0) -> dict[str, Any]:
        """The namespace's PI as the guest sees it. N/A when the topology gives it none; ERROR when
        the topology promised PI and the guest shows another format or none."""
        name = self.machine_name(machine)
        ctrl = self.topology.machines[name].nvme[controller]
        ns = ctrl.namespaces[namespace]
        device = self.namespace_device(name, controller, namespace)
        if not ns.pi:
            raise NotApplicable(f"the topology formats {device} without protection information (pi=0)")
        want = ns.integrity_format
        seen = self.guest(name).run(["cat", f"/sys/block/{device}/integrity/format"], timeout=30).stdout.strip() or "(none)"
        if seen != want:
            raise ScenarioError(f"the topology promised PI type {ns.pi} ({want}) on {device}, but the guest shows "
                                f"integrity format {seen!r}")
        return {"device": device, "format": seen, "pi": ns.pi, "pif": ns.pif, "lba": ns.lba, "ms": ns.ms}

    def namespace_device(self, machine: str, controller: int = 0, namespace: int = 0) -> str:
        """The guest's block device of a topology namespace, found by the controller's serial."""
        from lab.topology.argv import controller_serial

        ctrl = self.topology.machines[machine].nvme[controller]
        serial = controller_serial(machine, ctrl)
        nsid = ctrl.namespaces[namespace].nsid or namespace + 1
        script = (f'for c in /sys/class/nvme/nvme*; do [ "$(cat $c/serial 2>/dev/null | tr -d " ")" = {serial} ] '
                  f'&& basename $c; done')
        # The nvme driver probes asynchronously: a controller may register just after the guest is ready.
        deadline = time.monotonic() + 30
        while not (found := self.guest(machine).run(script, timeout=30).stdout.split()) and time.monotonic() < deadline:
            time.sleep(1)
        if not found:
            raise ScenarioError(f"{machine}: no NVMe controller with serial {serial} ({ctrl.id} of the topology)")
        return f"{found[0]}n{nsid}"

    def require_p2pmem(self, machine: str | None = None) -> dict[str, dict[str, Any]]:
        """Controllers whose CMB the guest published as P2P memory (controller id -> facts). N/A
        when the topology gives no CMB or the kernel has no PCI_P2PDMA; ERROR when both are there
        and the guest published nothing."""
        name = self.machine_name(machine)
        promised = [c for c in self.topology.machines[name].nvme if c.cmb_size_mb]
        if not promised:
            raise NotApplicable(f"the topology gives no controller of {name} a CMB")
        configured = self.kernel_config("PCI_P2PDMA", name)
        guest = self.guest(name)
        if configured == "unknown":
            configured = "y" if guest.run("grep -qw pci_p2pdma_add_resource /proc/kallsyms", timeout=60).ok else None
        if configured != "y":
            raise NotApplicable("no PCI_P2PDMA in this kernel (the CMB cannot be P2P memory)")
        from lab.topology.argv import controller_serial

        script = ('for c in /sys/class/nvme/nvme*; do d=$(readlink -f $c/device); '
                  'echo "$(cat $c/serial | tr -d " ") $(basename $d) '
                  '$(cat $d/p2pmem/size 2>/dev/null || echo -) $(cat $d/p2pmem/available 2>/dev/null || echo -) '
                  '$(cat $d/p2pmem/published 2>/dev/null || echo -)"; done')
        rows = {}
        for line in guest.run(script, timeout=30).stdout.splitlines():
            fields = line.split()
            if len(fields) == 5:
                rows[fields[0]] = fields[1:]
        out: dict[str, dict[str, Any]] = {}
        for ctrl in promised:
            row = rows.get(controller_serial(name, ctrl))
            if not row or row[1] == "-" or row[3] != "1":
                raise ScenarioError(f"the topology gives {ctrl.id} a {ctrl.cmb_size_mb} MiB CMB and the kernel has "
                                    f"PCI_P2PDMA, but the guest published no P2P memory for it")
            out[ctrl.id] = {"bdf": row[0], "size": int(row[1]), "available": int(row[2]), "published": True}
        return out


def merge_repetition(previous: dict[str, Any] | None, entry: dict[str, Any], repetition: int) -> dict[str, Any]:
    """One case over repetitions: FAIL when any repetition failed, ERROR when one errored and none
    failed (an ERROR never merges into a PASS), PASS when all that ran passed, else the latest
    verdict (N/A); the tally, the rate over completed repetitions and the first failure kept."""
    tally = dict((previous or {}).get("repetitions") or {"runs": 0, "passed": 0, "failed": 0, "other": 0})
    tally.setdefault("errored", 0)
    tally["runs"] += 1
    key = {PASS: "passed", FAIL: "failed"}.get(entry["verdict"], "other")
    tally[key] += 1
    if entry["verdict"] == ERROR:
        tally["errored"] += 1
    merged = dict(entry)
    merged["repetitions"] = tally
    first_failure = (previous or {}).get("first_failure")
    if first_failure is None and entry["verdict"] == FAIL:
        first_failure = {"repetition": repetition, "reason": entry["reason"],
                         **{k: v for k, v in entry.items() if k not in ("verdict", "reason", "repetitions", "first_failure")}}
    merged["first_failure"] = first_failure
    first_error = (previous or {}).get("first_error")
    if first_error is None and entry["verdict"] == ERROR:
        first_error = {"repetition": repetition, "reason": entry["reason"]}
    merged["first_error"] = first_error
    counted = tally["passed"] + tally["failed"]
    rate = Rate(tally["failed"], counted)
    if counted:
        merged["rate"] = rate.to_dict()
    errored = f"; {tally['errored']} of {tally['runs']} repetitions errored" if tally["errored"] else ""
    if tally["failed"] and first_failure is not None:
        merged["verdict"] = FAIL
        merged["reason"] = f"{rate.describe()}; first (repetition {first_failure['repetition']}): {first_failure['reason']}{errored}"
    elif tally["errored"] and first_error is not None:
        merged["verdict"] = ERROR
        merged["reason"] = (f"{tally['errored']} of {tally['runs']} repetitions errored (passed {tally['passed']}); first "
                            f"(repetition {first_error['repetition']}): {first_error['reason']}")
    elif tally["passed"]:
        merged["verdict"] = PASS
        merged["reason"] = f"passed {tally['passed']} of {tally['runs']} repetitions; last: {entry['reason']}"
    return merged


# -- running ----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    run_dir: RunDir
    results: dict[str, Any]
    ok: bool  # every verdict as expected (the exit status of `lab run`)
    table: str

    def signature(self) -> str:
        """The verdicts without the kernel labels: what bisect compares between steps."""
        subruns = self.results.get("subruns") or {}
        if not subruns:
            return ERROR
        parts = []
        for section in subruns.values():
            tag = ",".join(str(v) for v in section.get("facets", {}).values())
            parts.append(f"{tag}={section['verdict']}" if tag else section["verdict"])
        return ", ".join(parts)


def resolve_kernels(refs: Sequence[str], images: Sequence[str] = ()) -> dict[str, Kernel]:
    """Every kernel of the run, fetched or built before the first boot: a bad second kernel is
    found before the first one boots, and nothing waits for a download between sub-runs. Guest
    images missing from the cache are built meanwhile in a helper thread (mmdebstrap and the kernel
    downloads do not depend on each other: a first run overlaps them)."""
    from lab.images import ImagesInBackground
    from lab.kernels.resolve import resolve

    builder = ImagesInBackground(images)
    out: dict[str, Kernel] = {}
    for ref in dict.fromkeys(refs):
        out[ref] = resolve(ref)
    builder.join()
    return out


def check_against_qemu(variants: Sequence[Variant]) -> None:
    """Render each machine's QEMU command line once, without starting anything: properties this
    QEMU lacks and unknown CPU models are usage errors now, not a failed boot later."""
    from lab.qemu_caps import probe
    from lab.topology.argv import Accel, dry_run_files, machine_argv

    caps = probe()
    for v in variants:
        assert v.rendered is not None
        topo = v.rendered.topology
        for name in topo.machines:
            machine_argv(topo, name, dry_run_files(topo, name), caps, Accel("tcg"))


def run(name: str | type[Scenario], options: ScenarioOptions, tags: dict[str, Any] | None = None) -> Outcome:
    """Validate everything, then run every sub-run and write the results as the run goes. `tags`
    (a matrix cell's identity) go into the manifest and results.json."""
    from lab.log import to_file

    cls = get(name) if isinstance(name, str) else name
    scenario = cls(options)
    variants = scenario.plan()
    check_against_qemu(variants)
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
    says so, with nothing wrong before it in that boot), or None. Under KVM it is never the
    emulator's."""
    if lab is None or lab.chosen_accel is None or lab.chosen_accel.name != "tcg":
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
            continue
        sub.write(f"machines/{name}/query-status.json", json.dumps(status, indent=2))
        if not status.get("running", True):
            return f"{name} stopped answering: QMP says it is {status.get('status')!r} (console and query-status kept)"
    return None


def section_outcome(section: dict[str, Any]) -> str:
    verdict = section["verdict"]
    if verdict == ERROR:
        return "error"
    if verdict == NOT_APPLICABLE:
        return "not applicable"
    if section.get("attempt_failed"):
        return "unexpected failure (regression)"
    outcomes = [c["outcome"] for c in section["cases"].values() if c["verdict"] not in (NOT_APPLICABLE, INFO)]
    for bad in ("unexpected failure (regression)", "unexpected pass (finding)", "error", "flaky"):
        if bad in outcomes:
            return bad
    return "as expected"


def run_ok(results: dict[str, Any]) -> bool:
    subruns = results.get("subruns", {})
    return bool(subruns) and all(outcome_ok(s.get("outcome", "error")) for s in subruns.values())


def verdict_line(label: str, section: dict[str, Any]) -> str:
    line = f"{label}: {section['verdict']}"
    if section.get("outcome") not in ("as expected",) or section["verdict"] != PASS:
        line += f" ({section.get('outcome')})"
    rate = section.get("rate")
    if rate:
        line += f" {Rate(rate['failed'], rate['runs']).describe()} over {rate.get('repetitions', rate['runs'])} repetitions"
    line += f" - {section['reason']}"
    retries = section.get("boot", {}).get("retries") or []
    if retries:
        what = ", ".join(f"attempt {r['attempt']}: {r['phase']}" for r in retries)
        line += f" [boot retried {len(retries)}x after emulator faults: {what}]"
    again = section.get("attempts") or []
    if again:
        line += f" [sub-run run again {len(again)}x after the emulator failed the guest: {again[0]['fault'][:80]}; " \
                f"discarded attempts kept in {', '.join(a['dir'] for a in again)}]"
    return line


def summary(scenario: Scenario, results: dict[str, Any]) -> str:
    body = scenario.table(results) if results.get("subruns") else "no sub-run was made"
    lines = [verdict_line(label, s) for label, s in results.get("subruns", {}).items()]
    return body.rstrip() + "\n\n" + "\n".join(lines)


def junit_cases(scenario_name: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    cases = []
    for label, s in results.get("subruns", {}).items():
        classname = f"{scenario_name}.{label}"
        # A sub-run ERROR shows even after passing cases; so does a discarded attempt's failure.
        kind = ("error" if s["verdict"] == ERROR else "failure" if s.get("attempt_failed")
                else "skipped" if not s["cases"] and s["verdict"] == NOT_APPLICABLE else "error" if not s["cases"] else None)
        if kind is not None:
            cases.append({"name": "run", "classname": classname, "kind": kind, "message": s["reason"] or s["verdict"],
                          "seconds": s.get("seconds", 0)})
        for a in s.get("attempts") or []:
            cases.append({"name": f"attempt {a['attempt']} (discarded)", "classname": classname,
                          "kind": "failure" if a["failed"] or a["kernel_problems"] else "skipped",
                          "message": f"run again after the emulator failed the guest: {a['fault']}; kept in {a['dir']}",
                          "details": json.dumps(a, indent=1, default=str)[:4000]})
        for name, c in s["cases"].items():
            if c["verdict"] == ERROR:
                kind = "error"
            elif c["verdict"] == NOT_APPLICABLE:
                kind = "skipped"
            elif c["verdict"] == FLAKY:
                kind = "flaky"
            elif not outcome_ok(c["outcome"]):
                kind = "failure"
            else:
                kind = "pass"
            reruns = [f"failed again when run again: {c['reason']}"] if kind == "failure" and c.get("rerun") == "fail" else []
            cases.append({"name": name, "classname": classname, "kind": kind, "seconds": c.get("seconds", 0), "reruns": reruns,
                          "message": f"{c['verdict']} ({c['outcome']}): {c['reason']}",
                          "details": json.dumps({k: v for k, v in c.items() if k not in ("reason",)}, indent=1, default=str)[:4000]})
    return cases


def write_outputs(scenario: Scenario, run_dir: RunDir, results: dict[str, Any]) -> None:
    run_dir.write("results.json", json.dumps(results, indent=2, default=str))
    run_dir.write("summary.txt", summary(scenario, results) + "\n")
    junit.write(scenario.name, junit_cases(scenario.name, results), run_dir.path / "junit.xml")
