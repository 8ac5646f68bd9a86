"""pin-audit: which direct-I/O paths pin user pages (FOLL_PIN) and which still take page
references, per file system and kernel, and whether the pins are balanced at rest.

For every row (XFS and ext4 on NVMe with and without PI, the raw block devices, NFS over TCP and
RDMA, 9p, cifs, FUSE when the image has a FUSE file system) the guest program does O_DIRECT writes
and reads while the lab counts, for that program only, the calls of the kernel's page-taking
helpers through kprobe events (lab/scenarios/kprobes.py: pin_user_pages_fast, which iov_iter_extract_pages uses
to pin a user buffer; get_user_pages_fast, which iov_iter_get_pages2 and _alloc2 use to take
references), and reads
nr_foll_pin_acquired/released from /proc/vmstat before, after the I/O and at rest (unmounted and
synced). Unbalanced pins are FAIL; a row where neither pins nor references moved although I/O was
done is ERROR (the probes missed the path). `scenarios/pin-audit/expect.toml` records which
mechanism each row uses on each kernel, so a kernel built with a conversion series shows the rows
that changed."""

from __future__ import annotations

from typing import Any

from lab import guestprog
from lab.errors import LabError, UsageError
from lab.paths import scenarios_dir
from lab.scenarios import nfs
from lab.scenarios.expect import expectation_for
from lab.scenarios.framework import Context, Scenario, register
from lab.scenarios.kprobes import Kprobes
from lab.scenarios.netmounts import MOUNTS, mount_9p, mount_cifs, setup_smb_server
from lab.scenarios.options import ScenarioOptions, opt
from lab.scenarios.verdict import ERROR, FAIL, NOT_APPLICABLE, PASS
from lab.guest import Guest

NAME = "pin-audit"
PROGRAM = "/usr/local/bin/dio_mutate"
COMM = "dio_mutate"
# iov_iter_extract_pages() pins a user buffer through pin_user_pages_fast(); iov_iter_get_pages2() and
# _alloc2() take references through get_user_pages_fast(). The iov_iter helpers themselves are notrace
# (no kprobes), the gup entry points are not.
PROBES = {"pin": "pin_user_pages_fast", "get": "get_user_pages_fast"}
LOCAL = ("xfs-pi", "xfs-nopi", "ext4-pi", "ext4-nopi", "raw-pi", "raw-nopi")
REMOTE = ("nfs-tcp", "nfs-rdma", "9p", "cifs-tcp", "fuse")
ROWS = LOCAL + REMOTE
MOUNT = "/mnt/pin"

def mechanism(pins: int, references: int) -> str:
    if pins and not references:
        return "pins"
    if references and not pins:
        return "references"
    if pins and references:
        return "both"
    return "none"


def judge(row: str, pins: dict[str, int], refs: int, ops: int, balanced: bool) -> tuple[str, str]:
    kind = mechanism(pins["acquired"], refs)
    if not ops:
        return ERROR, "no I/O was done"
    if kind == "none":
        return ERROR, "neither pins nor page references moved although I/O was done: the probes missed this path"
    if not balanced:
        return FAIL, (f"UNBALANCED at rest: {pins['acquired']} pins acquired, {pins['released']} released "
                      f"({pins['acquired'] - pins['released']} still held)")
    return PASS, f"{kind}: {pins['acquired']} pins acquired and released, {refs} reference-taking calls"


class PinAuditOptions(ScenarioOptions):
    rows: list[str] = opt(list(ROWS), "rows to audit, repeatable: " + ", ".join(ROWS) + " (default: all)", flag="--row",
                          min_length=1)
    seconds: float = opt(2.0, "seconds of I/O per direction and row (default: 2)", gt=0, le=600, metavar="SECONDS")


