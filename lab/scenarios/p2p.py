"""P2PDMA: pre-flight (who publishes P2P memory, which provider/client pairs the kernel's distance
rules allow for this PCIe layout) and the p2p-block scenario (O_DIRECT between NVMe namespaces
through a CMB-backed buffer, with data verification, the expected outcome asserted per pair)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lab import junit
from lab.errors import BootError, LabError, UsageError
from lab.lab import Lab
from lab.paths import scenarios_dir
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios.runner import run_jobs
from lab.scenarios.verdict import ERROR, FAIL, PASS, outcome_ok
from lab.topology.render import render

NAME = "p2p-block"
NOT_APPLICABLE = "N/A"
PLACEMENTS = ("switch", "root-port", "root-complex")
GUEST_DIR = "/usr/local/lib/lab"


# -- the kernel's distance rules, as far as the lab predicts them ---------------------------------
def host_bridge_whitelisted(cpu: dict, host_bridge: dict | None) -> bool:
    """drivers/pci/p2pdma.c: AMD Zen (family >= 0x17) and a short list of Intel host bridges, of
    which QEMU's q35 (8086:29c0) is not one."""
    if cpu.get("vendor") == "AuthenticAMD" and cpu.get("family", 0) >= 0x17:
        return True
    intel = {"0x3c00", "0x2f00", "0x2030", "0x2020", "0x09a2"}
    return bool(host_bridge and host_bridge.get("vendor") == "0x8086" and host_bridge.get("device") in intel)


def predict(provider: dict, client: dict, cpu: dict, host_bridge: dict | None) -> tuple[bool, str]:
    """(reachable, why) for DMA from client's device into provider's P2P memory."""
    if provider["bdf"] == client["bdf"]:
        return True, "same device"
    a, b = provider["path"], client["path"]
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    below = [*a[common:-1], *b[common:-1]]
    acs = [bdf for bdf in below + a[:common] if (provider["acs_redirect"] | client["acs_redirect"]).get(bdf)]
    if common > 0 and not acs:
        return True, f"common upstream bridge {a[common - 1]} (a PCIe switch)"
    reason = f"ACS redirect on {', '.join(acs)}" if acs else "no common upstream bridge: the path goes through the host bridge"
    if host_bridge_whitelisted(cpu, host_bridge):
        return True, f"{reason}, which is whitelisted (CPU {cpu.get('vendor')} family {cpu.get('family'):#x})"
    return False, f"{reason}, which is not whitelisted (CPU {cpu.get('vendor')} family {cpu.get('family'):#x})"


def preflight_report(facts: dict) -> list[str]:
    lines = [f"kernel {facts['kernel']}, CPU {facts['cpu']['vendor']} family {facts['cpu']['family']:#x}, "
             f"nvme.use_cmb_sqes={facts.get('sqes_in_cmb')}"]
    ctrls = facts["controllers"]
    for name, c in ctrls.items():
        mem = c["p2pmem"]
        desc = (f"p2pmem {mem['size'] >> 20} MiB, {mem['available'] >> 10} KiB available, published {mem['published']}"
                if mem else "no p2pmem")
        lines.append(f"  {name} {c['bdf']} path {' > '.join(c['path'])}: {desc}")
    for pname, p in ctrls.items():
        if not p["p2pmem"]:
            continue
        for cname, c in ctrls.items():
            ok, why = predict(p, c, facts["cpu"], facts.get("host_bridge"))
            lines.append(f"  provider {pname} <- client {cname}: {'reachable' if ok else 'refused'} ({why})")
    for m in facts["messages"][-6:]:
        lines.append(f"  dmesg: {m.split('] ', 1)[-1]}")
    return lines


