"""A matrix as the CI engine's own fan-out: a GitHub Actions workflow (one job per cell through
strategy.matrix) or a GitLab pipeline (parallel:matrix), each with the lab's cache restored and
saved by its image and kernel keys, every cell's run directory kept as an artifact, and a last job
that merges the night and publishes the report against the previous night. The lab schedules
nothing itself."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from lab.errors import UsageError
from lab.matrix import Matrix

# Actions pinned to the commits of their release tags (zizmor's unpinned-uses): checkout v4.4.0,
# upload-artifact v4.6.2, download-artifact v4.3.0, cache v4.3.0.
CHECKOUT = "actions/checkout@11d5960a326750d5838078e36cf38b85af677262"  # v4.4.0
UPLOAD = "actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02"  # v4.6.2
DOWNLOAD = "actions/download-artifact@d3f86a106a0bac45b974a628896c90dbdf5c8093"  # v4.3.0
CACHE_RESTORE = "actions/cache/restore@0057852bfaa89a56745cba8c7296529d2fc39830"  # v4.3.0
CACHE_SAVE = "actions/cache/save@0057852bfaa89a56745cba8c7296529d2fc39830"  # v4.3.0
# The lab in a venv of the runner's own python3 (self-hosted Debian runners: no setup-python), its
# host packages installed once by `lab setup` (nothing when they are there). The lab's cache stays
# in the runner user's ~/.cache/lab, outside the workspace that checkout wipes: images and kernels
# are kept once per runner, keyed by their content, never copied per cell. So is the venv: one per
# runner and install (the spec, the wheel's bytes, the commit of a '.' install), made under a lock
# by the first job that needs it; every later job of the night starts at once (about 30 s saved per
# job here: most of a short cell job was pip).
# What the jobs pip-install as the lab: a path in the checkout (".", a wheel under dist/) or a
# requirement (lab==0.1.0). It becomes one quoted shell word: no options, no control characters.
_INSTALL_SPEC = re.compile(r"[A-Za-z0-9._/=<>~!+-][A-Za-z0-9._/=<>~!+,@:\[\]-]{0,199}")


def check_install(spec: str) -> None:
    if not _INSTALL_SPEC.fullmatch(spec) or spec.startswith("-") or ".." in spec.split("/"):
        raise UsageError(f"--install {spec!r}: a path inside the checkout ('.', dist/lab-*.whl) or a requirement "
                         "(lab==0.1.0); no options, spaces or '..'")


def venv_script(spec: str) -> str:
    """Shell lines that leave the lab's venv in $LAB_VENV, made once per runner and install (and only
    marked complete when pip succeeded, with or without the engine's `set -e`)."""
    return (f"spec={shlex.quote(spec)}\n"
            'key=$({ echo "$spec"; if [ -f "$spec" ]; then sha256sum "$spec"; elif [ "$spec" = . ]; then git rev-parse HEAD; fi; }'
            " | sha256sum | cut -c1-16)\n"
            'LAB_VENV="$HOME/.cache/lab-venvs/$key"\n'
            'mkdir -p "$HOME/.cache/lab-venvs"\n'
            'exec 9>"$LAB_VENV.lock"\n'
            "flock 9\n"
            'if [ ! -e "$LAB_VENV/.complete" ]; then\n'
            '  rm -rf "$LAB_VENV"\n'
            '  python3 -m venv "$LAB_VENV" && "$LAB_VENV/bin/pip" install -q "$spec" && touch "$LAB_VENV/.complete"\n'
            "fi\n"
            'test -e "$LAB_VENV/.complete"  # a failed install fails the job here, and is not kept\n' 
            # In use tonight; venvs no job used for two weeks are removed (under the same lock file
            # names, so never one a job is setting up).
            'touch "$LAB_VENV/.complete"\n'
            'find "$HOME/.cache/lab-venvs" -mindepth 2 -maxdepth 2 -name .complete -mtime +14 -printf "%h\\n" | '
            'while read -r old; do rm -rf "$old"; done\n'
            "exec 9>&-\n")


def _github_install(spec: str) -> str:
    return venv_script(spec) + 'echo "$LAB_VENV/bin" >> "$GITHUB_PATH"\necho "LAB_VENV=$LAB_VENV" >> "$GITHUB_ENV"\n'


def _gitlab_install(spec: str) -> list[str]:
    return [venv_script(spec).rstrip("\n"), 'export PATH="$LAB_VENV/bin:$PATH"']


# One cron field: numbers, names of days and months, ranges, lists, steps and '*'.
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,-]{1,40}")


def check_cron(cron: str) -> None:
    fields = cron.split(" ")
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise UsageError(f"--cron {cron!r}: five cron fields separated by single spaces (minute hour day month weekday), "
                         "e.g. '0 2 * * *'")


