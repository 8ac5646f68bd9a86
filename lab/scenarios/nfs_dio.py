"""nfs-dio: the NFS O_DIRECT integrity matrix between the two VMs of nfs-rdma-pair, per transport:
user buffers at intra-page offsets, sizes across page and folio boundaries, vectored calls, each
read back by the client and checksummed on the server; pin counters before, after and at rest."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from functools import lru_cache
from typing import Any

from lab.errors import LabError, UsageError
from lab.paths import scenarios_dir
from lab.scenarios import nfs
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.options import ScenarioOptions, opt
from lab.scenarios.verdict import ERROR, FAIL, PASS, ProgramResult
from lab.guest import Guest

NAME = "nfs-dio"
DATA_FILE = "nfs-dio.dat"
CORRUPT_OFFSET = 17  # inside the first case (file offset 0, 1000 bytes)


@lru_cache(maxsize=1)
def case_names() -> tuple[str, ...]:
    """The guest program's case names, read from its source on the host (to check --only early)."""
    spec = importlib.util.spec_from_file_location("lab_nfs_dio_guest", scenarios_dir() / "nfs" / "nfs_dio.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(name for name, _, _ in module.cases())


class NfsDioOptions(ScenarioOptions):
    transports: list[nfs.Transport] = opt(["tcp", "rdma"], "tcp or rdma, repeatable (default: both)", flag="--transport",
                                          min_length=1)
    nfs_version: nfs.Version = opt("4.2", "NFS version (default: 4.2)")
    only: str | None = opt(None, "only the cases whose name contains this (e.g. 'align=100')", max_length=100)
    inject_corruption: bool = opt(False, "flip a byte of the file on the server between write and verify: the run must FAIL")


def judge_transport(result: ProgramResult, server_sums: dict[str, str] | None, pins: str,
                    witness: str = "the server") -> tuple[str, str]:
    """PASS when every case was written, read back equal and checksummed equal by the witness (the
    server's own file system, or the host for a 9p share)."""
    if result.error or result.data is None:
        return ERROR, result.error or "no result"
    cases = result.data["cases"]
    bad = [c for c in cases if "error" in c]
    if bad:
        return FAIL, f"{len(bad)} of {len(cases)} cases failed; first: {bad[0]['name']}: {bad[0]['error']}"
    if server_sums is None:
        return ERROR, f"{witness}'s checksums could not be computed"
    differ = [c["name"] for c in cases if server_sums.get(c["name"]) != c["sha256"]]
    if differ:
        return FAIL, (f"{len(differ)} of {len(cases)} cases differ at {witness} (its own checksum of the stored "
                      f"bytes); first: {differ[0]}")
    if pins.startswith("UNBALANCED"):
        return FAIL, pins
    return PASS, f"{len(cases)} cases verified by read-back and by {witness}'s checksum, {result.data['mib_per_s']} MiB/s"


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
            result, injected = self._run_with_corruption(ctx, server, client, argv + ["--stop-before-verify", "/tmp/lab-pause"], transport)
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

    def _run_with_corruption(self, ctx: Context, server: Guest, client: Guest, argv: list[object],
                             transport: str) -> tuple[ProgramResult, dict[str, Any]]:
        """Fault injection: flip one byte of the file on the server between the client's write and
        its verification, then let the client go on. The run must report the case and the offset."""
        holder: dict[str, Any] = {}

        def client_run() -> None:
            try:
                holder["res"] = ctx.run_program(argv, machine="client", timeout=1800, save_as=ctx.path(f"{transport}/nfs_dio.out"),
                                                required=("cases", "mib_per_s"), count="cases")
            except BaseException as exc:  # handed to the main thread below
                holder["exc"] = exc

        thread = threading.Thread(target=client_run)
        thread.start()
        # A second SSH session watches for the pause: one connection runs one command at a time.
        watcher = Guest("client", client.port, client.key_file)
        try:
            deadline = time.monotonic() + 300
            while not watcher.run("test -e /tmp/lab-pause", timeout=30).ok:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise LabError("client never reached the verification pause")
                time.sleep(0.5)
            flip = (f"f=open('{nfs.EXPORT}/{DATA_FILE}','r+b'); f.seek({CORRUPT_OFFSET}); b=f.read(1); "
                    f"f.seek({CORRUPT_OFFSET}); f.write(bytes([b[0] ^ 0xff])); f.close()")
            server.run(["python3", "-c", flip], timeout=60, check=True)
            server.run("sync", timeout=60)
            watcher.run("rm -f /tmp/lab-pause", timeout=30, check=True)
        finally:
            watcher.close()
            thread.join()
        if "exc" in holder:
            raise holder["exc"]
        return holder["res"], {"file_offset": CORRUPT_OFFSET}

    def table(self, results: dict[str, Any]) -> str:
        lines = []
        for label, k in results.get("subruns", {}).items():
            lines.append(f"{label} ({k.get('release', '?')})")
            for t, v in k["cases"].items():
                lines.append(f"  {t:5} {v['verdict']:5} {v['reason']}")
                if v.get("pins"):
                    lines.append(f"        pins: {v['pins']}")
        return "\n".join(lines)