# -- scenario -----------------------------------------------------------------------------------
@dataclass
class Options:
    kernels: list[str] = field(default_factory=lambda: ["debian:7.3"])
    placements: list[str] = field(default_factory=lambda: ["switch", "root-port"])
    cpu: str | None = None
    size: int = 1 << 20
    use_cmb_sqes: bool | None = None
    accel: str = "auto"

    def validate(self) -> None:
        for p in self.placements:
            if p not in PLACEMENTS:
                raise UsageError(f"--placement {p!r}: choose from {', '.join(PLACEMENTS)}")
        if self.size % 4096 or not 4096 <= self.size <= 32 << 20:
            raise UsageError("--size must be a multiple of 4096 up to 32 MiB")

    def to_dict(self) -> dict:
        return {"kernels": self.kernels, "placements": self.placements, "cpu": self.cpu, "size": self.size,
                "use_cmb_sqes": self.use_cmb_sqes}


def _judge_case(name: str, case: dict, reachable: bool) -> tuple[str, str]:
    if name.startswith("mixed"):
        if case["ok"]:
            diff = case.get("difference")
            return ("PASS" if diff is None else FAIL), ("moved the data intact" if diff is None else f"data differs at {diff}")
        return "RECORDED", f"refused with {case['errno']} ({case.get('message')})"
    if reachable:
        if not case["ok"]:
            return FAIL, f"expected to work, failed with {case['errno']} ({case.get('message')})"
        if case.get("difference") is not None:
            return FAIL, f"data differs: {case['difference']}"
        return PASS, f"{case['bytes']} bytes moved and verified"
    if case["ok"]:
        return FAIL, "expected a refusal, but the I/O succeeded"
    return PASS, f"refused as expected with {case['errno']}"


