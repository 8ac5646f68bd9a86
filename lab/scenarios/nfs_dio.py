"""nfs-dio: the NFS O_DIRECT integrity matrix between the two VMs of nfs-rdma-pair, per transport:
user buffers at intra-page offsets, sizes across page and folio boundaries, vectored calls, each
read back by the client and checksummed on the server; pin counters before, after and at rest."""

from __future__ import annotations

import json
import time
from typing import Any

from lab.errors import LabError, UsageError
from lab.scenarios import nfs
from lab.scenarios.dio_matrix import CORRUPT_OFFSET, case_names, flip_in_guest, judge_transport, run_with_flip
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.options import ScenarioOptions, opt
from lab.scenarios.verdict import ERROR, ProgramResult
from lab.guest import Guest

NAME = "nfs-dio"
DATA_FILE = "nfs-dio.dat"


class NfsDioOptions(ScenarioOptions):
    transports: list[nfs.Transport] = opt(["tcp", "rdma"], "tcp or rdma, repeatable (default: both)", flag="--transport",
                                          min_length=1)
    nfs_version: nfs.Version = opt("4.2", "NFS version (default: 4.2)")
    only: str | None = opt(None, "only the cases whose name contains this (e.g. 'align=100')", max_length=100)
    inject_corruption: bool = opt(False, "flip a byte of the file on the server between write and verify: the run must FAIL")


@register
class NfsDio(Scenario):
    name = NAME
    summary = "NFS O_DIRECT integrity matrix between two VMs, over TCP and soft-RoCE"
    Options = NfsDioOptions
    topology = "nfs-rdma-pair"
    machines = ("server", "client")
    options: NfsDioOptions

    def check(self, variant) -> None:
        if self.options.only is not None and not any(self.options.only in n for n in case_names()):
            raise UsageError(f"--only {self.options.only!r} matches none of the {len(case_names())} cases "
                             f"(names look like '{case_names()[0]}')")

    def setup(self, ctx: Context) -> None:
        self.started = time.monotonic()
        nfs.setup_server(ctx.guest("server"), f"/dev/{ctx.namespace_device('server')}")
        self.program = ctx.put_scenario_file("nfs/nfs_dio.py", "client")
        self.checksum = ctx.put_scenario_file("nfs/checksum.py", "server")
        ctx.section["setup_seconds"] = round(time.monotonic() - self.started, 1)

    def exercise(self, ctx: Context) -> None:
        server, client = ctx.guest("server"), ctx.guest("client")
        for transport in self.options.transports:
            try:
                self._transport(ctx, server, client, self.program, self.checksum, transport, self.started)
            except LabError as exc:  # one transport that cannot be mounted does not hide the others
                ctx.case(transport, ERROR, str(exc).splitlines()[0], facets={"transport": transport})

    def _transport(self, ctx: Context, server: Guest, client: Guest, program: str, checksum: str, transport: str,
                   started: float) -> None:
        t0 = time.monotonic()
        line = nfs.mount(client, nfs.server_address(ctx.lab), self.options.nfs_version, transport)
        ctx.section.setdefault("mounted_seconds", {})[transport] = round(time.monotonic() - started, 1)
        ctx.note(f"mounted over {transport}: {line}")
        before = nfs.settled_vmstat_pins(client)
        argv: list[object] = ["python3", program, "--dir", nfs.MOUNT]
        if self.options.only:
            argv += ["--only", self.options.only]
        injected = None
        if self.options.inject_corruption:
            result = run_with_flip(ctx, argv, ctx.path(f"{transport}/nfs_dio.out"),
                                   lambda: flip_in_guest(server, f"{nfs.EXPORT}/{DATA_FILE}"))
            injected = {"file_offset": CORRUPT_OFFSET}
        else:
            result = ctx.run_program(argv, machine="client", timeout=1800, save_as=ctx.path(f"{transport}/nfs_dio.out"),
                                     required=("cases", "mib_per_s"), count="cases")
        after = nfs.vmstat_pins(client)
        client.run(f"sync; umount {nfs.MOUNT}", timeout=120)
        at_rest = nfs.settled_vmstat_pins(client)
        pins = nfs.describe_pins(before, at_rest)
        sums = self._server_checksums(ctx, server, checksum, result, transport) if not result.error else None
        verdict, reason = judge_transport(result, sums, pins)
        data = result.data or {}
        server_differs = [c["name"] for c in data.get("cases", []) if sums is not None and sums.get(c["name"]) != c.get("sha256")]
        ctx.case(transport, verdict, reason, facets={"transport": transport}, mount=line, pins=pins, injected=injected,
                 cases=len(data.get("cases", [])),
                 failed=[{"name": c["name"], "error": c["error"]} for c in data.get("cases", []) if "error" in c],
                 server_checksum_differs=server_differs,
                 mib_per_s=data.get("mib_per_s"), seconds=round(time.monotonic() - t0, 1),
                 vmstat={"before": before, "after_io": after, "at_rest": at_rest})

    def _server_checksums(self, ctx: Context, server: Guest, checksum: str, result: ProgramResult,
                          transport: str) -> dict[str, str] | None:
        assert result.data is not None
        wanted = [{"name": c["name"], "pos": c["pos"], "length": c["length"]} for c in result.data["cases"] if "sha256" in c]
        local = ctx.sub.write(ctx.path(f"{transport}/server-cases.json"), json.dumps(wanted))
        server.put(local, "/tmp/lab-cases.json")
        res = server.run(["python3", checksum, "--file", f"{nfs.EXPORT}/{DATA_FILE}", "--cases", "/tmp/lab-cases.json"], timeout=300)
        ctx.sub.write(ctx.path(f"{transport}/server-checksums.out"), res.stdout + res.stderr)
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])["cases"]
        except (ValueError, IndexError, KeyError):
            return None

    def table(self, results: dict[str, Any]) -> str:
        lines = []
        for label, k in results.get("subruns", {}).items():
            lines.append(f"{label} ({k.get('release', '?')})")
            for t, v in k["cases"].items():
                lines.append(f"  {t:5} {v['verdict']:5} {v['reason']}")
                if v.get("pins"):
                    lines.append(f"        pins: {v['pins']}")
        return "\n".join(lines)

