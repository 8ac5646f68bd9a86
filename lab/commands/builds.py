"""The commands that prepare what runs: topologies (list, show), guest images, suites built for
the guest, kernels (fetch, build, list, remove), and host set-up."""

from __future__ import annotations

import argparse
from typing import Any

from lab.errors import LabError, UsageError
from lab.commands.common import params, topology_parent, whole_number
from lab.settings import ACCELS

def add_commands(sub: Any) -> None:
    """setup, topology, image, suite and kernel."""
    p = sub.add_parser("setup", help="install the host packages the lab needs (apt-get, as root)")
    p.add_argument("--check", action="store_true", help="only report; exit 1 if something is missing")
    p.set_defaults(func=cmd_setup)

    top = sub.add_parser("topology", help="list, render and check topologies").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = top.add_parser("list", help="shipped topologies and their parameters")
    p.set_defaults(func=cmd_topology_list)
    p = top.add_parser("show", parents=[topology_parent(None)], help="the validated model, or with --qemu the exact argv of each machine")
    p.add_argument("--qemu", action="store_true", help="print QEMU argv instead of the model")
    p.add_argument("--accel-name", default="tcg", choices=ACCELS[1:], help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_topology_show)

    img = sub.add_parser("image", help="guest root file system images").add_subparsers(dest="sub", required=True, metavar="SUB")
    p = img.add_parser("build", help="build (or find in the cache) the base image of a recipe")
    p.add_argument("recipe", nargs="?", default="lab-trixie")
    p.add_argument("--refresh", action="store_true",
                   help="update the recipe's package lists now rather than once a day (a new Debian update gives a new image)")
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
    p.add_argument("--debug-symbols", action="store_true",
                   help="also fetch the kernel's vmlinux from Debian's -dbg package (about 1.2 GB downloaded; only vmlinux is kept), "
                        "for `lab up --gdb` and drgn")
    p.set_defaults(func=cmd_kernel_fetch)
    p = ker.add_parser("build", help="build a kernel from a source, a series and config fragments (or find it in the cache); prints its --kernel reference")
    p.add_argument("--source", required=True, metavar="SOURCE",
                   help="linux-source-X.Y (Debian's package), a source tarball, an unpacked tree, or a git tree PATH[@REF]")
    p.add_argument("--series", metavar="FILE|DIR|MSGID", help="an mbox, a directory of git format-patch files, or a lore message-id (b4)")
    p.add_argument("--config", action="append", metavar="FRAGMENT",
                   help="extra config fragment (a path, or a name in kernel/fragments), repeatable; merged after the lab's own")
    p.add_argument("--patches", type=whole_number, metavar="N", help="apply only the first N patches of the series")
    p.add_argument("--fragments", metavar="A,B", help="which of the lab's fragments to start from (default: all: base,nvme-pi,p2pdma,xfs,nfs-rdma,9p)")
    p.add_argument("-j", "--jobs", type=whole_number, help="parallel compile jobs (default: all CPUs)")
    p.set_defaults(func=cmd_kernel_build)
    p = ker.add_parser("remove", help="remove built kernels from the cache (build:KEY ...)")
    p.add_argument("ref", nargs="+")
    p.set_defaults(func=cmd_kernel_remove)
    p = ker.add_parser("list", help="cached kernels")
    p.set_defaults(func=cmd_kernel_list)


def cmd_setup(args: argparse.Namespace) -> int:
    from lab.host import BUILD_PACKAGES, HOST_PACKAGES, install, missing_packages

    missing = missing_packages(build=True)
    for pkg, why in {**HOST_PACKAGES, **BUILD_PACKAGES}.items():
        print(f"{'missing  ' if pkg in missing else 'installed'} {pkg:24} {why}")
    if args.check:
        return 1 if missing else 0
    install(missing)
    return 0


def cmd_topology_list(args: argparse.Namespace) -> int:
    from lab.paths import topologies_dir
    from lab.topology.render import available, render, template_parameters

    found = available()
    if not found:
        raise LabError(f"no topologies found in {topologies_dir()} (an install without the lab's data? "
                       f"LAB_TOPOLOGIES names another directory)")
    for name, path in found.items():
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

    rendered = render(args.topology, params(args))
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


def cmd_image_build(args: argparse.Namespace) -> int:
    from lab.host import ensure_host
    from lab.images import ensure_image

    ensure_host()
    image = ensure_image(args.recipe, refresh=args.refresh)
    print(f"{image.path}  sha256 {image.meta['sha256'][:16]}  built {image.meta['built']} in {image.meta['build_seconds']} s; "
          f"{len(image.versions)} packages as of {image.meta.get('resolved_at', '?')}")
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from lab.images import list_images

    for img in list_images():
        print(f"{img.get('recipe', '?'):12} {img.get('image_key') or img.get('recipe_key', '?')}  {img.get('built', '?')}  "
              f"{len(img.get('versions') or {}):4} packages  "
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
        if args.debug_symbols:
            from lab.kernels.debug_symbols import fetch_debug_symbols

            print(f"{ref}: debug symbols {fetch_debug_symbols(k)}")
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