@register
class PinAudit(Scenario):
    name = NAME
    summary = "which direct-I/O paths pin pages and which take references, per file system; unbalanced pins fail"
    Options = PinAuditOptions
    topology = "netfs-pair"
    machines = ("server", "client")
    default_kernels = ("debian:6.12", "debian:7.3")
    expect_file = scenarios_dir() / NAME / "expect.toml"
    options: PinAuditOptions

    def check(self, variant) -> None:
        unknown = [r for r in self.options.rows if r not in ROWS]
        if unknown:
            raise UsageError(f"--row {unknown[0]!r}: choose from {', '.join(ROWS)}")

    def prepare(self) -> None:
        self.binary = guestprog.build("stable-pages/dio_mutate.c")

    def setup(self, ctx: Context) -> None:
        client, server = ctx.guest("client"), ctx.guest("server")
        client.put(self.binary, PROGRAM)
        client.run(["chmod", "+x", PROGRAM], check=True)
        self.kprobes = Kprobes(client, "labpin")
        ctx.section["probes"] = self.kprobes.install(PROBES)
        if {"nfs-tcp", "nfs-rdma", "cifs-tcp"} & set(self.options.rows):
            nfs.setup_server(server, f"/dev/{ctx.namespace_device('server')}")
        if "cifs-tcp" in self.options.rows:
            setup_smb_server(server)

    def exercise(self, ctx: Context) -> None:
        for row in self.options.rows:
            try:
                self._row(ctx, row)
            except LabError as exc:
                ctx.case(row, ERROR, str(exc).splitlines()[0], facets={"row": row})

    def _target(self, ctx: Context, row: str) -> str | None:
        """Mount what the row needs and return the path the program does I/O on (None: not applicable)."""
        client = ctx.guest("client")
        if row in LOCAL:
            fs, which = row.split("-")
            device = f"/dev/{ctx.namespace_device('client', 0 if which == 'pi' else 1)}"
            if fs == "raw":
                return device
            client.run(["mkdir", "-p", MOUNT], check=True)
            client.run(["modprobe", "-q", fs], timeout=60)
            mkfs = ["mkfs.xfs", "-f", "-q", device] if fs == "xfs" else ["mkfs.ext4", "-q", "-F", device]
            client.run(mkfs, timeout=300, check=True)
            client.run(["mount", device, MOUNT], timeout=60, check=True)
            return f"{MOUNT}/pin-audit.dat"
        if row.startswith("nfs-"):
            nfs.mount(client, nfs.server_address(ctx.lab), "4.2", row.split("-")[1])
            return f"{nfs.MOUNT}/pin-audit.dat"
        if row == "9p":
            mount_9p(client)
            return f"{MOUNTS['9p']}/pin-audit.dat"
        if row == "cifs-tcp":
            mount_cifs(client, nfs.server_address(ctx.lab), "tcp")
            return f"{MOUNTS['cifs']}/pin-audit.dat"
        if row == "fuse":
            if not client.run("command -v bindfs && test -e /dev/fuse", timeout=30).ok:
                return None
            client.run("modprobe -q fuse; mkdir -p /srv/fuse-src /mnt/fuse", timeout=60)
            client.run(["bindfs", "-o", "direct_io", "/srv/fuse-src", "/mnt/fuse"], timeout=60, check=True)
            return "/mnt/fuse/pin-audit.dat"
        raise UsageError(f"unknown row {row}")

    def _unmount(self, client: Guest, row: str) -> None:
        where = {"9p": MOUNTS["9p"], "cifs-tcp": MOUNTS["cifs"], "fuse": "/mnt/fuse"}.get(row, nfs.MOUNT if row.startswith("nfs-") else MOUNT)
        if not row.startswith("raw-"):
            client.run(f"sync; umount {where}", timeout=120)

    def _row(self, ctx: Context, row: str) -> None:
        client = ctx.guest("client")
        path = self._target(ctx, row)
        if path is None:
            ctx.case(row, NOT_APPLICABLE, "no FUSE file system in this image", facets={"row": row})
            return
        before = nfs.settled_vmstat_pins(client)
        self.kprobes.arm(comm=COMM)
        ops = 0
        for direction in ("write", "read"):
            result = ctx.run_program([PROGRAM, "--path", path, "--direction", direction, "--bs", 65536, "--duration",
                                      f"{self.options.seconds:g}", "--size", 8 << 20, "--mutate", 0],
                                     machine="client", timeout=self.options.seconds + 300, save_as=ctx.path(f"{row}/{direction}.out"))
            if result.error:
                raise LabError(f"{direction}: {result.error}")
            ops += result.data["ops"] if result.data else 0
        after = nfs.vmstat_pins(client)
        calls = self.kprobes.counts()
        self._unmount(client, row)
        at_rest = nfs.settled_vmstat_pins(client)
        pins = {"acquired": at_rest.get("nr_foll_pin_acquired", 0) - before.get("nr_foll_pin_acquired", 0),
                "released": at_rest.get("nr_foll_pin_released", 0) - before.get("nr_foll_pin_released", 0)}
        refs = calls.get("get", 0)
        verdict, reason = judge(row, pins, refs, ops, pins["acquired"] == pins["released"])
        kind = mechanism(pins["acquired"], refs)
        rule = expectation_for(self.expect_file, {"row": row}, ctx.release("client")) if self.expect_file else None
        expected_kind = rule.extra.get("mechanism") if rule else None
        changed = expected_kind is not None and kind != expected_kind
        if changed:
            reason += f"; CHANGED: expected {expected_kind} on this kernel ({rule.why if rule else ''})"
        ctx.case(row, verdict, reason, facets={"row": row}, mechanism=kind, expected_mechanism=expected_kind,
                 mechanism_changed=changed, pins=pins, calls=calls, ops=ops,
                 vmstat={"before": before, "after_io": after, "at_rest": at_rest})

    def table(self, results: dict[str, Any]) -> str:
        subruns = results.get("subruns", {})
        labels = list(subruns)
        rows = [["row", *[f"{lb} ({subruns[lb].get('release', '?')})" for lb in labels]]]
        names = [r for r in ROWS if any(r in s["cases"] for s in subruns.values())]
        for name in names:
            cells = []
            for lb in labels:
                c = subruns[lb]["cases"].get(name)
                if not c:
                    cells.append("-")
                    continue
                mark = " CHANGED" if c.get("mechanism_changed") else ""
                pins = c.get("pins") or {}
                cells.append(f"{c['verdict']} {c.get('mechanism', '')} pins {pins.get('acquired', '?')}/{pins.get('released', '?')} "
                             f"gup {(c.get('calls') or {}).get('get', 0)}{mark}")
            rows.append([name, *cells])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows)

