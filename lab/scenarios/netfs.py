"""netfs-dio: the integrity matrix of nfs-dio (user buffers at intra-page offsets, sizes across page
and folio boundaries, vectored calls; O_DIRECT and buffered; read back and compared, the failing
case named) on the network file systems the netfs series moves to segmented bio_vec chains:

    9p    virtio-9p to a host directory kept in the run directory; the host checksums the bytes
    cifs  SMB 3.1.1 to ksmbd on the server VM, over TCP (SMB Direct over rxe/siw where the kernel
          has it); the server checksums its own file
    nfs   for comparison, as nfs-dio does

The transport in use is proven from /proc/mounts the way nfs-dio proves proto=, and
--inject-corruption flips a byte behind the client's back on each of them."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal

from lab.errors import LabError, UsageError
from lab.scenarios import nfs
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.dio_matrix import CORRUPT_OFFSET, case_names, flip_in_guest, flip_on_host, judge_transport, run_with_flip
from lab.scenarios.netmounts import MOUNTS, SMB_EXPORT, mount_9p, mount_cifs, setup_smb_server
from lab.scenarios.options import ScenarioOptions, opt
from lab.scenarios.verdict import ERROR, ProgramResult

LOG = logging.getLogger(__name__)

NAME = "netfs-dio"
FS = Literal["9p", "cifs", "nfs"]
DATA_FILE = "netfs-dio.dat"


class NetfsOptions(ScenarioOptions):
    fs: list[FS] = opt(["9p", "cifs", "nfs"], "file system, repeatable (default: 9p, cifs and nfs)", min_length=1)
    transports: list[nfs.Transport] = opt(["tcp"], "for cifs and nfs: tcp or rdma, repeatable (default: tcp)",
                                          flag="--transport", min_length=1)
    modes: list[Literal["direct", "buffered"]] = opt(["direct", "buffered"], "O_DIRECT, buffered, or both (default)",
                                                     flag="--mode", min_length=1)
    only: str | None = opt(None, "only the cases whose name contains this", max_length=100)
    inject_corruption: bool = opt(False, "flip a byte of the file behind the client's back between write and verify: "
                                  "the run must FAIL")


@register
class NetfsDio(Scenario):
    name = NAME
    summary = "the O_DIRECT and buffered integrity matrix on 9p, cifs and nfs (the netfs series)"
    Options = NetfsOptions
    topology = "netfs-pair"
    machines = ("server", "client")
    options: NetfsOptions

    def check(self, variant) -> None:
        assert variant.rendered is not None
        client = variant.rendered.topology.machines["client"]
        if "9p" in self.options.fs and not any(s.tag == "lab9p" for s in client.shares):
            raise UsageError(f"--fs 9p: topology {variant.topology} gives the client no 9p share 'lab9p'")
        if self.options.only is not None and not any(self.options.only in n for n in case_names()):
            raise UsageError(f"--only {self.options.only!r} matches none of the {len(case_names())} cases")

    def setup(self, ctx: Context) -> None:
        server = ctx.guest("server")
        if {"nfs", "cifs"} & set(self.options.fs):
            nfs.setup_server(server, f"/dev/{ctx.namespace_device('server')}")
        if "cifs" in self.options.fs:
            setup_smb_server(server)
        self.program = ctx.put_scenario_file("nfs/nfs_dio.py", "client")
        self.checksum = ctx.put_scenario_file("nfs/checksum.py", "server")

    def combinations(self) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        for fs in self.options.fs:
            for transport in (["virtio"] if fs == "9p" else self.options.transports):
                for mode in self.options.modes:
                    out.append((fs, transport, mode))
        return out

    def exercise(self, ctx: Context) -> None:
        for fs, transport, mode in self.combinations():
            name = f"{fs}-{transport}-{mode}"
            try:
                self._one(ctx, name, fs, transport, mode)
            except LabError as exc:
                ctx.case(name, ERROR, str(exc).splitlines()[0], facets={"fs": fs, "transport": transport, "mode": mode})

    def _mount(self, ctx: Context, fs: str, transport: str) -> str:
        client = ctx.guest("client")
        if fs == "9p":
            return mount_9p(client)
        if fs == "cifs":
            return mount_cifs(client, nfs.server_address(ctx.lab), transport)
        return nfs.mount(client, nfs.server_address(ctx.lab), "4.2", transport)

    def _one(self, ctx: Context, name: str, fs: str, transport: str, mode: str) -> None:
        client = ctx.guest("client")
        t0 = time.monotonic()
        line = self._mount(ctx, fs, transport)
        argv: list[object] = ["python3", self.program, "--dir", MOUNTS[fs], "--file", DATA_FILE]
        if mode == "buffered":
            argv.append("--buffered")
        if self.options.only:
            argv += ["--only", self.options.only]
        injected = None
        save = ctx.path(f"{name}/dio.out")
        if self.options.inject_corruption:
            result, injected = self._with_corruption(ctx, fs, argv, save)
        else:
            result = ctx.run_program(argv, machine="client", timeout=1800, save_as=save, required=("cases", "mib_per_s"), count="cases")
        client.run(f"sync; umount {MOUNTS[fs]}", timeout=120)
        sums = self._witness(ctx, fs, result, name) if not result.error else None
        verdict, reason = judge_transport(result, sums, "not audited here", witness="the host" if fs == "9p" else "the server")
        data = result.data or {}
        ctx.case(name, verdict, reason, facets={"fs": fs, "transport": transport, "mode": mode}, mount=line, injected=injected,
                 cases=len(data.get("cases", [])), mib_per_s=data.get("mib_per_s"), seconds=round(time.monotonic() - t0, 1),
                 failed=[{"name": c["name"], "error": c["error"]} for c in data.get("cases", []) if "error" in c],
                 witness_differs=[c["name"] for c in data.get("cases", []) if sums is not None and sums.get(c["name"]) != c.get("sha256")])

    def _share_file(self, ctx: Context) -> Path:
        return ctx.lab.files["client"].shares["lab9p"] / DATA_FILE

    def _witness(self, ctx: Context, fs: str, result: ProgramResult, name: str) -> dict[str, str] | None:
        """The bytes' checksums from where they are stored: the host's share for 9p, the server's
        own file system for cifs and nfs."""
        assert result.data is not None
        cases = [c for c in result.data["cases"] if "sha256" in c]
        if fs == "9p":
            out = {}
            with open(self._share_file(ctx), "rb") as f:
                for c in cases:
                    f.seek(c["pos"])
                    out[c["name"]] = hashlib.sha256(f.read(c["length"])).hexdigest()
            return out
        path = f"{SMB_EXPORT}/{DATA_FILE}" if fs == "cifs" else f"{nfs.EXPORT}/{DATA_FILE}"
        local = ctx.sub.write(ctx.path(f"{name}/witness-cases.json"), json.dumps(
            [{"name": c["name"], "pos": c["pos"], "length": c["length"]} for c in cases]))
        server = ctx.guest("server")
        server.put(local, "/tmp/lab-cases.json")
        res = server.run(["python3", self.checksum, "--file", path, "--cases", "/tmp/lab-cases.json"], timeout=300)
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])["cases"]
        except (ValueError, IndexError, KeyError):
            return None

    def _with_corruption(self, ctx: Context, fs: str, argv: list[object], save: str) -> tuple[ProgramResult, dict[str, Any]]:
        if fs == "9p":
            share_file = str(self._share_file(ctx))
            flip: Callable[[], None] = lambda: flip_on_host(share_file)  # noqa: E731 - behind the guest's back, on the host
        else:
            path = f"{SMB_EXPORT}/{DATA_FILE}" if fs == "cifs" else f"{nfs.EXPORT}/{DATA_FILE}"
            flip = lambda: flip_in_guest(ctx.guest("server"), path)  # noqa: E731
        result = run_with_flip(ctx, argv, save, flip)
        return result, {"file_offset": CORRUPT_OFFSET, "where": "host share" if fs == "9p" else "server"}

    def table(self, results: dict[str, Any]) -> str:
        lines = []
        for label, s in results.get("subruns", {}).items():
            lines.append(f"{label} ({s.get('release', '?')})")
            for name, c in s["cases"].items():
                rate = f"{c.get('mib_per_s')} MiB/s" if c.get("mib_per_s") is not None else ""
                lines.append(f"  {name:24} {c['verdict']:5} {rate:14} {c['reason'][:110]}")
        return "\n".join(lines)
