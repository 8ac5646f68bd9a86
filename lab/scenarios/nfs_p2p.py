"""nfs-p2p: O_DIRECT on the NFS mount from a buffer in the client's CMB. Every transport the lab
has must refuse it with EREMOTEIO: without the NFS P2PDMA series the direct path cannot take P2P
pages; with it, TCP has no P2P capability and soft-RoCE/siw use virtual DMA. The refusal is
asserted by its errno, never skipped; data is verified wherever an I/O does succeed."""

from __future__ import annotations

from typing import Any, Literal

from lab.errors import LabError
from lab.scenarios import nfs
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.options import ScenarioOptions, opt
from lab.scenarios.verdict import ERROR, FAIL, PASS
from lab.guest import Guest

NAME = "nfs-p2p"
REFUSAL_ERRNO = "EREMOTEIO"


class NfsP2pOptions(ScenarioOptions):
    transports: list[nfs.Transport] = opt(["tcp", "rdma"], "tcp or rdma, repeatable (default: both)", flag="--transport",
                                          min_length=1)
    nfs_version: nfs.Version = opt("4.2", "NFS version (default: 4.2)")
    fault: Literal["none", "ordinary-memory"] = opt("none", "inject a fault: ordinary-memory does the I/O from an "
                                                    "anonymous buffer instead of the CMB (the run must FAIL)")


def nfs_p2p_support(guest: Guest) -> bool:
    """Whether the client kernel carries the NFS P2PDMA series (its transport op is a symbol)."""
    return guest.run("grep -qwE 'xprt_rdma_supports_p2pdma|nfs_.*p2pdma|rpc_.*supports_p2pdma' /proc/kallsyms", timeout=60).ok


def why_refused(support: bool, transport: str) -> str:
    if not support:
        return "no NFS P2P support in this kernel: the direct path cannot take P2P pages"
    if transport == "rdma":
        return "NFS P2P support present, but rxe/siw use virtual DMA and cannot map P2P pages"
    return "NFS P2P support present, but TCP has no P2P capability"


def judge(result: dict[str, Any], expectation: str) -> tuple[str, str]:
    """Both the write and the read must be refused with EREMOTEIO; wrong data anywhere is a FAIL."""
    wrong = [op for op in ("write", "read") if result[op]["ok"] and not result[op].get("data_matches")]
    if wrong:
        return FAIL, f"{' and '.join(wrong)} moved wrong data"
    succeeded = [op for op in ("write", "read") if result[op]["ok"]]
    if succeeded:
        return FAIL, f"expected a refusal with {REFUSAL_ERRNO} ({expectation}); {' and '.join(succeeded)} succeeded"
    errnos = {op: result[op]["errno"] for op in ("write", "read")}
    other = {op: e for op, e in errnos.items() if e != REFUSAL_ERRNO}
    if other:
        shown = ", ".join(f"{op} {e}" for op, e in other.items())
        return FAIL, f"refused with the wrong errno ({shown}); expected {REFUSAL_ERRNO} ({expectation})"
    return PASS, f"write and read refused with {REFUSAL_ERRNO}: {expectation}"


@register
class NfsP2p(Scenario):
    name = NAME
    summary = "NFS O_DIRECT from a buffer in the client's CMB: the refusal each kernel and transport must give"
    Options = NfsP2pOptions
    topology = "nfs-rdma-pair"
    machines = ("server", "client")
    options: NfsP2pOptions

    def setup(self, ctx: Context) -> None:
        p2pmem = ctx.require_p2pmem("client")
        self.bdf = next(iter(p2pmem.values()))["bdf"]
        nfs.setup_server(ctx.guest("server"), f"/dev/{ctx.namespace_device('server')}")
        self.program = ctx.put_scenario_file("nfs/nfs_p2p.py", "client")

    def exercise(self, ctx: Context) -> None:
        client = ctx.guest("client")
        for transport in self.options.transports:
            try:
                self._transport(ctx, client, self.program, self.bdf, transport)
            except LabError as exc:
                ctx.case(transport, ERROR, str(exc).splitlines()[0], facets={"transport": transport})

    def _transport(self, ctx: Context, client: Guest, program: str, bdf: str, transport: str) -> None:
        nfs.mount(client, nfs.server_address(ctx.lab), self.options.nfs_version, transport)
        support = nfs_p2p_support(client)
        expectation = why_refused(support, transport)
        client.run("dmesg -C", timeout=30)
        result = ctx.run_program(["python3", program, "--provider", bdf, "--file", f"{nfs.MOUNT}/p2p.dat",
                                  "--fault", self.options.fault],
                                 machine="client", timeout=600, save_as=ctx.path(f"{transport}/nfs_p2p.out"),
                                 required=("write", "read"), count=None)
        dmesg = ctx.dmesg("client")
        ctx.sub.write(ctx.path(f"{transport}/dmesg"), dmesg)
        client.run(["umount", nfs.MOUNT], timeout=120)
        if result.error or result.data is None:
            ctx.case(transport, ERROR, result.error or "no result", facets={"transport": transport})
            return
        verdict, reason = judge(result.data, expectation)
        ctx.case(transport, verdict, reason, facets={"transport": transport}, nfs_p2p_support=support, result=result.data,
                 kernel_messages=[line.split("] ", 1)[-1] for line in dmesg.splitlines()
                                  if "p2p" in line.lower() or "peer-to-peer" in line][:5])

    def table(self, results: dict[str, Any]) -> str:
        lines = []
        for label, k in results.get("subruns", {}).items():
            lines.append(f"{label} ({k.get('release', '?')})")
            for t, v in k["cases"].items():
                lines.append(f"  {t:5} {v['verdict']:5} {v['reason']}")
        return "\n".join(lines)
