"""The commands around running labs: inspect and up boot a topology; ssh, cp, fault, qmp and down
act on a lab that is up (its state read by lab.live)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from lab.errors import LabError, UsageError
from lab.commands.common import accel as chosen_accel, boot_parent, lab_parent, params, topology_parent, whole_number
from lab.live import guests as guests_of, live_state, machine_of, qmp_call

LOG = logging.getLogger(__name__)

def add_commands(sub: Any) -> None:
    """inspect, up, ssh, cp, fault, qmp and down."""
    boot, lab_sel = boot_parent(), lab_parent()
    p = sub.add_parser("inspect", parents=[topology_parent(), boot], help="boot a topology, print what the guests see of their hardware, shut down")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("up", parents=[topology_parent(), boot], help="boot a topology and keep it running for interactive use")
    p.add_argument("--detach", action="store_true", help="return once booted; guests run until 'lab down'")
    p.add_argument("--gdb", action="store_true", help="QEMU's gdb stub on a free local port per machine (the kernel boots "
                                                      "with nokaslr); prints the gdb command line")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("ssh", parents=[lab_sel], help="a shell (or one command) on a machine of a running lab")
    p.add_argument("machine", nargs="?")
    p.add_argument("remote", nargs="*", help="command to run instead of a shell (put it after --)")
    p.add_argument("--timeout", type=float, default=600, help="seconds for a command (default: 600)")
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("cp", parents=[lab_sel], help="copy files or directories into or out of a running lab's machines",
                       description="lab cp FILE|DIR vm:/path, or lab cp vm:/path FILE|DIR; into a directory when the "
                                   "target is one, like cp -r")
    p.add_argument("src", help="[MACHINE:]PATH")
    p.add_argument("dst", help="[MACHINE:]PATH")
    p.set_defaults(func=cmd_cp)

    p = sub.add_parser("fault", parents=[lab_sel], help="inject a fault into a machine of a running lab",
                       description="lab fault vm link --link lan --down|--up; lab fault vm remove --device nvme0; "
                                   "lab fault vm pi [--drive nvme0n1] --lba 5 [--field guard|ref|app]; lab fault vm stop|cont")
    p.add_argument("machine")
    p.add_argument("kind", choices=("link", "remove", "pi", "stop", "cont"))
    p.add_argument("--link", metavar="NAME", help="link: the topology's link name")
    updown = p.add_mutually_exclusive_group()
    updown.add_argument("--down", action="store_true")
    updown.add_argument("--up", action="store_true")
    p.add_argument("--device", metavar="ID", help="remove: the NVMe controller's id")
    p.add_argument("--drive", metavar="ID", help="pi: the namespace's drive id (default: the machine's first)")
    p.add_argument("--lba", type=whole_number, default=0, help="pi: the block whose PI is corrupted (default: 0)")
    p.add_argument("--field", choices=("guard", "app", "ref"), default="guard", help="pi: which tag (default: guard)")
    p.set_defaults(func=cmd_fault)

    p = sub.add_parser("qmp", parents=[lab_sel], help="send a QMP command to a machine of a running lab")
    p.add_argument("machine")
    p.add_argument("command", help="e.g. query-status, query-pci")
    p.add_argument("arguments", nargs="?", help="JSON object of arguments")
    p.set_defaults(func=cmd_qmp)

    p = sub.add_parser("dump", parents=[lab_sel], help="write a machine's memory as a vmcore (QMP dump-guest-memory) "
                                                        "for drgn or crash")
    p.add_argument("machine")
    p.add_argument("-o", "--output", metavar="FILE", help="default: vmcore-<time> in the machine's run directory")
    p.add_argument("--format", choices=["elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "kdump-zstd"],
                   help="default: the best kdump compression this QEMU has, else elf")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("down", help="stop a running lab")
    p.add_argument("lab", nargs="?", help="run id (or part of it); default: the newest")
    p.set_defaults(func=cmd_down)


def lab_for(args: argparse.Namespace, run=None, die_with_parent: bool = True):
    """A Lab for a topology, with every input checked before anything is created or started."""
    from lab.host import ensure_host
    from lab.kernels.resolve import kernel_ref
    from lab.lab import Lab, reap_stale_runtimes
    from lab.preflight import check_against_qemu, resolve_kernels
    from lab.topology.render import render

    rendered = render(args.topology, params(args))
    accel = chosen_accel(args.accel)
    kernel = None
    if args.kernel is not None:
        try:
            kernel = kernel_ref(args.kernel)
        except ValueError as exc:
            raise UsageError(f"--kernel: {exc}") from None
    check_against_qemu([rendered.topology])
    ensure_host()
    refs = [kernel] if kernel else [m.kernel or "debian:7.3" for m in rendered.topology.machines.values()]
    resolved = resolve_kernels(refs, [m.image for m in rendered.topology.machines.values()])
    reap_stale_runtimes()
    return Lab(rendered, kernel_ref=kernel, accel=accel, run=run, die_with_parent=die_with_parent, resolved=resolved)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Boot a topology, print what each guest sees of its hardware, shut down."""
    from lab import inspect
    from lab.rundir import RunDir

    lab = lab_for(args)
    lab.run = RunDir.create("inspect", lab.rendered.name)
    status = "interrupted"
    try:
        with lab:
            facts = {}
            for name in lab.machines:
                facts[name] = inspect.gather(lab.guest(name))
                print(inspect.summary(name, facts[name]))
            for name, machine in lab.rendered.topology.machines.items():
                for nic in machine.nics:
                    peer = next(n for m, mm in lab.rendered.topology.machines.items() if m != name
                                for n in mm.nics if n.link == nic.link)
                    ok = inspect.ping(lab.guest(name), peer.address)
                    facts[name].setdefault("pings", {})[nic.link] = ok
                    print(f"{name}: ping over {nic.link} to {peer.address.split('/')[0]}: {'ok' if ok else 'FAILED'}")
            lab.run.write("inspect.json", json.dumps(facts, indent=2))
        status = "done"
    except LabError:
        status = "error"
        raise
    finally:
        lab.run.finish(status)
        print(f"results: {lab.run.path}", file=sys.stderr)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from lab.lab import boot_summary, wait_while_up

    lab = lab_for(args, die_with_parent=not args.detach)
    lab.gdb = args.gdb
    try:
        lab.start() if args.detach else lab.__enter__()
    except BaseException:
        lab.stop()
        if lab.run:
            lab.run.finish("error")
        raise
    assert lab.run is not None
    print(boot_summary(lab))
    if args.detach:
        lab.run.update(status="up")
        print(f"detached; stop with: lab down {lab.run.id}")
        return 0
    print("guests are up; 'lab ssh MACHINE' in another terminal; Ctrl-C or 'lab down' stops them", flush=True)
    stopped = None
    try:
        stopped = wait_while_up(lab)
    finally:
        lab.__exit__(None, None, None)
        lab.run.finish("failed" if stopped else "down")
    if stopped:
        print(f"lab: error: {stopped}; run directory {lab.run.path}", file=sys.stderr)
        return 1
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    from lab.guest import Guest

    _, state = live_state(args.lab)
    name, machine = machine_of(state, args.machine)
    if not isinstance(machine.get("ssh_port"), int):
        raise UsageError(f"{name}: the lab's state has no SSH port for it")
    guest = Guest(name, machine["ssh_port"], Path(state["key_file"]))
    remote = [a for a in args.remote if a != "--"] if args.remote else []
    if remote:
        # Piped or redirected input goes to the command (lab ssh vm -- 'cat > x' < x); a terminal does not.
        stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
        try:
            return guest.stream(" ".join(remote), stdin, sys.stdout.buffer, sys.stderr.buffer, timeout=args.timeout)
        finally:
            guest.close()
    guest.wait_for_ssh()  # sshd starts beside the lab's agent: a shell right after `lab up` waits for it
    guest.close()
    argv = guest.ssh_argv()
    os.execvp(argv[0], argv)
    return 0  # not reached