def run_kernel(options: Options, ref: str, placement: str, sub: RunDir) -> dict:
    params = {"placement": placement}
    if options.cpu:
        params["cpu"] = options.cpu
    if options.use_cmb_sqes is not None:
        params["use_cmb_sqes"] = options.use_cmb_sqes
    section: dict = {"kernel": ref, "placement": placement, "cases": {}, "verdict": ERROR, "reason": ""}
    sub.update(scenario=NAME, options=options.to_dict(), kernel_ref=ref, placement=placement)
    try:
        with Lab(render("p2p-switch", params), kernel_ref=ref, accel=options.accel, run=sub) as lab:
            guest = lab.guest("vm")
            kernel = lab.kernels["vm"]
            section["release"] = kernel.release
            guest.run(f"mkdir -p {GUEST_DIR}", check=True)
            for script in ("preflight.py", "p2p_dio.py"):
                guest.put(scenarios_dir() / "p2p" / script, f"{GUEST_DIR}/{script}")
            facts = json.loads(guest.run(f"python3 {GUEST_DIR}/preflight.py", timeout=120, check=True).stdout)
            sub.write("preflight.json", json.dumps(facts, indent=2))
            report = preflight_report(facts)
            sub.write("preflight.txt", "\n".join(report) + "\n")
            for line in report:
                info(f"{ref} {placement}: {line.strip()}")
            section["preflight"] = report
            ctrls = facts["controllers"]
            if kernel.config_value("PCI_P2PDMA") != "y" or not any(c["p2pmem"] for c in ctrls.values()):
                why = "no PCI_P2PDMA in this kernel" if kernel.config_value("PCI_P2PDMA") != "y" else "no controller published p2pmem"
                section.update(verdict=NOT_APPLICABLE, reason=f"not applicable: {why}")
                return section
            names = sorted(ctrls)
            provider, other = ctrls[names[0]], ctrls[names[1]]
            pairs = {"same-device": (provider, provider), "other-device": (provider, other)}
            for label, (prov, client) in pairs.items():
                reachable, why = predict(prov, client, facts["cpu"], facts.get("host_bridge"))
                ns = f"/dev/{client['namespaces'][0]}"
                guest.run("dmesg -C", timeout=30)
                cmd = (f"python3 {GUEST_DIR}/p2p_dio.py --provider {prov['bdf']} --src {ns} --dst {ns} "
                       f"--size {options.size} --offset {8 << 20}")
                if label == "other-device":
                    cmd += f" --provider2 {other['bdf']}"
                res = guest.run(cmd, timeout=300)
                sub.write(f"cases/{label}.out", res.stdout + res.stderr)
                dmesg = guest.run("dmesg", timeout=30).stdout
                sub.write(f"cases/{label}.dmesg", dmesg)
                try:
                    out = json.loads(res.stdout.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    section["cases"][label] = {"verdict": ERROR, "reason": f"unreadable output: {res.stderr.strip()[-200:]}"}
                    continue
                if out.get("error"):
                    section["cases"][label] = {"verdict": ERROR, "reason": out["error"]}
                    continue
                warnings = [l.split("] ", 1)[-1] for l in dmesg.splitlines() if "peer-to-peer" in l or "WARNING" in l]
                for cname, case in out["cases"].items():
                    verdict, reason = _judge_case(cname, case, reachable)
                    key = f"{label}/{cname}"
                    section["cases"][key] = {"verdict": verdict, "reason": reason, "expected": "works" if reachable else "refused",
                                             "why": why, "result": case, "kernel_messages": warnings[:5]}
                    info(f"{ref} {placement}: {key}: {verdict}: {reason}")
    except (BootError, LabError) as exc:
        section["reason"] = str(exc).splitlines()[0]
        sub.write("error.txt", str(exc))
        return section
    finally:
        sub.write("verdict.json", json.dumps(section, indent=2))
    verdicts = [c["verdict"] for c in section["cases"].values() if c["verdict"] != "RECORDED"]
    section["verdict"] = ERROR if ERROR in verdicts or not verdicts else FAIL if FAIL in verdicts else PASS
    sub.write("verdict.json", json.dumps(section, indent=2))
    sub.finish("done", verdict=section["verdict"])
    return section


def run(options: Options) -> tuple[RunDir, dict]:
    options.validate()
    jobs = [(f"{ref.replace(':', '-')}-{placement}", ref,
             lambda sub, ref=ref, placement=placement: run_kernel(options, ref, placement, sub))
            for ref in options.kernels for placement in options.placements]
    return run_jobs(NAME, "p2p-switch", options.to_dict(), jobs, _write, key="runs")


def all_ok(results: dict) -> bool:
    return bool(results["runs"]) and all(r["verdict"] in (PASS, NOT_APPLICABLE) for r in results["runs"].values())


def table(results: dict) -> str:
    lines = []
    for label, r in results["runs"].items():
        lines.append(f"{label}: {r['verdict']}{' - ' + r['reason'] if r['verdict'] in (NOT_APPLICABLE, ERROR) else ''}")
        for name, c in r["cases"].items():
            lines.append(f"  {name:32} {c['verdict']:8} expected {c.get('expected', '-'):8} {c['reason']}")
    return "\n".join(lines)


def _write(run_dir: RunDir, results: dict) -> None:
    run_dir.write("results.json", json.dumps(results, indent=2))
    run_dir.write("summary.txt", table(results) + "\n")
    cases = []
    for label, r in results["runs"].items():
        if not r["cases"]:
            outcome = "error" if r["verdict"] == ERROR else "as expected"
            cases.append({"name": "p2p", "classname": f"{NAME}.{label}", "outcome": outcome, "ok": r["verdict"] != ERROR,
                          "message": r["reason"] or r["verdict"]})
        for name, c in r["cases"].items():
            outcome = "error" if c["verdict"] == ERROR else "as expected" if c["verdict"] in (PASS, "RECORDED") else "unexpected"
            cases.append({"name": name, "classname": f"{NAME}.{label}", "outcome": outcome, "ok": outcome_ok(outcome),
                          "message": f"{c['verdict']}: {c['reason']}"})
    junit.write(NAME, cases, run_dir.path / "junit.xml")

