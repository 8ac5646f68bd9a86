"""faults: each fault of lab.faults injected while the guest works, and what the guest did about
it: that it noticed (and how long that took), that nothing hung, that no corruption went unseen.

    link    NFS O_DIRECT over RDMA while the client's link goes down and up: the I/O stalls, then
            completes with verified data or fails with a reported error, within a deadline
    remove  the NVMe controller removed during O_DIRECT: errors in the guest, the device gone, no hang
    pi      a block's guard (or reference or application) tag corrupted on the backing store
            between write and read: the read fails with EILSEQ and the kernel logs the tag error
    stop    the guest stops answering (QMP stop): the lab finds it within a deadline, keeps the
            console and QMP's status, and the sub-run is ERROR"""

from __future__ import annotations

import errno
import concurrent.futures
import time
from typing import Any, Callable, Literal, Sequence

from lab import faults, kernel_log
from lab.errors import LabError, UsageError
from lab.scenarios import kmsg, nfs
from lab.scenarios.framework import Context, Scenario, ScenarioError, Variant, matrix_label, register
from lab.scenarios.options import ScenarioOptions, Seconds, opt
from lab.scenarios.verdict import FAIL, PASS, ProgramResult, errno_name
from lab.guest import Guest

NAME = "faults"
Kind = Literal["link", "remove", "pi", "stop"]
TOPOLOGY = {"link": "nfs-rdma-pair", "remove": "nvme-pi", "pi": "nvme-pi", "stop": "nvme-pi"}
# What the kernel logs for each corrupted field: the block layer's own check ("guard tag error ...") or
# the controller's (QEMU checks PI on reads: NVMe status 0x82 guard, 0x83 application tag, 0x84
# reference tag, logged as "I/O Error (sct 0x2 / sc 0x82)" with "protection error, dev ...").
PI_MESSAGES = {"guard": ("guard tag error", "sct 0x2 / sc 0x82"), "ref": ("ref tag error", "sct 0x2 / sc 0x84"),
               "app": ("app tag error", "sct 0x2 / sc 0x83")}


class FaultOptions(ScenarioOptions):
    kinds: list[Kind] = opt(["link", "remove", "pi", "stop"], "fault to inject, repeatable (default: all four, "
                            "each in a boot of its own)", flag="--kind", min_length=1)
    down: Seconds = opt(10.0, "link: seconds the link stays down (default: 10)", metavar="SECONDS")
    deadline: Seconds = opt(300.0, "seconds after the fault within which the guest must be done (default: 300)",
                            metavar="SECONDS")
    pi_field: Literal["guard", "ref", "app"] = opt("guard", "pi: which field of the block's PI to corrupt (default: guard)")


# What a write to a controller that went away may fail with: EIO from the block layer for I/O in
# flight, ENOSPC once the removal set the disk's capacity to 0 (debian:7.3 here: 14 million
# ENOSPC in 20 s, none of the others), ENODEV/ENXIO from a node that is gone. Anything else
# (EINVAL, EFAULT, EILSEQ) is not the removal's doing.
REMOVED_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.ENODEV, errno.ENXIO})


def rpc_calls(guest: Guest) -> int | None:
    """The NFS client's RPC call count (/proc/net/rpc/nfs 'rpc CALLS RETRANS AUTHREFRESH')."""
    res = guest.run("awk '$1 == \"rpc\" {print $2}' /proc/net/rpc/nfs", timeout=30)
    text = res.stdout.strip()
    return int(text) if res.ok and text.isdigit() else None