def check_path(matrix: Matrix) -> None:
    """The matrix path goes into job scripts (quoted) and a YAML comment: no control characters."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in str(matrix.path)):
        raise UsageError(f"{str(matrix.path)!r}: a matrix path with control characters cannot go into a CI job")


def _rel(matrix: Matrix) -> str:
    """The matrix path as a job script's shell word, relative to the checkout when it is inside."""
    try:
        path = str(matrix.path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        path = str(matrix.path)
    return shlex.quote(path)


def github(matrix: Matrix, cron: str = "0 2 * * *", runner: list[str] | None = None, install: str = ".") -> str:
    runs_on = runner or ["self-hosted", "linux", "x64", "kvm"]
    path = _rel(matrix)
    checkout = {"uses": CHECKOUT, "with": {"persist-credentials": False}}
    cell_job: dict[str, Any] = {
        "name": "${{ matrix.cell }}",
        "runs-on": runs_on,
        "timeout-minutes": 180,
        "strategy": {"fail-fast": False, "matrix": {"cell": [c.id for c in matrix.cells]}},
        "env": {"LAB_RESULTS": "${{ github.workspace }}/results"},
        "steps": [
            checkout,
            {"name": "The lab, and the host packages it needs", "run": _github_install(install) + 'sudo "$LAB_VENV/bin/lab" setup\n'},
            {"name": "Run the cell", "env": {"CELL": "${{ matrix.cell }}"}, "run": f'lab ci cell {path} "$CELL"'},
            {"name": "Summary", "if": "always()", "run": 'cat results/*/summary.txt >> "$GITHUB_STEP_SUMMARY" 2>/dev/null || true'},
            # A re-run uploads under a name of its own: no conflict with the first attempt's artifact;
            # the merge keeps the latest run of each cell.
            {"name": "Keep the run directory", "if": "always()", "uses": UPLOAD,
             "with": {"name": "cell-${{ strategy.job-index }}-attempt-${{ github.run_attempt }}", "path": "results/",
                      "if-no-files-found": "warn"}},
        ],
    }
    report_job: dict[str, Any] = {
        "needs": "cell",
        "if": "always()",
        "runs-on": ["self-hosted", "linux", "x64"],
        "steps": [
            checkout,
            {"name": "The lab (no QEMU needed to merge and report)", "run": _github_install(install)},
            {"name": "Every cell's run directory", "uses": DOWNLOAD, "with": {"pattern": "cell-*", "path": "artifacts"}},
            {"name": "The previous night", "id": "baseline", "uses": CACHE_RESTORE,
             "with": {"path": "baseline", "key": "lab-night-${{ github.run_id }}", "restore-keys": "lab-night-"}},
            {"name": "Merge and report (fails on a regression or a missing cell)",
             "run": f"lab ci night {path} artifacts -o night --report report --baseline baseline"},
            {"name": "Summary", "if": "always()", "run": 'cat report/summary.md >> "$GITHUB_STEP_SUMMARY" 2>/dev/null || true'},
            {"name": "Publish the report", "if": "always()", "uses": UPLOAD,
             "with": {"name": "lab-night-attempt-${{ github.run_attempt }}", "path": "night/\nreport/\n"}},
            # Saved whatever the report said: a regressed night is the next one's baseline too, so a
            # regression stays flagged with the night it first appeared.
            {"name": "This night is the next one's baseline", "if": "always()", "run": "rm -rf baseline && cp -r night baseline"},
            {"name": "Keep it", "if": "always()", "uses": CACHE_SAVE,
             "with": {"path": "baseline", "key": "lab-night-${{ github.run_id }}-${{ github.run_attempt }}"}},
        ],
    }
    workflow = {
        "name": f"lab nightly ({matrix.name})",
        "on": {"schedule": [{"cron": cron}], "workflow_dispatch": {}},
        "permissions": {"contents": "read"},
        "jobs": {"cell": cell_job, "report": report_job},
    }
    return _dump(workflow, f"lab matrix emit --github {path}")


def gitlab(matrix: Matrix, cron_note: str = "schedule it in CI/CD > Schedules", tags: list[str] | None = None,
           install: str = ".") -> str:
    path = _rel(matrix)
    pipeline: dict[str, Any] = {
        "stages": ["cells", "report"],
        "workflow": {"rules": [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}, {"if": '$CI_PIPELINE_SOURCE == "web"'}]},
        # The lab's cache is the runner user's ~/.cache/lab: outside the project directory, kept by the runner.
        "variables": {"LAB_RESULTS": "$CI_PROJECT_DIR/results"},
        "cell": {
            "stage": "cells",
            "tags": tags or ["kvm"],
            "timeout": "3h",
            "parallel": {"matrix": [{"CELL": [c.id for c in matrix.cells]}]},
            "script": [*_gitlab_install(install), "lab setup", f'lab ci cell {path} "$CELL"'],
            "artifacts": {"when": "always", "paths": ["results/"], "expire_in": "30 days",
                          "reports": {"junit": "results/*/junit.xml"}},
        },
        "report": {
            "stage": "report",
            "tags": ["lab"],
            "when": "always",
            # Saved whatever the report said: a regressed night is the next one's baseline too.
            "cache": {"key": "lab-night", "paths": ["baseline/"], "when": "always"},
            # The night becomes the next one's baseline in the same step, whatever the report says (an
            # after_script may run in a fresh copy of the project), and the report's status is the job's.
            "script": [*_gitlab_install(install), f"rc=0; lab ci night {path} results -o night --report report --baseline baseline || rc=$?; "
                                        "rm -rf baseline && cp -r night baseline; exit $rc"],
            "artifacts": {"when": "always", "paths": ["night/", "report/"], "expose_as": "lab night report", "expire_in": "90 days",
                          "reports": {"junit": "night/junit.xml"}},
        },
    }
    return _dump(pipeline, f"lab matrix emit --gitlab {path}; {cron_note}")


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a step used twice is written twice: engines and linters read no YAML anchors


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def _dump(document: dict[str, Any], made_by: str) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)
    return f"# Made by `{made_by}`; edit the matrix and emit again rather than this file.\n" + body
