"""The `lab` command. Every failure the user can act on is one line and a non-zero exit (2 for bad
input, 1 for a run that failed); bad input is refused before a run directory exists or QEMU starts."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from lab import __version__
from lab.errors import LabError, UsageError

LOG = logging.getLogger(__name__)
EX_SOFTWARE = 70  # an internal error: a bug in the lab, reported with a pointer to the log


def _params(args: argparse.Namespace) -> dict[str, Any]:
    from lab.topology.render import parse_params

    return parse_params(getattr(args, "param", None))


def _accel(value: str | None) -> str:
    from lab.settings import ACCELS, settings

    accel = value or settings().accel
    if accel not in ACCELS:
        raise UsageError(f"--accel {accel!r}: choose auto, kvm or tcg")
    return accel


# -- parent parsers: options several commands share ---------------------------------------------------
def _topology_parent(default: str | None = "nvme-pi") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if default:
        p.add_argument("topology", nargs="?", default=default, help=f"topology name or template path (default: {default})")
    else:
        p.add_argument("topology", help="topology name or template path")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="template parameter (repeatable, each name once)")
    return p


def _boot_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--kernel", metavar="REF", help="debian:X.Y, build:KEY, a named kernel or a bzImage path (default: debian:7.3)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), help="auto tests KVM by booting a probe and falls back to TCG "
                   "(default: $LAB_ACCEL or auto)")
    return p


def _lab_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--lab", help="run id (or part of it) when several labs are up")
    return p


# -- topology ---------------------------------------------------------------------------------
def cmd_topology_list(args: argparse.Namespace) -> int:
    from lab.topology.render import available, render, template_parameters

    for name, path in available().items():
        try:
            desc = render(name).topology.description
            params = ", ".join(template_parameters(path))
        except LabError as exc:
            desc, params = f"(broken: {exc})", "?"
        print(f"{name:16} {desc}")
        print(f"{'':16} parameters: {params}")
    return 0


def cmd_topology_show(args: argparse.Namespace) -> int:
    import shlex

    import yaml

    from lab.images import load_recipe
    from lab.qemu_caps import probe
    from lab.topology.argv import Accel, dry_run_files, machine_argv
    from lab.topology.render import render

    rendered = render(args.topology, _params(args))
    topo = rendered.topology
    # What `lab up` would refuse is refused here too: an image recipe that does not exist, a CPU
    # model or device property this QEMU lacks.
    for machine in topo.machines.values():
        load_recipe(machine.image)
    caps = probe()
    plans = {name: machine_argv(topo, name, dry_run_files(topo, name), caps, Accel(args.accel_name)) for name in topo.machines}
    if not args.qemu:
        print(yaml.safe_dump(rendered.topology.model_dump(), sort_keys=False).rstrip())
        return 0
    for name, plan in plans.items():
        print(f"# {name}")
        lines: list[list[str]] = []
        for a in plan.argv:
            if a.startswith("-") or not lines:
                lines.append([])
            lines[-1].append(shlex.quote(a))
        print(" \\\n    ".join(" ".join(line) for line in lines))
    return 0


# -- images and kernels -----------------------------------------------------------------------
def cmd_image_build(args: argparse.Namespace) -> int:
    from lab.host import ensure_host
    from lab.images import ensure_image

    ensure_host()
    image = ensure_image(args.recipe)
    print(f"{image.path}  sha256 {image.meta['sha256'][:16]}  built {image.meta['built']} in {image.meta['build_seconds']} s")
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from lab.images import list_images

    for img in list_images():
        print(f"{img.get('recipe', '?'):12} {img.get('recipe_key', '?')}  {img.get('built', '?')}  "
              f"{img.get('build_seconds', 0):6.1f} s  {img['path']}")
    return 0


def cmd_suite_build(args: argparse.Namespace) -> int:
    from lab.host import ensure_host
    from lab.suites.build import build_suite

    ensure_host()
    built = build_suite(args.suite, args.source, args.image, rebuild=args.rebuild)
    seconds = built.meta.get("build_seconds")
    print(f"{built.path}  {built.meta['source_key']}  for {built.meta['image']} ({built.meta['image_key'][:8]})"
          + (f"  built in {seconds} s" if seconds is not None else ""))
    return 0


def cmd_suite_list(args: argparse.Namespace) -> int:
    from lab.suites.build import list_suites

    for s in list_suites():
        print(f"{s['suite']:9} {s['source_key']:28} {s['image']}  {s['built']}  {s['build_seconds']:6.1f} s  {s['path']}")
    return 0


def cmd_kernel_fetch(args: argparse.Namespace) -> int:
    from lab.host import ensure_host
    from lab.kernels.resolve import resolve

    ensure_host()
    for ref in args.ref:
        k = resolve(ref)
        print(f"{ref}: {k.release}  sha256 {k.sha256[:16]}  {k.vmlinuz.parent}")
    return 0


def cmd_kernel_list(args: argparse.Namespace) -> int:
    from lab.kernels.debian import list_cached
    from lab.kernels.named import all_named

    for k in list_cached():
        what = k.get("request") or k.get("abi") or ""
        if k.get("name"):
            what = f"{k['name']}: {what}"
        print(f"{k['ref']:22} {k['release']:28} {k['sha256'][:16]}  {what}")
    named = all_named()
    if named:
        print("named kernels (built on first use):")
        for name, (path, req) in named.items():
            print(f"  {name:20} {req.describe()}  ({path})")
    return 0


def cmd_kernel_remove(args: argparse.Namespace) -> int:
    from lab.kernels import build

    for ref in args.ref:
        entry, aliases = build.remove(ref)
        print(f"removed {entry.name} ({aliases} request alias(es))")
    return 0


def cmd_kernel_build(args: argparse.Namespace) -> int:
    from lab.kernels import build

    if args.patches is not None and args.patches < 0:
        raise UsageError("--patches must be 0 or more")
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        raise UsageError("--jobs must be between 1 and 256")
    request = build.BuildRequest(source=args.source, series=args.series, configs=tuple(args.config or ()),
                                 patches=args.patches, fragments=tuple(args.fragments.split(",")) if args.fragments else None)
    k = build.build(request, jobs=args.jobs)
    seconds = k.meta.get("build_seconds")
    print(f"{k.ref}  {k.release}  {k.vmlinuz.parent}" + (f"  (built in {seconds:.0f} s)" if seconds else ""))
    if k.meta.get("series"):
        for title in k.meta["series"]["patches"]:
            print(f"  {title}")
    return 0


# -- machines ---------------------------------------------------------------------------------
def _lab_for(args: argparse.Namespace, run=None, die_with_parent: bool = True):
    """A Lab for a topology, with every input checked before anything is created or started."""
    from lab.host import ensure_host
    from lab.kernels.resolve import kernel_ref
    from lab.lab import Lab, reap_stale_runtimes
    from lab.preflight import check_against_qemu, resolve_kernels
    from lab.topology.render import render

    rendered = render(args.topology, _params(args))
    accel = _accel(args.accel)
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

    lab = _lab_for(args)
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
    from lab.lab import boot_summary, wait_forever

    lab = _lab_for(args, die_with_parent=not args.detach)
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
    try:
        wait_forever()
    finally:
        lab.__exit__(None, None, None)
        lab.run.finish("down")
    return 0


def _live_state(which: str | None) -> tuple[Path, dict]:
    from lab.lab import machines_alive, read_state
    from lab.paths import runtime_root

    if which is not None and (not which.strip() or len(which) > 200):
        raise UsageError("--lab: give a run id or part of one")
    states = []
    for f in sorted(runtime_root().glob("*/state.json"), key=lambda p: p.stat().st_mtime):
        state = read_state(f)
        if state is not None and machines_alive(f.parent, state):
            states.append((f.parent, state))
    if which:
        states = [(d, s) for d, s in states if which in d.name or which in str(s.get("run") or "")]
    if not states:
        raise UsageError("no running lab" + (f" matching {which!r}" if which else "") + "; start one with 'lab up'")
    return states[-1]


def _machine(state: dict, name: str | None) -> tuple[str, dict]:
    machines = state["machines"]
    name = name or next(iter(machines))
    if name not in machines:
        raise UsageError(f"no machine {name[:40]!r} in this lab; machines: {', '.join(machines)}")
    return name, machines[name]


def cmd_ssh(args: argparse.Namespace) -> int:
    from lab.guest import Guest

    _, state = _live_state(args.lab)
    name, machine = _machine(state, args.machine)
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


def _guests(state: dict) -> dict:
    from lab.guest import Guest

    return {name: Guest(name, m["ssh_port"], Path(state["key_file"])) for name, m in state["machines"].items()
            if isinstance(m.get("ssh_port"), int)}


def cmd_cp(args: argparse.Namespace) -> int:
    from lab.transfer import copy

    _, state = _live_state(args.lab)
    guests = _guests(state)
    try:
        print(copy(guests, args.src, args.dst))
    finally:
        for g in guests.values():
            g.close()
    return 0


def cmd_fault(args: argparse.Namespace) -> int:
    from lab import faults
    from lab.safepaths import inside
    from lab.topology.model import Namespace

    directory, state = _live_state(args.lab)
    name, machine = _machine(state, args.machine)
    socket_path = str(machine.get("qmp"))

    def qmp_cmd(command: str, **arguments: Any) -> Any:
        reply = qmp_call(socket_path, command, arguments)
        if "error" in reply:
            raise LabError(f"{name}: QMP {command}: {reply['error'].get('desc')}")
        return reply["return"]

    if args.kind == "link":
        if not args.link or args.up == args.down:
            raise UsageError("lab fault MACHINE link --link NAME (--down | --up)")
        detail = faults.link(qmp_cmd, f"link-{args.link}", args.up)
    elif args.kind == "remove":
        if not args.device:
            raise UsageError("lab fault MACHINE remove --device ID (an NVMe controller id of the topology, e.g. nvme0)")
        detail = faults.remove_device(qmp_cmd, args.device)
    elif args.kind == "pi":
        namespaces = machine.get("namespaces") or {}
        drive = args.drive or next(iter(namespaces), None)
        if drive not in namespaces:
            raise UsageError(f"--drive {drive}: {name} has {', '.join(namespaces) or 'no NVMe namespaces'}")
        entry = namespaces[drive]
        image = Path(str(entry.get("image")))
        # Compared after resolving: a state file naming runtime/../../elsewhere must not reach a host file.
        if not inside(image, Path(directory)) or image.is_symlink() or not image.is_file():
            raise UsageError(f"{image} is not a namespace image in this lab's runtime directory {directory}")
        detail = faults.corrupt_pi(image, Namespace.model_validate(entry["model"]), args.lba, args.field)
    elif args.kind == "stop":
        detail = faults.stop(qmp_cmd)
    else:
        detail = faults.cont(qmp_cmd)
    print(json.dumps(faults.FaultRecord(name, args.kind, args.link or args.device or args.drive or name, detail=detail).to_dict()))
    return 0


def qmp_call(socket_path: str, command: str, arguments: dict, timeout: float = 10.0) -> dict:
    """One QMP command on a monitor socket, with a deadline on connecting and on the answer."""
    import asyncio

    from qemu.qmp import ExecuteError, QMPClient

    async def call() -> dict:
        client = QMPClient("lab")
        try:
            await asyncio.wait_for(client.connect(socket_path), timeout)
        except asyncio.TimeoutError:
            raise LabError(f"QMP at {socket_path} did not answer within {timeout:.0f} s") from None
        try:
            try:
                return {"return": await asyncio.wait_for(client.execute(command, arguments or None), timeout)}
            except ExecuteError as exc:
                return {"error": {"class": exc.error_class, "desc": exc.error.error.desc}}
            except asyncio.TimeoutError:
                raise LabError(f"QMP command {command} got no answer within {timeout:.0f} s") from None
        finally:
            await client.disconnect()

    try:
        return asyncio.run(call())
    except (OSError, EOFError) as exc:
        raise LabError(f"cannot talk to QMP at {socket_path}: {exc}") from None
    except LabError:
        raise
    except Exception as exc:  # qemu.qmp's ConnectError and protocol errors
        raise LabError(f"QMP at {socket_path}: {exc.__class__.__name__}: {exc}") from None


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
    _, state = _live_state(args.lab)
    name, machine = _machine(state, args.machine)
    reply = qmp_call(str(machine.get("qmp")), args.command, arguments)
    print(json.dumps(reply, indent=2))
    return 0 if "error" not in reply else 1


def cmd_down(args: argparse.Namespace) -> int:
    import shutil
    import signal

    from lab import processes

    directory, state = _live_state(args.lab)
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


def cmd_setup(args: argparse.Namespace) -> int:
    from lab.host import BUILD_PACKAGES, HOST_PACKAGES, install, missing_packages

    missing = missing_packages(build=True)
    for pkg, why in {**HOST_PACKAGES, **BUILD_PACKAGES}.items():
        print(f"{'missing  ' if pkg in missing else 'installed'} {pkg:24} {why}")
    if args.check:
        return 1 if missing else 0
    install(missing)
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    from lab.bench import bench_boot

    if not 1 <= args.runs <= 100:
        raise UsageError("--runs must be between 1 and 100")
    if args.kvm:
        args.accel = "kvm"
    return bench_boot(_lab_for(args), runs=args.runs)


# -- scenarios and results --------------------------------------------------------------------------
def scenario_options(name: str, args: argparse.Namespace):
    from lab.scenarios import framework
    from lab.scenarios.options import from_args

    cls = framework.get(name)
    return from_args(cls.Options, args, defaults={"accel": _accel(None)})


def cmd_run(args: argparse.Namespace) -> int:
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes
    from lab.scenarios import framework

    options = scenario_options(args.scenario, args)
    cls = framework.get(args.scenario)
    cls(options).plan()  # every topology renders and every option fits before the host is touched
    ensure_host()
    reap_stale_runtimes()
    outcome = framework.run(cls, options)
    print(outcome.table)
    print(f"results: {outcome.run_dir.path}")
    return 0 if outcome.ok else 1


def cmd_repro(args: argparse.Namespace) -> int:
    words = [w for w in args.reproducer if w != "--"] if args.reproducer else []
    if words:
        if args.command:
            raise UsageError("give the command either after -- or with --command, not both")
        args.command = " ".join(words)
    return cmd_run(args)


def cmd_bisect(args: argparse.Namespace) -> int:
    from lab.bisect import commit_candidates, exit_status, report, run_bisect, series_candidates
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes

    if not 1 <= args.max_batches <= 100:
        raise UsageError("--max-batches must be between 1 and 100")
    if bool(args.series) == bool(args.good or args.bad):
        raise UsageError("bisect needs either --series S (patch by patch) or --good REF --bad REF (commits of a git --base)")
    if not args.series and not (args.good and args.bad):
        raise UsageError("--good and --bad go together")
    extra = list(args.scenario_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if any(a == "--kernel" or a.startswith("--kernel=") for a in extra):
        raise UsageError("bisect chooses the kernels itself; drop --kernel from the scenario options")
    run_args = build_parser().parse_args(["run", args.scenario, *extra])
    options = scenario_options(args.scenario, run_args)
    configs = tuple(args.config or ())
    if args.series:
        requests, labels = series_candidates(args.base, args.series, configs)
        describe = {"base": args.base, "series": args.series, "config": list(configs)}
    else:
        requests, labels = commit_candidates(args.base, args.good, args.bad, configs)
        describe = {"tree": args.base, "good": args.good, "bad": args.bad, "config": list(configs)}
    from lab.scenarios import framework

    framework.get(args.scenario)(options.model_copy(update={"kernels": ["debian:7.3"]})).plan()
    ensure_host()
    reap_stale_runtimes()
    run_dir, summary = run_bisect(args.scenario, options, requests, labels, describe, max_batches=args.max_batches,
                                  case=args.case)
    print(report(summary))
    print(f"results: {run_dir.path}")
    return exit_status(summary["result"])


def cmd_results_list(args: argparse.Namespace) -> int:
    from lab.results import list_runs

    for r in list_runs():
        verdicts = " ".join(f"{k}={v}" for k, v in r["verdicts"].items())
        print(f"{r['id']:52} {r['status'] or '?':11} {verdicts}")
    return 0


def cmd_results_show(args: argparse.Namespace) -> int:
    from lab.results import find_run, manifest, status_of

    run = find_run(args.run)
    summary = run / "summary.txt"
    m = manifest(run, strict=True)
    status = status_of(m)
    if status == "abandoned":
        status = "abandoned (the lab process that ran it is gone; what it wrote is kept)"
    print(f"{run.name}: {m.get('kind')} {status} started {m.get('started')} finished {m.get('finished', '-')}")
    if summary.exists():
        print(summary.read_text(errors="replace").rstrip())
    else:
        print(json.dumps({k: m.get(k) for k in ("topology", "kernels", "boot_seconds", "accel") if k in m}, indent=2, default=str))
    return 0


def cmd_results_compare(args: argparse.Namespace) -> int:
    from lab.results import compare, find_run

    print(compare([find_run(r) for r in args.runs]))
    return 0


def cmd_results_junit(args: argparse.Namespace) -> int:
    from lab.results import find_run, junit

    text = junit([find_run(r) for r in args.runs], Path(args.output) if args.output else None)
    if not args.output:
        print(text)
    return 0


def cmd_results_bundle(args: argparse.Namespace) -> int:
    from lab import bundle
    from lab.results import find_run

    out = bundle.create(find_run(args.run), Path(args.output) if args.output else None)
    print(out)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from lab import bundle
    from lab.host import ensure_host

    plan = bundle.plan_replay(Path(args.bundle), allow_build=args.allow_build, kernels=args.kernel)
    print(bundle.describe(plan))
    if args.dry_run:
        return 0
    ensure_host()
    matched, notes, run_dir = bundle.replay(plan)
    for note in notes:
        print(note)
    what = ("ran on other kernels" if plan.replaced_kernels else
            "verdicts match the bundle" if matched else "verdicts DIFFER from the bundle")
    print(f"{what}; results: {run_dir}")
    return 0 if matched else 1


def _matrix(args: argparse.Namespace):
    from lab import matrix

    m = matrix.load(Path(args.file), max_cells=args.max_cells)
    return m, matrix.select(m, args.cell)


def cmd_matrix_plan(args: argparse.Namespace) -> int:
    from lab import matrix
    from lab.paths import results_dir

    m, cells = _matrix(args)
    problems = matrix.validate(cells)
    if problems:
        for line in problems:
            print(f"lab: invalid cell {line}", file=sys.stderr)
        raise UsageError(f"{len(problems)} of {len(cells)} cell(s) of {args.file} are invalid (listed above)")
    print(matrix.plan_text(m, cells, matrix.known_durations(results_dir())))
    return 0


def cmd_matrix_run(args: argparse.Namespace) -> int:
    from lab import matrix
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes

    m, cells = _matrix(args)
    problems = matrix.validate(cells)
    if problems:
        for line in problems:
            print(f"lab: invalid cell {line}", file=sys.stderr)
        raise UsageError(f"{len(problems)} invalid cell(s); nothing was run")
    ensure_host()
    reap_stale_runtimes()
    outcomes = matrix.run_cells(cells)
    for cell, outcome in outcomes:
        verdicts = ", ".join(s["verdict"] for s in outcome.results["subruns"].values())
        print(f"{cell.id:70} {verdicts:6} {outcome.run_dir.path}")
    return 0 if all(o.ok for _, o in outcomes) else 1


def cmd_matrix_emit(args: argparse.Namespace) -> int:
    from lab import ciemit, matrix

    ciemit.check_cron(args.cron)
    m = matrix.load(Path(args.file), max_cells=args.max_cells)
    ciemit.check_path(m)
    problems = matrix.validate(m.cells)
    if problems:
        for line in problems:
            print(f"lab: invalid cell {line}", file=sys.stderr)
        raise UsageError(f"{len(problems)} invalid cell(s); fix the matrix before emitting it")
    sys.stdout.write(ciemit.github(m, cron=args.cron) if args.github else ciemit.gitlab(m))
    return 0


def cmd_results_merge(args: argparse.Namespace) -> int:
    from lab import night

    started = time.monotonic()
    merged = night.merge([Path(d) for d in args.dirs], Path(args.output))
    print(f"{args.output}: {len(merged['cells'])} cell(s), {len(merged['superseded'])} superseded, "
          f"in {time.monotonic() - started:.1f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lab import report

    started = time.monotonic()
    index, regressions = report.write(Path(args.night), Path(args.output), Path(args.baseline) if args.baseline else None)
    print(f"{index} ({time.monotonic() - started:.1f} s)")
    if regressions:
        print(f"lab: {len(regressions)} regression(s): {', '.join(regressions)}", file=sys.stderr)
        return 1
    return 0


def cmd_bench_stable_pages(args: argparse.Namespace) -> int:
    """The A/B demo timed from the command to the table (target: under 3 minutes here)."""
    started = time.monotonic()
    rc = cmd_run(args)
    print(f"A/B run: {time.monotonic() - started:.1f} s from the command to the table")
    return rc


def cmd_bench_nfs(args: argparse.Namespace) -> int:
    """Set-up time of the NFS pair (command to an RDMA mount on the client) and MiB/s of the
    O_DIRECT matrix per transport. RDMA is mounted first so its time is the ready time."""
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes
    from lab.scenarios import framework
    from lab.scenarios.options import validate

    started = time.monotonic()
    cls = framework.get("nfs-dio")
    options = validate(cls.Options, {"kernels": [args.kernel or "debian:7.3"], "transports": ["rdma", "tcp"],
                                     "nfs_version": args.nfs_version, "accel": _accel(args.accel)})
    ensure_host()
    reap_stale_runtimes()
    outcome = framework.run(cls, options)
    section = next(iter(outcome.results["subruns"].values()))
    mounted = section.get("mounted_seconds", {})
    print(f"kernel {section['kernel']} ({section.get('release', '?')}), NFS {args.nfs_version}: {section['verdict']}")
    print(f"  boot + server set-up: {section.get('setup_seconds', '?')} s after the guests started booting")
    if "rdma" in mounted:
        print(f"  ready with the RDMA mount: {mounted['rdma']} s after the guests started booting")
    for t, v in section["cases"].items():
        print(f"  {t:5} O_DIRECT matrix: {v.get('mib_per_s', '?')} MiB/s ({v.get('cases', '?')} cases, {v.get('seconds', '?')} s)")
    print(f"  whole command: {time.monotonic() - started:.1f} s")
    return 0 if section["verdict"] == "PASS" else 1


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    from lab.scenarios import framework
    from lab.scenarios.options import add_arguments

    parser = argparse.ArgumentParser(prog="lab", description="QEMU-based virtual hardware lab for P2PDMA and T10 PI kernel work")
    parser.add_argument("--version", action="version", version=f"lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    boot, lab_sel = _boot_parent(), _lab_parent()

    p = sub.add_parser("setup", help="install the host packages the lab needs (apt-get, as root)")
    p.add_argument("--check", action="store_true", help="only report; exit 1 if something is missing")
    p.set_defaults(func=cmd_setup)

    top = sub.add_parser("topology", help="list, render and check topologies").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = top.add_parser("list", help="shipped topologies and their parameters")
    p.set_defaults(func=cmd_topology_list)
    p = top.add_parser("show", parents=[_topology_parent(None)], help="the validated model, or with --qemu the exact argv of each machine")
    p.add_argument("--qemu", action="store_true", help="print QEMU argv instead of the model")
    p.add_argument("--accel-name", default="tcg", choices=("tcg", "kvm"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_topology_show)

    img = sub.add_parser("image", help="guest root file system images").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = img.add_parser("build", help="build (or find in the cache) the base image of a recipe")
    p.add_argument("recipe", nargs="?", default="lab-trixie")
    p.set_defaults(func=cmd_image_build)
    p = img.add_parser("list", help="cached base images")
    p.set_defaults(func=cmd_image_list)

    su = sub.add_parser("suite", help="test suites (fstests, blktests) built for the guest").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = su.add_parser("build", help="build a suite's source in the guest image's build root (or find it in the cache); prints the tree's path",
                      description="The source is a tree, a git repository PATH[@REF] or a git URL[@REF]. It is built in a "
                                  "Debian chroot of the guest image's suite, so its programs link the guest's libraries.")
    p.add_argument("suite", choices=("fstests", "blktests"))
    p.add_argument("--source", required=True, metavar="PATH|URL[@REF]")
    p.add_argument("--image", default="lab-trixie", metavar="RECIPE", help="the guest image recipe it runs in (default: lab-trixie)")
    p.add_argument("--rebuild", action="store_true", help="build again even when the cache has it")
    p.set_defaults(func=cmd_suite_build)
    p = su.add_parser("list", help="built suites in the cache")
    p.set_defaults(func=cmd_suite_list)

    ker = sub.add_parser("kernel", help="kernels").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = ker.add_parser("fetch", help="fetch packaged kernels into the cache (debian:6.12, debian:7.3, ...)")
    p.add_argument("ref", nargs="+")
    p.set_defaults(func=cmd_kernel_fetch)
    p = ker.add_parser("build", help="build a kernel from a source, a series and config fragments (or find it in the cache); prints its --kernel reference")
    p.add_argument("--source", required=True, metavar="SOURCE",
                   help="linux-source-X.Y (Debian's package), a source tarball, an unpacked tree, or a git tree PATH[@REF]")
    p.add_argument("--series", metavar="FILE|DIR|MSGID", help="an mbox, a directory of git format-patch files, or a lore message-id (b4)")
    p.add_argument("--config", action="append", metavar="FRAGMENT",
                   help="extra config fragment (a path, or a name in kernel/fragments), repeatable; merged after the lab's own")
    p.add_argument("--patches", type=_whole_number, metavar="N", help="apply only the first N patches of the series")
    p.add_argument("--fragments", metavar="A,B", help="which of the lab's fragments to start from (default: all: base,nvme-pi,p2pdma,xfs,nfs-rdma,9p)")
    p.add_argument("-j", "--jobs", type=_whole_number, help="parallel compile jobs (default: all CPUs)")
    p.set_defaults(func=cmd_kernel_build)
    p = ker.add_parser("remove", help="remove built kernels from the cache (build:KEY ...)")
    p.add_argument("ref", nargs="+")
    p.set_defaults(func=cmd_kernel_remove)
    p = ker.add_parser("list", help="cached kernels")
    p.set_defaults(func=cmd_kernel_list)

    p = sub.add_parser("inspect", parents=[_topology_parent(), boot], help="boot a topology, print what the guests see of their hardware, shut down")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("up", parents=[_topology_parent(), boot], help="boot a topology and keep it running for interactive use")
    p.add_argument("--detach", action="store_true", help="return once booted; guests run until 'lab down'")
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
    p.add_argument("--lba", type=_whole_number, default=0, help="pi: the block whose PI is corrupted (default: 0)")
    p.add_argument("--field", choices=("guard", "app", "ref"), default="guard", help="pi: which tag (default: guard)")
    p.set_defaults(func=cmd_fault)

    p = sub.add_parser("qmp", parents=[lab_sel], help="send a QMP command to a machine of a running lab")
    p.add_argument("machine")
    p.add_argument("command", help="e.g. query-status, query-pci")
    p.add_argument("arguments", nargs="?", help="JSON object of arguments")
    p.set_defaults(func=cmd_qmp)

    p = sub.add_parser("down", help="stop a running lab")
    p.add_argument("lab", nargs="?", help="run id (or part of it); default: the newest")
    p.set_defaults(func=cmd_down)

    runp = sub.add_parser("run", help="run a scenario").add_subparsers(dest="sub", required=True, metavar="SCENARIO")
    for name, cls in sorted(framework.scenarios().items()):
        # A scenario file may have neither a docstring nor a summary: its name describes it then.
        described = (cls.__doc__ or cls.summary or f"the {name} scenario").strip().splitlines() or [name]
        p = runp.add_parser(name, help=cls.summary, description=described[0])
        add_arguments(p, cls.Options)
        p.set_defaults(func=cmd_run, scenario=name)
        if name == "stable-pages":
            stable_pages_parser = p
        if name == "dio-bench":
            dio_bench_parser = p

    from lab.scenarios.repro import ReproOptions

    p = sub.add_parser("repro", help="run any reproducer (a command or a fio job) on a topology per kernel, repeated; "
                                     "failure rates side by side",
                       description="lab repro [--topology T -p K=V] --kernel K [--kernel K2] [--put FILE] [--fio JOB] "
                                   "[--repeat N | --until-fail [--max-time T]] [--reboot-each] [--expect-fail] -- COMMAND")
    add_arguments(p, ReproOptions)
    p.add_argument("--expect-fail", dest="expect", action="store_const", const="fail",
                   help="the reproducer should fail on these kernels (same as --expect fail)")
    p.add_argument("--expect-pass", dest="expect", action="store_const", const="pass", help="same as --expect pass")
    p.add_argument("reproducer", nargs=argparse.REMAINDER, help="-- COMMAND: run in the guest with bash, in /root/repro")
    p.set_defaults(func=cmd_repro, scenario="repro")

    p = sub.add_parser("bisect", help="the first patch of a series (or commit between two refs) where a scenario's verdict changes",
                       description="Builds the base and base + each prefix of the series (incrementally, cached) and runs the "
                                   "scenario on each, binary search. Scenario options go after --, e.g. "
                                   "lab bisect --base linux-source-7.3 --series fix.mbox --scenario stable-pages -- --direction write. "
                                   "With the scenario's --repeat N, steps are compared by failure rate (95 %% intervals). "
                                   "Exit status: 0 the first changed step was found, 1 nothing changed, 3 inconclusive "
                                   "(a step that errored twice, or the base already fails).")
    p.add_argument("--base", required=True, metavar="SOURCE", help="linux-source-X.Y, a tarball, a tree, or a git tree (with --good/--bad)")
    p.add_argument("--series", metavar="FILE|DIR|MSGID")
    p.add_argument("--good", metavar="REF", help="with a git --base: a commit where the verdict is the old one")
    p.add_argument("--bad", metavar="REF", help="with a git --base: a later commit where it changed")
    p.add_argument("--config", action="append", metavar="FRAGMENT", help="extra config fragment, repeatable")
    p.add_argument("--scenario", required=True, choices=sorted(framework.scenarios()))
    p.add_argument("--max-batches", type=_whole_number, default=4,
                   help="with the scenario's --repeat N: run a step at most this many times N when its failure rate "
                        "cannot be told from either end's (default: 4)")
    p.add_argument("--case", metavar="NAME", help="follow this case of the scenario only (its verdict, or its failure rate "
                                                  "with --repeat); other cases' expected failures then do not decide")
    p.add_argument("scenario_args", nargs=argparse.REMAINDER, help="options of 'lab run SCENARIO' (after --)")
    p.set_defaults(func=cmd_bisect)

    res = sub.add_parser("results", help="runs kept in results/").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = res.add_parser("list", help="all runs with their verdicts")
    p.set_defaults(func=cmd_results_list)
    p = res.add_parser("show", help="one run's summary")
    p.add_argument("run", nargs="?", default="latest")
    p.set_defaults(func=cmd_results_show)
    p = res.add_parser("compare", help="a table of the scenario's figures per kernel across runs")
    p.add_argument("runs", nargs="+")
    p.set_defaults(func=cmd_results_compare)
    p = res.add_parser("junit", help="JUnit XML of one or more runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_results_junit)

    p = res.add_parser("merge", help="join the run directories of a matrix's cells into one night (night.json, results.json, junit.xml)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories, or directories holding them (CI artifacts)")
    p.add_argument("-o", "--output", required=True, metavar="NIGHT")
    p.set_defaults(func=cmd_results_merge)

    p = res.add_parser("bundle", help="one file to replay a run elsewhere (lab replay)")
    p.add_argument("run", nargs="?", default="latest")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_results_bundle)

    p = sub.add_parser("replay", help="run a bundle again and say whether the verdicts match")
    p.add_argument("bundle")
    p.add_argument("--allow-build", action="store_true",
                   help="let the bundle's kernel references build kernels from source or clone trees from URLs")
    p.add_argument("--dry-run", action="store_true", help="only show what would run")
    p.add_argument("--kernel", action="append", metavar="REF", help="run it on these kernels instead of the bundle's "
                   "(repeatable); the failure rates are printed side by side")
    p.set_defaults(func=cmd_replay)

    mat = sub.add_parser("matrix", help="nightly matrices: plan, run cells here, or emit a CI workflow that fans them out"
                         ).add_subparsers(dest="sub", required=True, metavar="SUB")
    for name, func, what in (("plan", cmd_matrix_plan, "list the cells with their expected duration; reject invalid ones"),
                             ("run", cmd_matrix_run, "run cells on this host, one at a time")):
        p = mat.add_parser(name, help=what)
        p.add_argument("file", metavar="FILE")
        p.add_argument("--cell", action="append", metavar="ID", help="only these cells (repeatable)")
        p.add_argument("--max-cells", type=_whole_number, default=500, metavar="N",
                       help="refuse a matrix that expands to more cells (default: 500)")
        p.set_defaults(func=func)
    p = mat.add_parser("emit", help="a GitHub Actions workflow or a GitLab pipeline with one job per cell")
    p.add_argument("file", metavar="FILE")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--github", action="store_true")
    kind.add_argument("--gitlab", action="store_true")
    p.add_argument("--cron", default="0 2 * * *", help="GitHub schedule, five cron fields (default: 0 2 * * *)")
    p.add_argument("--max-cells", type=_whole_number, default=500, metavar="N",
                   help="refuse a matrix that expands to more cells (default: 500)")
    p.set_defaults(func=cmd_matrix_emit)

    p = sub.add_parser("report", help="a static HTML report of a night, against a baseline night; exits 1 on a regression")
    p.add_argument("night", metavar="NIGHT")
    p.add_argument("--baseline", metavar="NIGHT")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help="benchmarks (figures, not pass/fail)").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = bench.add_parser("boot", parents=[_topology_parent(), boot], help="time to the first guest command, and the lab's overhead over bare QEMU")
    p.add_argument("--runs", type=_whole_number, default=3)
    p.add_argument("--kvm", action="store_true",
                   help="measure under KVM (same as --accel kvm): fails with the probe's reason where KVM cannot run guests")
    p.set_defaults(func=cmd_bench_boot)
    p = bench.add_parser("nfs", help="NFS pair: time to the RDMA mount, and O_DIRECT MiB/s per transport")
    p.add_argument("--kernel", metavar="REF", help="default: debian:7.3")
    p.add_argument("--nfs-version", default="4.2", choices=("3", "4.1", "4.2"))
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"))
    p.set_defaults(func=cmd_bench_nfs)
    p = bench.add_parser("stable-pages", parents=[stable_pages_parser], add_help=False,
                         help="time the default A/B stable-pages run from the command to the table")
    p.set_defaults(func=cmd_bench_stable_pages)
    p = bench.add_parser("dio", parents=[dio_bench_parser], add_help=False,
                         help="seed 003's table: io_uring QD16 reads and writes, zero copy vs bounce on XFS, as ratios")
    p.set_defaults(func=cmd_run, scenario="dio-bench")
    return parser


def _internal_error(exc: BaseException) -> int:
    from lab.paths import cache_dir

    log = cache_dir() / "internal-errors.log"
    try:
        import traceback

        with open(log, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} lab {__version__}: {' '.join(sys.argv)}\n")
            traceback.print_exception(exc, file=f)
    except OSError:
        pass
    print(f"lab: internal error: {exc.__class__.__name__}: {str(exc)[:200]} (a bug in the lab; the traceback is in {log}, "
          f"or run with -v)", file=sys.stderr)
    return EX_SOFTWARE


def main(argv: list[str] | None = None) -> int:
    from lab import log
    from lab.lab import Terminated, install_signal_handlers
    from lab.settings import settings

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    log.setup(verbose)
    install_signal_handlers()
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `lab ... | head` ends quietly
    try:
        settings()  # every LAB_* variable is checked once, before anything else
        if argv[:1] == ["run"] and len(argv) > 1 and argv[1].endswith(".py"):
            # lab run ./my_scenario.py: the file's scenario joins the registry under its own name.
            from lab.scenarios.framework import load_file

            argv[1] = load_file(Path(argv[1]))
        args = build_parser().parse_args(argv)
        return args.func(args)
    except LabError as exc:
        if verbose:
            raise
        print(f"lab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lab: interrupted; guests stopped, results kept", file=sys.stderr)
        return 130
    except Terminated:
        print("lab: terminated; guests stopped, results kept", file=sys.stderr)
        return 143
    except OSError as exc:
        if verbose:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"lab: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        if verbose:
            raise
        return _internal_error(exc)