def cmd_cp(args: argparse.Namespace) -> int:
    from lab.transfer import copy

    _, state = live_state(args.lab)
    guests = guests_of(state)
    try:
        print(copy(guests, args.src, args.dst))
    finally:
        for g in guests.values():
            g.close()
    return 0


def cmd_fault(args: argparse.Namespace) -> int:
    from lab import faults

    directory, state = live_state(args.lab)
    name, machine = machine_of(state, args.machine)
    target = args.link or args.device or args.drive or name
    detail = faults.inject_live(directory, name, machine, args.kind, link_name=args.link, up=args.up, down=args.down,
                                device=args.device, drive=args.drive, lba=args.lba, pi_field=args.field)
    print(json.dumps(faults.FaultRecord(name, args.kind, target, detail=detail).to_dict()))
    return 0


def cmd_qmp(args: argparse.Namespace) -> int:
    import re

    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", args.command):
        raise UsageError(f"QMP command {args.command[:40]!r}: not a command name (query-status, query-pci, ...)")
    try:
        arguments = json.loads(args.arguments) if args.arguments else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"QMP arguments must be a JSON object: {exc.msg} at column {exc.colno}") from None
    if not isinstance(arguments, dict):
        raise UsageError(f"QMP arguments must be a JSON object, not {type(arguments).__name__}")
    _, state = live_state(args.lab)
    name, machine = machine_of(state, args.machine)
    reply = qmp_call(str(machine.get("qmp")), args.command, arguments)
    print(json.dumps(reply, indent=2))
    return 0 if "error" not in reply else 1


