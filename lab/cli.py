"""The `lab` command. Every failure the user can act on is one line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from lab import __version__
from lab.errors import LabError, UsageError


def _params(args) -> dict:
    from lab.topology.render import parse_params

    return parse_params(args.param)


def _add_topology_args(p: argparse.ArgumentParser, default: str | None = "nvme-pi") -> None:
    if default:
        p.add_argument("topology", nargs="?", default=default, help=f"topology name or template path (default: {default})")
    else:
        p.add_argument("topology", help="topology name or template path")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="template parameter (repeatable)")


def _add_boot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", metavar="REF", help="debian:X.Y or a bzImage path (default: debian:7.3)")
    p.add_argument("--accel", default=os.environ.get("LAB_ACCEL", "auto"), choices=("auto", "kvm", "tcg"),
                   help="auto tests KVM by booting a probe and falls back to TCG (default: auto)")


# -- topology ---------------------------------------------------------------------------------
def cmd_topology_list(args) -> int:
    from lab.topology.render import available, render, template_parameters

    for name, path in available().items():
        try:
            desc = render(name).topology.description
        except LabError as exc:
            desc = f"(broken: {exc})"
        print(f"{name:16} {desc}")
        print(f"{'':16} parameters: {', '.join(template_parameters(path))}")
    return 0


def cmd_topology_show(args) -> int:
    import yaml

    from lab.topology.render import render

    rendered = render(args.topology, _params(args))
    if not args.qemu:
        print(yaml.safe_dump(rendered.topology.model_dump(), sort_keys=False).rstrip())
        return 0
    import shlex

    from lab.qemu_caps import probe
    from lab.topology.argv import Accel, BootFiles, machine_argv, namespace_drive_ids

    caps = probe()
    topo = rendered.topology
    run = Path("$RUN")
    for name, machine in topo.machines.items():
        links = {}
        for nic in machine.nics:
            peer = next(m for m, mm in topo.machines.items() if m != name and any(n.link == nic.link for n in mm.nics))
            links[nic.link] = (run / "links" / f"{nic.link}.{name}", run / "links" / f"{nic.link}.{peer}")
        files = BootFiles(
            kernel=Path("$KERNEL"), initrd=Path("$INITRD"), root_overlay=run / name / "root.qcow2",
            modules_image=Path("$MODULES"), qmp_socket=run / name / "qmp.sock", console_log=run / name / "console.log",
            namespace_images={d: run / name / f"{d}.img" for d in namespace_drive_ids(machine)},
            link_sockets=links, ssh_pubkey_blob="$KEY",
        )
        plan = machine_argv(topo, name, files, caps, Accel(args.accel_name))
        print(f"# {name}")
        lines: list[list[str]] = []
        for a in plan.argv:
            if a.startswith("-") or not lines:
                lines.append([])
            lines[-1].append(shlex.quote(a))
        print(" \\\n    ".join(" ".join(l) for l in lines))
    return 0


# -- images and kernels -----------------------------------------------------------------------
def cmd_image_build(args) -> int:
    from lab.host import ensure_host
    from lab.images import ensure_image

    ensure_host()
    image = ensure_image(args.recipe)
    print(f"{image.path}  sha256 {image.meta['sha256'][:16]}  built {image.meta['built']} in {image.meta['build_seconds']} s")
    return 0


def cmd_image_list(args) -> int:
    from lab.images import list_images

    for img in list_images():
        print(f"{img['recipe']:12} {img['recipe_key']}  {img['built']}  {img['build_seconds']:6.1f} s  {img['path']}")
    return 0


def cmd_kernel_fetch(args) -> int:
    from lab.host import ensure_host
    from lab.kernels.resolve import resolve

    ensure_host()
    for ref in args.ref:
        k = resolve(ref)
        print(f"{ref}: {k.release}  sha256 {k.sha256[:16]}  {k.vmlinuz.parent}")
    return 0


def cmd_kernel_list(args) -> int:
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


def cmd_kernel_remove(args) -> int:
    from lab.kernels import build

    for ref in args.ref:
        entry, aliases = build.remove(ref)
        print(f"removed {entry.name} ({aliases} request alias(es))")
    return 0


def cmd_kernel_build(args) -> int:
    from lab.kernels import build

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
def _boot(args, run=None, die_with_parent=True):
    from lab.host import ensure_host
    from lab.lab import Lab, reap_stale_runtimes
    from lab.topology.render import render

    rendered = render(args.topology, _params(args))
    ensure_host()
    reap_stale_runtimes()
    return Lab(rendered, kernel_ref=args.kernel, accel=args.accel, run=run, die_with_parent=die_with_parent)


def cmd_inspect(args) -> int:
    """Boot a topology, print what each guest sees of its hardware, shut down."""
    from lab import inspect
    from lab.rundir import RunDir

    lab = _boot(args)
    lab.run = RunDir.create("inspect", lab.rendered.name)
    status = "error"
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
    finally:
        lab.run.finish(status)
        print(f"results: {lab.run.path}", file=sys.stderr)
    return 0


def cmd_up(args) -> int:
    from lab.lab import boot_summary, wait_forever

    lab = _boot(args, die_with_parent=not args.detach)
    try:
        lab.start() if args.detach else lab.__enter__()
    except BaseException:
        lab.stop()
        if lab.run:
            lab.run.finish("error")
        raise
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
    from lab.lab import _pid_alive
    from lab.paths import runtime_root

    states = []
    for f in sorted(runtime_root().glob("*/state.json"), key=lambda p: p.stat().st_mtime):
        try:
            state = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if any(_pid_alive(m.get("pid")) for m in state.get("machines", {}).values()):
            states.append((f.parent, state))
    if which:
        states = [(d, s) for d, s in states if which in d.name or which in (s.get("run") or "")]
    if not states:
        raise UsageError("no running lab" + (f" matching {which!r}" if which else "") + "; start one with 'lab up'")
    return states[-1]


def cmd_ssh(args) -> int:
    _, state = _live_state(args.lab)
    machines = state["machines"]
    name = args.machine or next(iter(machines))
    if name not in machines:
        raise UsageError(f"no machine {name!r} in this lab; machines: {', '.join(machines)}")
    from lab.ssh import Guest

    guest = Guest(name, machines[name]["ssh_port"], Path(state["key_file"]))
    remote = [a for a in args.remote if a != "--"] if args.remote else []
    if remote:
        res = guest.run(" ".join(remote), timeout=args.timeout)
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        return res.exit_code
    argv = guest.ssh_argv()
    os.execvp(argv[0], argv)
    return 0  # not reached


def cmd_qmp(args) -> int:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    _, state = _live_state(args.lab)
    machines = state["machines"]
    if args.machine not in machines:
        raise UsageError(f"no machine {args.machine!r} in this lab; machines: {', '.join(machines)}")
    try:
        arguments = json.loads(args.arguments) if args.arguments else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"QMP arguments must be a JSON object: {exc}") from None
    qmp = QEMUMonitorProtocol(machines[args.machine]["qmp"])
    try:
        qmp.connect()
        # A 'lab up' in another process holds the monitor; QEMU accepts one client per socket.
        reply = qmp.cmd_raw(args.command, arguments) if hasattr(qmp, "cmd_raw") else qmp.cmd_obj({"execute": args.command, "arguments": arguments})
    except OSError as exc:
        raise LabError(f"cannot talk to QMP of {args.machine}: {exc}") from None
    finally:
        qmp.close()
    print(json.dumps(reply, indent=2))
    return 0 if "error" not in reply else 1


def cmd_down(args) -> int:
    import signal as sig

    from lab.lab import _is_qemu, _pid_alive

    directory, state = _live_state(args.lab)
    owner = state.get("owner_pid")
    if owner and _pid_alive(owner) and owner != os.getpid():
        os.kill(owner, sig.SIGTERM)  # the owning 'lab up' shuts its guests down cleanly
        for _ in range(150):
            if not _pid_alive(owner):
                break
            time.sleep(0.1)
    for m in state["machines"].values():
        pid = m.get("pid")
        if pid and _pid_alive(pid) and _is_qemu(pid):
            os.kill(pid, sig.SIGKILL)
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    if state.get("run"):
        from lab.rundir import RunDir

        RunDir(Path(state["run"])).finish("down")
    print(f"stopped {', '.join(state['machines'])}")
    return 0


def cmd_setup(args) -> int:
    from lab.host import BUILD_PACKAGES, HOST_PACKAGES, install, missing_packages

    missing = missing_packages(build=True)
    for pkg, why in {**HOST_PACKAGES, **BUILD_PACKAGES}.items():
        print(f"{'missing  ' if pkg in missing else 'installed'} {pkg:24} {why}")
    if args.check:
        return 1 if missing else 0
    install(missing)
    return 0


def cmd_bench_boot(args) -> int:
    from lab.bench import bench_boot

    lab = _boot(args)
    return bench_boot(lab, runs=args.runs)


# -- scenarios and results --------------------------------------------------------------------------
def cmd_run(args) -> int:
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes
    from lab.scenarios import registry

    if args.scenario == "nfs-fstests" and not args.fstests:
        print("nfs-fstests: skipped: no fstests tree given (--fstests PATH or a git URL, or LAB_FSTESTS=PATH)")
        return 0
    options = registry.options_from_args(args.scenario, args, _params(args) if hasattr(args, "param") else {})
    options.validate()
    ensure_host()
    reap_stale_runtimes()
    outcome = registry.run(args.scenario, options)
    print(outcome.table)
    print(f"results: {outcome.run_dir.path}")
    return 0 if outcome.ok else 1


def cmd_bisect(args) -> int:
    from lab.bisect import commit_candidates, report, run_bisect, series_candidates
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes
    from lab.scenarios import registry

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
    options = registry.options_from_args(args.scenario, run_args, _params(run_args) if hasattr(run_args, "param") else {})
    configs = tuple(args.config or ())
    if args.series:
        requests, labels = series_candidates(args.base, args.series, configs)
        describe = {"base": args.base, "series": args.series, "config": list(configs)}
    else:
        requests, labels = commit_candidates(args.base, args.good, args.bad, configs)
        describe = {"tree": args.base, "good": args.good, "bad": args.bad, "config": list(configs)}
    options = registry.with_kernels(options, ["placeholder"])
    options.validate()
    ensure_host()
    reap_stale_runtimes()
    run_dir, summary = run_bisect(args.scenario, options, requests, labels, describe)
    print(report(summary))
    print(f"results: {run_dir.path}")
    return 0 if summary["result"] and summary["result"]["changed"] else 1


def cmd_results_list(args) -> int:
    from lab.results import list_runs

    for r in list_runs():
        verdicts = " ".join(f"{k}={v}" for k, v in r["verdicts"].items())
        print(f"{r['id']:52} {r['status'] or '?':11} {verdicts}")
    return 0


def cmd_results_show(args) -> int:
    from lab.results import find_run, manifest

    run = find_run(args.run)
    summary = run / "summary.txt"
    m = manifest(run)
    print(f"{run.name}: {m.get('kind')} {m.get('status')} started {m.get('started')} finished {m.get('finished', '-')}")
    if summary.exists():
        print(summary.read_text().rstrip())
    else:
        print(json.dumps({k: m.get(k) for k in ("topology", "kernels", "boot_seconds", "accel") if k in m}, indent=2, default=str))
    return 0


def cmd_results_compare(args) -> int:
    from lab.results import compare, find_run

    print(compare([find_run(r) for r in args.runs]))
    return 0


def cmd_results_junit(args) -> int:
    from lab.results import find_run, junit

    text = junit([find_run(r) for r in args.runs], Path(args.output) if args.output else None)
    if not args.output:
        print(text)
    return 0


def cmd_results_bundle(args) -> int:
    from lab import bundle
    from lab.results import find_run

    out = bundle.create(find_run(args.run), Path(args.output) if args.output else None)
    print(out)
    return 0


def cmd_replay(args) -> int:
    from lab import bundle
    from lab.host import ensure_host

    ensure_host()
    matched, notes, run_dir = bundle.replay(Path(args.bundle))
    for note in notes:
        print(note)
    print(f"{'verdicts match the bundle' if matched else 'verdicts DIFFER from the bundle'}; results: {run_dir}")
    return 0 if matched else 1


def cmd_bench_stable_pages(args) -> int:
    """The A/B demo timed from the command to the table (target: under 3 minutes here)."""
    started = time.monotonic()
    rc = cmd_run(args)
    print(f"A/B run: {time.monotonic() - started:.1f} s from the command to the table")
    return rc


def cmd_bench_nfs(args) -> int:
    """Set-up time of the NFS pair (command to an RDMA mount on the client) and MiB/s of the
    O_DIRECT matrix per transport. RDMA is mounted first so its time is the ready time."""
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes
    from lab.scenarios import nfs

    started = time.monotonic()
    ensure_host()
    reap_stale_runtimes()
    kernel = args.kernel or "debian:7.3"
    _, results = nfs.run(nfs.Options(kernels=[kernel], transports=["rdma", "tcp"], version=args.nfs_version, accel=args.accel))
    section = next(iter(results["kernels"].values()))
    mounted = section.get("mounted_seconds", {})
    print(f"kernel {kernel} ({section.get('release', '?')}), NFS {args.nfs_version}: {section['verdict']}")
    print(f"  boot + server set-up: {section.get('setup_seconds', '?')} s after the guests started booting")
    if "rdma" in mounted:
        print(f"  ready with the RDMA mount: {mounted['rdma']} s after the guests started booting")
    for t, v in section["transports"].items():
        print(f"  {t:5} O_DIRECT matrix: {v.get('mib_per_s', '?')} MiB/s ({v.get('cases', '?')} cases, {v.get('seconds', '?')} s)")
    print(f"  whole command: {time.monotonic() - started:.1f} s")
    return 0 if section["verdict"] == "PASS" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lab", description="QEMU-based virtual hardware lab for P2PDMA and T10 PI kernel work")
    parser.add_argument("--version", action="version", version=f"lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("setup", help="install the host packages the lab needs (apt-get, as root)")
    p.add_argument("--check", action="store_true", help="only report; exit 1 if something is missing")
    p.set_defaults(func=cmd_setup)

    top = sub.add_parser("topology", help="list, render and check topologies").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = top.add_parser("list", help="shipped topologies and their parameters")
    p.set_defaults(func=cmd_topology_list)
    p = top.add_parser("show", help="the validated model, or with --qemu the exact argv of each machine")
    _add_topology_args(p, default=None)
    p.add_argument("--qemu", action="store_true", help="print QEMU argv instead of the model")
    p.add_argument("--accel-name", default="tcg", choices=("tcg", "kvm"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_topology_show)

    img = sub.add_parser("image", help="guest root file system images").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = img.add_parser("build", help="build (or find in the cache) the base image of a recipe")
    p.add_argument("recipe", nargs="?", default="lab-trixie")
    p.set_defaults(func=cmd_image_build)
    p = img.add_parser("list", help="cached base images")
    p.set_defaults(func=cmd_image_list)

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
    p.add_argument("--patches", type=int, metavar="N", help="apply only the first N patches of the series")
    p.add_argument("--fragments", metavar="A,B", help="which of the lab's fragments to start from (default: all: base,nvme-pi,p2pdma,xfs,nfs-rdma,9p)")
    p.add_argument("-j", "--jobs", type=int, help="parallel compile jobs (default: all CPUs)")
    p.set_defaults(func=cmd_kernel_build)
    p = ker.add_parser("remove", help="remove built kernels from the cache (build:KEY ...)")
    p.add_argument("ref", nargs="+")
    p.set_defaults(func=cmd_kernel_remove)
    p = ker.add_parser("list", help="cached kernels")
    p.set_defaults(func=cmd_kernel_list)

    p = sub.add_parser("inspect", help="boot a topology, print what the guests see of their hardware, shut down")
    _add_topology_args(p)
    _add_boot_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("up", help="boot a topology and keep it running for interactive use")
    _add_topology_args(p)
    _add_boot_args(p)
    p.add_argument("--detach", action="store_true", help="return once booted; guests run until 'lab down'")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("ssh", help="a shell (or one command) on a machine of a running lab")
    p.add_argument("machine", nargs="?")
    p.add_argument("remote", nargs="*", help="command to run instead of a shell (put it after --)")
    p.add_argument("--lab", help="run id (or part of it) when several labs are up")
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("qmp", help="send a QMP command to a machine of a running lab")
    p.add_argument("machine")
    p.add_argument("command", help="e.g. query-status, query-pci")
    p.add_argument("arguments", nargs="?", help="JSON object of arguments")
    p.add_argument("--lab")
    p.set_defaults(func=cmd_qmp)

    p = sub.add_parser("down", help="stop a running lab")
    p.add_argument("lab", nargs="?", help="run id (or part of it); default: the newest")
    p.set_defaults(func=cmd_down)

    runp = sub.add_parser("run", help="run a scenario").add_subparsers(dest="sub", required=True, metavar="SCENARIO")
    p = runp.add_parser("stable-pages", help="O_DIRECT on a PI namespace while the buffer changes; kernels side by side")
    p.add_argument("--kernel", action="append", metavar="REF", help="repeatable (default: debian:6.12 and debian:7.3)")
    p.add_argument("--topology", default="nvme-pi")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="topology parameter (pi, pif, ms, lba, ns_size, ...)")
    p.add_argument("--target", action="append", choices=("xfs", "ext4", "raw"), help="repeatable (default: xfs)")
    p.add_argument("--direction", default="both", choices=("write", "read", "both"))
    p.add_argument("--bs", action="append", metavar="SIZE", help="block size, repeatable: 4K, 64K, 1M (default: 64K)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of I/O per mutating run (default: 20)")
    p.add_argument("--control-duration", type=float, default=5.0, help="seconds of I/O per control run (default: 5)")
    p.add_argument("--no-control", action="store_true", help="skip the control runs without mutation")
    p.add_argument("--size", type=int, default=32, help="MiB of the file or device area the I/O cycles over (default: 32)")
    p.add_argument("--accel", default=os.environ.get("LAB_ACCEL", "auto"), choices=("auto", "kvm", "tcg"))
    p.set_defaults(func=cmd_run, scenario="stable-pages")
    stable_pages_parser = p

    p = runp.add_parser("p2p-block", help="P2P pre-flight, then O_DIRECT through a CMB-backed buffer, per PCIe placement")
    p.add_argument("--kernel", action="append", metavar="REF", help="repeatable (default: debian:7.3)")
    p.add_argument("--placement", action="append", choices=("switch", "root-port", "root-complex"),
                   help="repeatable (default: switch and root-port)")
    p.add_argument("--cpu", help="QEMU CPU model, e.g. EPYC (whitelisted by the kernel's host-bridge rule)")
    p.add_argument("--size", type=int, default=1024, help="KiB per I/O (default: 1024)")
    p.add_argument("--use-cmb-sqes", type=lambda v: v.lower() in ("1", "y", "yes", "on", "true"), default=None,
                   metavar="BOOL", help="nvme.use_cmb_sqes (default: the kernel's)")
    p.add_argument("--accel", default=os.environ.get("LAB_ACCEL", "auto"), choices=("auto", "kvm", "tcg"))
    p.set_defaults(func=cmd_run, scenario="p2p-block")

    p = runp.add_parser("nfs-dio", help="NFS O_DIRECT integrity matrix between two VMs, over TCP and soft-RoCE")
    p.add_argument("--kernel", action="append", metavar="REF", help="repeatable (default: debian:7.3)")
    p.add_argument("--transport", action="append", choices=("tcp", "rdma"), help="repeatable (default: both)")
    p.add_argument("--nfs-version", default="4.2", choices=("3", "4.1", "4.2"))
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="nfs-rdma-pair parameter (rdma=siw, pi=0, ...)")
    p.add_argument("--only", help="only the cases whose name contains this (e.g. 'align=100')")
    p.add_argument("--inject-corruption", action="store_true",
                   help="flip a byte of the file on the server between write and verify: the run must FAIL")
    p.add_argument("--accel", default=os.environ.get("LAB_ACCEL", "auto"), choices=("auto", "kvm", "tcg"))
    p.set_defaults(func=cmd_run, scenario="nfs-dio")
    p = runp.add_parser("nfs-p2p", help="NFS O_DIRECT from a buffer in the client's CMB: the refusal each kernel and transport must give")
    p.add_argument("--kernel", action="append", metavar="REF", help="repeatable (default: debian:7.3)")
    p.add_argument("--transport", action="append", choices=("tcp", "rdma"), help="repeatable (default: both)")
    p.add_argument("--nfs-version", default="4.2", choices=("3", "4.1", "4.2"))
    p.add_argument("--accel", default=os.environ.get("LAB_ACCEL", "auto"), choices=("auto", "kvm", "tcg"))
    p.set_defaults(func=cmd_run, scenario="nfs-p2p", only=None, inject_corruption=False)

    p = sub.add_parser("bisect", help="the first patch of a series (or commit between two refs) where a scenario's verdict changes",
                       description="Builds the base and base + each prefix of the series (incrementally, cached) and runs the "
                                   "scenario on each, binary search. Scenario options go after --, e.g. "
                                   "lab bisect --base linux-source-7.3 --series fix.mbox --scenario stable-pages -- --direction write")
    p.add_argument("--base", required=True, metavar="SOURCE", help="linux-source-X.Y, a tarball, a tree, or a git tree (with --good/--bad)")
    p.add_argument("--series", metavar="FILE|DIR|MSGID")
    p.add_argument("--good", metavar="REF", help="with a git --base: a commit where the verdict is the old one")
    p.add_argument("--bad", metavar="REF", help="with a git --base: a later commit where it changed")
    p.add_argument("--config", action="append", metavar="FRAGMENT", help="extra config fragment, repeatable")
    p.add_argument("--scenario", required=True, choices=("stable-pages", "p2p-block", "nfs-dio", "nfs-p2p", "nfs-fstests"))
    p.add_argument("scenario_args", nargs=argparse.REMAINDER, help="options of 'lab run SCENARIO' (after --)")
    p.set_defaults(func=cmd_bisect)

    p = runp.add_parser("nfs-fstests", help="an fstests tree against the NFS mount, per transport: pass/fail/notrun per test")
    p.add_argument("--fstests", default=os.environ.get("LAB_FSTESTS"), metavar="PATH|URL",
                   help="a built fstests tree (or a git URL to clone and build); default $LAB_FSTESTS; without one the scenario is skipped")
    p.add_argument("--test", action="append", metavar="NAME", help="tests to run (generic/091, comma-separated or repeated)")
    p.add_argument("--preset", help="a named test list: nfs-dio (the 27 tests the NFS direct-I/O series was tested with; the default)")
    p.add_argument("--kernel", action="append", metavar="REF", help="repeatable (default: debian:7.3)")
    p.add_argument("--transport", action="append", choices=("tcp", "rdma"), help="repeatable (default: both)")
    p.add_argument("--nfs-version", default="4.2", choices=("3", "4.1", "4.2"))
    p.add_argument("--timeout", type=int, default=3600, help="seconds for the whole check run per transport (default: 3600)")
    p.add_argument("--accel", default=os.environ.get("LAB_ACCEL", "auto"), choices=("auto", "kvm", "tcg"))
    p.set_defaults(func=cmd_run, scenario="nfs-fstests")

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

    p = res.add_parser("bundle", help="one file to replay a run elsewhere (lab replay)")
    p.add_argument("run", nargs="?", default="latest")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_results_bundle)

    p = sub.add_parser("replay", help="run a bundle again and say whether the verdicts match")
    p.add_argument("bundle")
    p.set_defaults(func=cmd_replay)

    bench = sub.add_parser("bench", help="benchmarks (figures, not pass/fail)").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = bench.add_parser("boot", help="time to the first guest command, and the lab's overhead over bare QEMU")
    _add_topology_args(p)
    _add_boot_args(p)
    p.add_argument("--runs", type=int, default=3)
    p.set_defaults(func=cmd_bench_boot)
    p = bench.add_parser("nfs", help="NFS pair: time to the RDMA mount, and O_DIRECT MiB/s per transport")
    p.add_argument("--kernel", metavar="REF", help="default: debian:7.3")
    p.add_argument("--nfs-version", default="4.2", choices=("3", "4.1", "4.2"))
    p.add_argument("--accel", default=os.environ.get("LAB_ACCEL", "auto"), choices=("auto", "kvm", "tcg"))
    p.set_defaults(func=cmd_bench_nfs)
    p = bench.add_parser("stable-pages", parents=[stable_pages_parser], add_help=False,
                         help="time the default A/B stable-pages run from the command to the table")
    p.set_defaults(func=cmd_bench_stable_pages)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.CRITICAL)
    if not args.verbose:
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    from lab.lab import Terminated, install_signal_handlers

    install_signal_handlers()
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `lab ... | head` ends quietly
    try:
        return args.func(args)
    except LabError as exc:
        if args.verbose:
            raise
        print(f"lab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lab: interrupted; guests stopped, results kept", file=sys.stderr)
        return 130
    except Terminated:
        print("lab: terminated; guests stopped, results kept", file=sys.stderr)
        return 143
