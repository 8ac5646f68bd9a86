"""What a scenario's exercise() gets: the booted lab, the sub-run directory, ways to run guest
programs and record cases (each judged against the expectations and the kernel log of its window),
and the NVMe/P2P preconditions scenarios share."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lab import kernel_log
from lab.guest import Guest
from lab.kernels.kernel import Kernel
from lab.lab import Lab
from lab.machine import stale_int3
from lab.paths import scenarios_dir
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios.base import NotApplicable, Scenario, ScenarioError, Variant
from lab.scenarios.expect import ERROR, PASS, expectation_for, outcome
from lab.scenarios.verdict import FAIL, ProgramResult, parse_program_output
from lab.stats import Rate

LOG = logging.getLogger(__name__)

GUEST_DIR = "/usr/local/lib/lab"


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