def cmd_dump(args: argparse.Namespace) -> int:
    import time

    from lab.dump import dump

    directory, state = live_state(args.lab)
    name, machine = machine_of(state, args.machine)
    if args.output:
        out = Path(args.output)
    else:
        from lab.paths import results_dir

        run = Path(str(state.get("run") or "")).resolve()
        # The state file is read back from disk: its run directory must be one of the lab's runs.
        if not ((run / "manifest.json").is_file() and run.is_relative_to(results_dir().resolve())):
            raise UsageError("the lab's state names no run directory under the results directory; give -o FILE")
        out = run / "machines" / name / f"vmcore-{time.strftime('%Y%m%d-%H%M%S')}"
    socket = str(machine.get("qmp"))
    done = dump(lambda command, arguments: qmp_call(socket, command, arguments, timeout=30.0), out, args.format)
    print(f"{done['path']}: {done['format']}, {done['bytes'] >> 20} MiB of {int(done['guest_bytes'] or 0) >> 20} MiB guest memory "
          f"in {done['seconds']} s")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    import shutil
    import signal

    from lab import processes

    directory, state = live_state(args.lab)
    owner, started = state.get("owner_pid"), state.get("owner_started")
    # Only the 'lab up' that wrote this state (same PID and start time), never a process that reused its PID.
    if isinstance(owner, int) and owner != os.getpid() and processes.same_process(owner, started):
        os.kill(owner, signal.SIGTERM)  # the owning 'lab up' shuts its guests down cleanly
        for _ in range(150):
            if not processes.pid_alive(owner):
                break
            time.sleep(0.1)
    for m in state["machines"].values():
        processes.kill_if_ours(m.get("pid"), str(directory))
    shutil.rmtree(directory, ignore_errors=True)
    if state.get("run"):
        from lab.rundir import RunDir

        run = Path(state["run"])
        if (run / "manifest.json").exists():
            RunDir(run).finish("down")
    print(f"stopped {', '.join(state['machines'])}")
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    from lab.bench import bench_boot

    if not 1 <= args.runs <= 100:
        raise UsageError("--runs must be between 1 and 100")
    if args.kvm:
        args.accel = "kvm"
    return bench_boot(lab_for(args), runs=args.runs)
