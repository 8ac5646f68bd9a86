"""Shell completion: the scripts come from the parser (shtab), so a new flag completes without anyone
editing them; the words that change (topologies, scenarios, kernels in the cache, run ids, matrix
cells) are asked of `lab complete-words KIND` when TAB is pressed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

# Which arguments complete which words: (option strings or dest) -> kind.
_BY_OPTION = {"--topology": "topologies", "--kernel": "kernels", "--cell": "cells", "--scenario": "scenarios"}
_BY_DEST = {"run": "runs", "runs": "runs"}

# shtab calls a completer as `fn WORD` and reads the candidates from its output, one per line.
_BASH_PREAMBLE = """
_lab_words() {
  local IFS=$'\\n'
  compgen -W "$(lab complete-words "$@" 2>/dev/null)" -- "${_lab_word}"
}
_lab_topologies() { _lab_word="$1" _lab_words topologies; }
_lab_scenarios() { _lab_word="$1" _lab_words scenarios; }
_lab_kernels() { _lab_word="$1" _lab_words kernels; }
_lab_runs() { _lab_word="$1" _lab_words runs; }
_lab_cells() {
  local w matrix=""
  for w in "${COMP_WORDS[@]}"; do case "$w" in *.toml) matrix="$w";; esac; done
  _lab_word="$1" _lab_words cells $matrix
}
"""

_ZSH_PREAMBLE = """
_lab_words() { local -a w; w=(${(f)"$(lab complete-words $1 2>/dev/null)"}); compadd -a w; }
_lab_topologies() { _lab_words topologies; }
_lab_scenarios() { _lab_words scenarios; }
_lab_kernels() { _lab_words kernels; }
_lab_runs() { _lab_words runs; }
_lab_cells() {
  local m=${(M)words:#*.toml}; local -a w; w=(${(f)"$(lab complete-words cells ${m[1]} 2>/dev/null)"}); compadd -a w
}
"""


def _mark(parser: argparse.ArgumentParser) -> None:
    """Attach shtab's `complete` hints to every argument that names a topology, kernel, run or cell."""
    for action in parser._actions:
        kind = next((k for o, k in _BY_OPTION.items() if o in action.option_strings), None)
        if kind is None and not action.option_strings:
            kind = _BY_DEST.get(action.dest)
        if kind is None and action.dest == "topology":
            kind = "topologies"
        if kind:
            action.complete = {"bash": f"_lab_{kind}", "zsh": f"_lab_{kind}"}  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark(sub)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `lab`'s whole parser (lab/cli.py hands it to the command)."""
    import shtab

    _mark(parser)
    preamble = _BASH_PREAMBLE if shell == "bash" else _ZSH_PREAMBLE
    return shtab.complete(parser, shell=shell, preamble=preamble)


def words(kind: str, matrix: str | None = None) -> Iterable[str]:
    """The words of one kind, from the shipped files, the cache and results (nothing is built)."""
    if kind == "topologies":
        from lab.topology.render import available

        return sorted(available())
    if kind == "scenarios":
        from lab.scenarios import framework

        return sorted(framework.scenarios())
    if kind == "kernels":
        return _kernel_refs()
    if kind == "runs":
        from lab.paths import results_path
        from lab.results import list_runs

        # A TAB press never makes a results directory (an installed lab's is ./results, wherever you are).
        if not results_path().is_dir():
            return ["latest"]
        return ["latest", *sorted((r["id"] for r in list_runs()), reverse=True)]
    if kind == "cells":
        from lab import matrix as matrices
        from lab.paths import repo_dir

        path = Path(matrix) if matrix else repo_dir() / "matrix" / "nightly.toml"
        return [c.id for c in matrices.load(path).cells] if path.is_file() else []
    return []


def _kernel_refs() -> list[str]:
    from lab.kernels.debian import list_cached
    from lab.kernels.named import all_named

    refs = {"debian:6.12", "debian:7.3"}
    refs.update(str(k["ref"]) for k in list_cached() if k.get("ref"))
    refs.update(all_named())
    return sorted(refs)