def poll(guest: Guest, command: str, deadline: float, interval: float = 0.2) -> float | None:
    """Seconds until `command` succeeds in the guest, or None by the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if guest.run(command, timeout=30).ok:
            return round(time.monotonic() - started, 2)
        time.sleep(interval)
    return None


def in_background(fn: Callable[[], ProgramResult]) -> concurrent.futures.Future[ProgramResult]:
    """The guest program runs in a worker while the fault is injected; the worker is not waited for
    when the I/O hangs (the lab's stop ends the command)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lab-fault-io")
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def finished(future: concurrent.futures.Future[Any], timeout: float) -> bool:
    concurrent.futures.wait([future], timeout=timeout)
    return future.done()


@register
class Faults(Scenario):
    name = NAME
    summary = "faults injected through QMP and the backing store: link flaps, controller removal, corrupted PI, a stopped guest"
    Options = FaultOptions
    topology = "nvme-pi"
    options: FaultOptions

    def variants(self) -> list[Variant]:
        return [Variant(matrix_label(f"{ref}-{kind}", varying), ref, self.options.topology or TOPOLOGY[kind],
                        params, {"kind": kind, **varying})
                for ref in self.kernels for kind in self.options.kinds for params, varying in self.param_sets()]

    def check(self, variant: Variant) -> None:
        assert variant.rendered is not None
        machines = variant.rendered.topology.machines
        kind = variant.facets["kind"]
        if kind == "link" and not {"server", "client"} <= set(machines):
            raise UsageError(f"--kind link needs a server and a client on a link (nfs-rdma-pair), not {variant.topology}")
        if kind in ("remove", "pi"):
            first = next(iter(machines.values()))
            if not first.nvme or not first.nvme[0].namespaces:
                raise UsageError(f"--kind {kind} needs an NVMe namespace on the first machine of {variant.topology}")
            if kind == "pi" and not first.nvme[0].namespaces[0].pi:
                raise UsageError("--kind pi needs a namespace with protection information (pi=1, 2 or 3)")

    def kernel_log_rules(self, ctx: Context, case: str, facets: dict[str, Any]) -> Sequence[kernel_log.Rule]:
        # The injected fault is meant to make the storage path report errors; a crash is still the kernel's.
        return (kernel_log.Rule(frozenset(kernel_log.DEVICE), "the scenario injected a fault on this path"),)

    def setup(self, ctx: Context) -> None:
        ctx.section.setdefault("faults", [])
        if ctx.variant.facets["kind"] == "link":
            nfs.setup_server(ctx.guest("server"), f"/dev/{ctx.namespace_device('server')}")
            self.program = ctx.put_scenario_file("nfs/nfs_dio.py", "client")
        if ctx.variant.facets["kind"] == "remove":
            from lab import guestprog

            ctx.guest().put(guestprog.build("stable-pages/dio_mutate.c"), "/usr/local/bin/dio_mutate")
            ctx.guest().run("chmod +x /usr/local/bin/dio_mutate", check=True)

    def exercise(self, ctx: Context) -> None:
        getattr(self, f"_{ctx.variant.facets['kind']}")(ctx)

    def _record(self, ctx: Context, machine: str, kind: str, target: str, detail: dict[str, Any]) -> dict[str, Any]:
        entry = faults.FaultRecord(machine, kind, target, detail=detail).to_dict()
        ctx.section["faults"].append(entry)
        ctx.note(f"fault: {kind} {target} on {machine}: {detail}")
        return entry

    # -- the link goes down and up under NFS over RDMA -----------------------------------------------
    def _link(self, ctx: Context) -> None:
        client, machine = ctx.guest("client"), ctx.lab.machines["client"]
        line = nfs.mount(client, nfs.server_address(ctx.lab), "4.2", "rdma")
        argv = ["python3", self.program, "--dir", nfs.MOUNT]
        future = in_background(lambda: ctx.run_program(argv, machine="client", timeout=self.options.deadline + 600,
                                                                save_as=ctx.path("link/nfs_dio.out"),
                                                                required=("cases", "mib_per_s"), count="cases"))
        time.sleep(3)  # into the matrix
        watcher = Guest("client", client.port, client.key_file)
        try:
            # The thing under test is I/O in flight when the link goes: the program must still be running.
            if not watcher.run(["pgrep", "-f", self.program], timeout=30).ok:
                raise ScenarioError("the NFS O_DIRECT program was not running when the link was to go down "
                                    "(it finished or died in its first 3 s): nothing was in flight")
            t0 = time.monotonic()
            self._record(ctx, "client", "link", "link-lan", faults.link(machine.qmp_cmd, "link-lan", False))
            noticed = poll(watcher, "test \"$(cat /sys/class/net/lan/carrier)\" = 0", 30)
            time.sleep(max(0.0, self.options.down - (time.monotonic() - t0)))
            self._record(ctx, "client", "link", "link-lan", faults.link(machine.qmp_cmd, "link-lan", True))
            back = poll(watcher, "test \"$(cat /sys/class/net/lan/carrier)\" = 1", 30)
            calls_back = rpc_calls(watcher)
            done = finished(future, self.options.deadline)
            calls_end = rpc_calls(watcher) if done else None
        finally:
            watcher.close()
        done_in = round(time.monotonic() - t0, 1)
        if not done:
            ctx.case("link-flap", FAIL, f"the NFS O_DIRECT matrix did not finish within {self.options.deadline:g} s of the link "
                     f"going down (hung)", noticed_seconds=noticed, mount=line)
            raise ScenarioError("client hung after the link came back; the run stops here")
        result = future.result()
        client.run(f"umount -f {nfs.MOUNT}", timeout=120)
        if result.error or result.data is None:
            ctx.case("link-flap", FAIL, f"the program did not report: {result.error}", noticed_seconds=noticed)
            return
        cases = result.data["cases"]
        corrupt = [c for c in cases if "differs" in c.get("error", "")]
        failed = [c for c in cases if "error" in c]
        resumed = calls_back is not None and calls_end is not None and calls_end > calls_back
        if corrupt:
            verdict, reason = FAIL, f"data differs after the flap without an error: {corrupt[0]['name']}: {corrupt[0]['error']}"
        elif noticed is None:
            verdict, reason = FAIL, "the guest never saw its link go down"
        elif not resumed:
            verdict, reason = FAIL, (f"no NFS call was made after the link came back (RPC calls {calls_back} then {calls_end}): "
                                     f"the I/O did not resume")
        else:
            verdict = PASS
            reason = (f"link down for {self.options.down:g} s, noticed in {noticed} s; the matrix finished {done_in} s after the "
                      f"fault: {len(cases) - len(failed)} of {len(cases)} cases verified"
                      + (f", {len(failed)} reported an I/O error" if failed else ""))
        ctx.case("link-flap", verdict, reason, noticed_seconds=noticed, carrier_back_seconds=back, finished_seconds=done_in,
                 mount=line, reported_errors=[c["error"] for c in failed][:5], rpc_calls={"link_back": calls_back, "end": calls_end})

    # -- the controller goes away during O_DIRECT ------------------------------------------------------
    def _remove(self, ctx: Context) -> None:
        name = ctx.machine_name()
        guest, machine = ctx.guest(), ctx.lab.machines[name]
        device = f"/dev/{ctx.namespace_device(name)}"
        ctrl = ctx.topology.machines[name].nvme[0].id
        argv = ["/usr/local/bin/dio_mutate", "--path", device, "--direction", "write", "--bs", 65536, "--duration", 20,
                "--size", 16 << 20, "--mutate", 0]
        guest.run("dmesg -C", timeout=30)
        future = in_background(lambda: ctx.run_program(argv, timeout=self.options.deadline,
                                                                save_as=ctx.path("remove/dio.out")))
        time.sleep(4)
        watcher = Guest(name, guest.port, guest.key_file)
        try:
            if not watcher.run(["pgrep", "-x", "dio_mutate"], timeout=30).ok:
                raise ScenarioError("the O_DIRECT writer was not running when the controller was to be removed "
                                    "(it finished or died in its first 4 s): nothing was in flight")
            self._record(ctx, name, "remove", ctrl, faults.remove_device(machine.qmp_cmd, ctrl))
            noticed = poll(watcher, f"! test -e /sys/class/nvme/{ctrl}", self.options.deadline)
            unplugged = faults.wait_removed(machine.qmp_cmd, ctrl, timeout=60)
        finally:
            watcher.close()
        if not finished(future, self.options.deadline):
            ctx.case("remove-during-dio", FAIL, f"O_DIRECT to the removed controller still hung {self.options.deadline:g} s later")
            raise ScenarioError("the I/O hung after the controller was removed; the run stops here")
        result = future.result()
        dmesg = ctx.dmesg()
        ctx.sub.write(ctx.path("remove/dmesg"), dmesg)
        if result.data is None:
            raise ScenarioError(f"the O_DIRECT writer gave no result after the removal: {result.error}")
        errors = result.errnos
        unexpected = {k: v for k, v in errors.items() if k not in REMOVED_ERRNOS}
        shown = ", ".join(f"{errno_name(k)} x{v}" for k, v in errors.items())
        if noticed is None:
            verdict, reason = FAIL, f"the guest still had {ctrl} {self.options.deadline:g} s after device_del"
        elif not errors:
            verdict, reason = FAIL, "every write after the removal succeeded: the I/O did not notice"
        elif unexpected:
            verdict, reason = FAIL, (f"the writes failed with {shown}: a removed device should fail them with "
                                     f"{'/'.join(errno_name(e) for e in sorted(REMOVED_ERRNOS))} only")
        else:
            verdict = PASS
            reason = f"{ctrl} gone from the guest {noticed} s after device_del; the writes failed ({shown}); no hang"
        ctx.case("remove-during-dio", verdict, reason, noticed_seconds=noticed, unplug_completed=unplugged,
                 errnos={str(k): v for k, v in errors.items()}, program_error=result.error,
                 kernel_lines=[line for line in dmesg.splitlines() if "nvme" in line][-5:])

    # -- PI corrupted on the backing store between write and read -------------------------------------------------
    def _pi(self, ctx: Context) -> None:
        name = ctx.machine_name()
        guest = ctx.guest(name)
        ns = ctx.topology.machines[name].nvme[0].namespaces[0]
        pi = ctx.require_integrity(name)
        device = f"/dev/{pi['device']}"
        blocks, victim = 16, 5
        guest.run(["dd", "if=/dev/urandom", f"of={device}", f"bs={ns.lba}", f"count={blocks}", "oflag=direct"],
                  timeout=120, check=True)
        clean = guest.run(["dd", f"if={device}", "of=/dev/null", f"bs={ns.lba}", f"count={blocks}", "iflag=direct"], timeout=120)
        if not clean.ok:
            raise ScenarioError(f"reading the blocks back before the fault failed: {clean.stderr.strip()[-200:]}")
        image = ctx.lab.files[name].namespace_images[next(iter(ctx.lab.files[name].namespace_images))]
        guest.run("dmesg -C", timeout=30)
        t0 = time.monotonic()
        self._record(ctx, name, "pi", f"{pi['device']} block {victim}",
                     faults.corrupt_pi(image, ns, victim, self.options.pi_field))
        res = guest.run(["dd", f"if={device}", "of=/dev/null", f"bs={ns.lba}", f"skip={victim}", "count=1", "iflag=direct"],
                        timeout=120)
        noticed = round(time.monotonic() - t0, 2)
        dmesg = ctx.dmesg(name)
        ctx.sub.write(ctx.path("pi/dmesg"), dmesg)
        logged = kmsg.parse(dmesg)
        want = PI_MESSAGES[self.options.pi_field]
        checked = not (self.options.pi_field == "ref" and ns.pi == 3)  # type 3 has no reference tag to check
        eilseq = "Invalid or incomplete multibyte or wide character" in res.stderr
        if not checked:
            verdict = PASS if res.ok else FAIL
            reason = ("type 3 does not check the reference tag: the read succeeded" if res.ok
                      else f"type 3 does not check the reference tag, yet the read failed: {res.stderr.strip()[-120:]}")
        elif res.ok:
            verdict, reason = FAIL, f"the corrupted {self.options.pi_field} tag went unnoticed: the read succeeded"
        elif not eilseq:
            verdict, reason = FAIL, f"the read failed, but not with EILSEQ: {res.stderr.strip()[-160:]}"
        elif not any(w in dmesg for w in want):
            verdict, reason = FAIL, f"EILSEQ, but the kernel logged neither '{want[0]}' nor '{want[1]}' ({logged.samples[:2]})"
        else:
            seen = next(w for w in want if w in dmesg)
            verdict, reason = PASS, f"the read of block {victim} failed with EILSEQ and the kernel logged '{seen}' ({pi['format']})"
        ctx.case(f"pi-{self.options.pi_field}", verdict, reason, noticed_seconds=noticed, format=pi["format"],
                 kernel_lines=logged.samples[:4])

    # -- the guest stops answering -------------------------------------------------------------------------------
    def _stop(self, ctx: Context) -> None:
        name = ctx.machine_name()
        machine = ctx.lab.machines[name]
        self._record(ctx, name, "stop", name, faults.stop(machine.qmp_cmd))
        ctx.section["stop_detected_after"] = None
        t0 = time.monotonic()
        try:
            ctx.guest(name).run("true", timeout=min(30.0, self.options.deadline))
        except LabError:
            ctx.section["stop_detected_after"] = round(time.monotonic() - t0, 1)
            raise  # the framework finds the paused machine and makes the sub-run ERROR with its evidence
        raise ScenarioError("the guest answered although QMP had stopped it")

    def table(self, results: dict[str, Any]) -> str:
        lines = []
        for label, s in results.get("subruns", {}).items():
            lines.append(f"{label} ({s.get('release', '?')}): {s['verdict']}")
            for fault in s.get("faults", []):
                lines.append(f"  injected {fault['at']}: {fault['kind']} {fault['target']}")
            for name, c in s["cases"].items():
                lines.append(f"  {name:20} {c['verdict']:5} {c['reason']}")
            if s.get("stop_detected_after") is not None:
                lines.append(f"  stopped guest found after {s['stop_detected_after']} s: {s['reason']}")
        return "\n".join(lines)
