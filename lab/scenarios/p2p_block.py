"""p2p-block: O_DIRECT between NVMe namespaces through a buffer in one controller's CMB, per PCIe
placement, with the outcome the kernel's distance rules predict asserted for every pair: data
moved and verified where the pair is reachable, EINVAL plus the kernel's refusal line where not."""

from __future__ import annotations

import json
from typing import Any, Literal

from lab.scenarios.framework import Context, Scenario, ScenarioError, Variant, register, safe_label
from lab.scenarios.options import ScenarioOptions, opt
from lab.scenarios.p2p import REFUSAL_ERRNO, REFUSAL_MESSAGE, predict, preflight_report
from lab.scenarios.verdict import FAIL, INFO, PASS

NAME = "p2p-block"
Placement = Literal["switch", "root-port", "root-complex"]


class P2pBlockOptions(ScenarioOptions):
    placements: list[Placement] = opt(["switch", "root-port"], "PCIe placement of the two controllers, repeatable "
                                      "(default: switch and root-port)", flag="--placement", min_length=1)
    cpu: str | None = opt(None, "QEMU CPU model, e.g. EPYC (whitelisted by the kernel's host-bridge rule)",
                          pattern=r"^[A-Za-z0-9._-]+(,[A-Za-z0-9_.=-]+)*$", max_length=100)
    size: int = opt(1024, "KiB per I/O, a multiple of 4 up to 32768 (default: 1024)", gt=0, le=32768, multiple_of=4)
    use_cmb_sqes: bool | None = opt(None, "nvme.use_cmb_sqes: true or false (default: the kernel's)", metavar="BOOL")
    fault: Literal["none", "skip-transfer"] = opt("none", "inject a fault: skip-transfer reports each transfer as "
                                                  "done without doing it (the run must FAIL)")


def judge_case(name: str, case: dict[str, Any], reachable: bool, refusal_logged: bool) -> tuple[str, str]:
    """A case's verdict against the prediction. Mixed cases are recorded (INFO) unless they moved
    wrong data, which is a FAIL wherever it happens."""
    moved_wrong = case.get("ok") and case.get("difference") is not None
    if moved_wrong:
        diff = case["difference"]
        what = " (the destination still held the poison: nothing was transferred)" if diff.get("poison") else ""
        return FAIL, f"data differs at byte {diff['offset']}: got {diff['got']}, want {diff['want']}{what}"
    if name.startswith("mixed"):
        if case.get("ok"):
            return INFO, f"{case['bytes']} bytes moved and verified"
        return INFO, f"refused with {case['errno']} ({case.get('message')})"
    if reachable:
        if not case.get("ok"):
            return FAIL, f"expected to work, failed with {case['errno']} ({case.get('message')})"
        return PASS, f"{case['bytes']} bytes moved and verified"
    if case.get("ok"):
        return FAIL, "expected the kernel to refuse this pair, but the I/O succeeded"
    if case.get("errno") != REFUSAL_ERRNO:
        return FAIL, f"refused with {case['errno']}, but an unreachable pair is refused with {REFUSAL_ERRNO}"
    if not refusal_logged:
        return FAIL, f"refused with {REFUSAL_ERRNO}, but the kernel did not log '{REFUSAL_MESSAGE}'"
    return PASS, f"refused as predicted: {REFUSAL_ERRNO} and '{REFUSAL_MESSAGE}' in the kernel log"


@register
class P2pBlock(Scenario):
    name = NAME
    summary = "P2P pre-flight, then O_DIRECT through a CMB-backed buffer, per PCIe placement"
    Options = P2pBlockOptions
    topology = "p2p-switch"
    options: P2pBlockOptions

    def variants(self) -> list[Variant]:
        out = []
        for ref in self.kernels:
            for placement in self.options.placements:
                params: dict[str, Any] = {**self.options.params, "placement": placement}
                if self.options.cpu:
                    params["cpu"] = self.options.cpu
                if self.options.use_cmb_sqes is not None:
                    params["use_cmb_sqes"] = self.options.use_cmb_sqes
                out.append(Variant(safe_label(f"{ref}-{placement}"), ref, self.options.topology or self.topology, params,
                                   {"placement": placement}))
        return out

    def setup(self, ctx: Context) -> None:
        ctx.require_p2pmem()
        guest = ctx.guest()
        preflight = ctx.put_scenario_file("p2p/preflight.py")
        self.program = ctx.put_scenario_file("p2p/p2p_dio.py")
        try:
            facts = json.loads(guest.run(["python3", preflight], timeout=120, check=True).stdout)
        except ValueError as exc:
            raise ScenarioError(f"pre-flight output unreadable: {exc}") from None
        ctx.sub.write("preflight.json", json.dumps(facts, indent=2))
        report = preflight_report(facts)
        ctx.sub.write("preflight.txt", "\n".join(report) + "\n")
        for line in report:
            ctx.note(line.strip())
        ctx.section["preflight"] = report
        ctrls = facts["controllers"]
        providers = [n for n in sorted(ctrls) if ctrls[n]["p2pmem"] and ctrls[n]["namespaces"]]
        others = [n for n in sorted(ctrls) if n not in providers[:1] and ctrls[n]["namespaces"]]
        if not providers or not others:
            raise ScenarioError(f"needs a controller with P2P memory and a second one with a namespace; the guest has: "
                                f"{', '.join(sorted(ctrls)) or 'none'}")
        self.facts, self.provider, self.other = facts, ctrls[providers[0]], ctrls[others[0]]

    def exercise(self, ctx: Context) -> None:
        guest, facts, program = ctx.guest(), self.facts, self.program
        provider, other = self.provider, self.other
        for label, client in (("same-device", provider), ("other-device", other)):
            reachable, why = predict(provider, client, facts["cpu"], facts.get("host_bridge"))
            ns = f"/dev/{client['namespaces'][0]}"
            guest.run("dmesg -C", timeout=30)
            argv: list[object] = ["python3", program, "--provider", provider["bdf"], "--src", ns, "--dst", ns,
                                  "--size", self.options.size << 10, "--offset", 8 << 20, "--fault", self.options.fault]
            if label == "other-device" and other["p2pmem"]:
                argv += ["--provider2", other["bdf"]]
            result = ctx.run_program(argv, timeout=300, save_as=ctx.path(f"cases/{label}.out"), required=("cases",), count="cases")
            dmesg = ctx.dmesg()
            ctx.sub.write(ctx.path(f"cases/{label}.dmesg"), dmesg)
            if result.error or result.data is None:
                ctx.case(label, "ERROR", result.error or "no result")
                continue
            logged = [line.split("] ", 1)[-1] for line in dmesg.splitlines() if "peer-to-peer" in line or "WARNING" in line]
            for cname, case in result.data["cases"].items():
                verdict, reason = judge_case(cname, case, reachable, any(REFUSAL_MESSAGE in line for line in logged))
                ctx.case(f"{label}/{cname}", verdict, reason, expected_behaviour="works" if reachable else "refused",
                         why=why, result=case, kernel_messages=logged[:5])

    def table(self, results: dict[str, Any]) -> str:
        lines = []
        for label, r in results.get("subruns", {}).items():
            lines.append(f"{label} ({r.get('release', '?')})")
            for name, c in r["cases"].items():
                lines.append(f"  {name:32} {c['verdict']:5} expected {c.get('expected_behaviour', '-'):8} {c['reason']}")
        return "\n".join(lines)
