"""The commands around a person's shell: `lab config show` (every setting, its value and where it came
from) and `lab completion bash|zsh` (completion scripts generated from the parser by shtab, whose
dynamic words — topologies, scenarios, kernels, runs, matrix cells — come from `lab complete-words`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lab.errors import UsageError
from lab.settings import ACCELS, settings

# What `lab complete-words` can list; each is cheap (no network, no boot) and never fails loudly.
WORD_KINDS = ("topologies", "scenarios", "kernels", "runs", "cells")


def add_commands(sub: Any) -> None:
    """config, completion (and the hidden complete-words the completion scripts call)."""
    cfg = sub.add_parser("config", help="the lab's settings: defaults, ~/.config/lab/config.toml ($LAB_CONFIG), LAB_* variables"
                         ).add_subparsers(dest="sub", required=True, metavar="SUB")
    p = cfg.add_parser("show", help="every setting, its value and where it came from (default, file, environment, flag)",
                       description="Every setting with its value and its source. The flags stand for a command's own flags "
                                   "(they override the file and the environment): `lab config show --accel tcg` shows what "
                                   "a command given --accel tcg uses.")
    p.add_argument("--accel", choices=ACCELS, help="as a command's --accel")
    p.add_argument("--kernel", action="append", metavar="REF", help="as a scenario's --kernel, repeatable")
    p.add_argument("--base", metavar="SOURCE", help="as lab review's --base")
    p.set_defaults(func=cmd_config_show)
    p = sub.add_parser("completion", help="a shell completion script (bash or zsh), generated from the parser",
                       description="Prints a completion script. bash: `lab completion bash > ~/.local/share/bash-completion/"
                                   "completions/lab`; zsh: `lab completion zsh > ~/.zfunc/_lab` (with ~/.zfunc in $fpath "
                                   "before compinit). Topology and scenario names, kernel references, run ids and matrix cell "
                                   "ids are completed from the cache and results at the time you press TAB.")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=cmd_completion)
    # No help=: argparse leaves it out of `lab --help`; the completion scripts call it.
    p = sub.add_parser("complete-words")
    p.add_argument("kind", choices=WORD_KINDS)
    p.add_argument("matrix", nargs="?", help="for cells: the matrix file")
    p.set_defaults(func=cmd_complete_words)


def _show(value: object) -> str:
    if value is None or value == () or value == "":
        return "-"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def config_rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(key, value, source) for every setting, the flags given to `config show` winning."""
    from lab.paths import results_path, topologies_dir

    s = settings()
    source = dict(s.sources)
    values: dict[str, object] = {
        "accel": s.accel,
        "boot_timeout": f"{s.boot_timeout:g} s" if s.boot_timeout else "per accelerator (KVM 60 s, TCG longer)",
        "cache": s.cache,
        "results": results_path(),
        "runtime": s.runtime,
        "topologies": s.topologies or topologies_dir(),
        "named_kernels": s.kernels_file or "./lab-kernels.toml when present",
        "fstests": s.fstests,
        "blktests": s.blktests,
        "cc": s.cc,
        "kernels": s.kernels or "each scenario's own (debian:7.3 for most)",
        "review.base": s.review_base,
    }
    for key, flag in (("accel", "accel"), ("kernels", "kernel"), ("review.base", "base")):
        given = getattr(args, flag, None)
        if given:
            values[key] = tuple(given) if isinstance(given, list) else given
            source[key] = f"flag --{flag}"
    return [(key, _show(values[key]), source[key]) for key in values]


def cmd_config_show(args: argparse.Namespace) -> int:
    import os

    from lab.settings import config_path

    path, _ = config_path(dict(os.environ))
    read = settings().config_file
    print(f"config file: {path}" + ("" if read else " (not present: built-in defaults and LAB_* variables only)"))
    rows = config_rows(args)
    width = max(len(k) for k, _, _ in rows)
    vwidth = min(60, max(len(v) for _, v, _ in rows))
    for key, value, source in rows:
        print(f"  {key:{width}}  {value:{vwidth}}  {source}")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from lab.completion import script

    sys.stdout.write(script(args.parser, args.shell))
    return 0


def cmd_complete_words(args: argparse.Namespace) -> int:
    from lab.completion import words

    try:
        for word in words(args.kind, args.matrix):
            print(word)
    except UsageError:
        pass  # a completion never prints an error into the user's command line
    return 0
