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

# What a job installs before it runs a cell (the same as .ci/run minus the tests).
APT = ("qemu-system-x86 qemu-utils mmdebstrap e2fsprogs busybox-static cpio kmod zstd debian-archive-keyring "
       "gcc make flex bison bc libelf-dev libssl-dev ccache git xz-utils")
IMAGE_KEY_FILES = ["images/**"]
KERNEL_KEY_FILES = ["kernel/**", "lab/kernels/**"]


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


def github(matrix: Matrix, cron: str = "0 2 * * *", runner: list[str] | None = None) -> str:
    runs_on = runner or ["self-hosted", "linux", "x64", "kvm"]
    path = _rel(matrix)
    setup = [
        {"uses": "actions/checkout@v4"},
        {"uses": "actions/setup-python@v5", "with": {"python-version": "3.11"}},
        {"name": "Host packages and the lab", "run": f"sudo apt-get update -q && sudo apt-get install -y -q --no-install-recommends {APT}\n"
                                                    "python -m pip install .\n"},
    ]
    cell_job: dict[str, Any] = {
        "name": "${{ matrix.cell }}",
        "runs-on": runs_on,
        "timeout-minutes": 180,
        "strategy": {"fail-fast": False, "matrix": {"cell": [c.id for c in matrix.cells]}},
        "env": {"LAB_RESULTS": "${{ github.workspace }}/results", "LAB_CACHE": "${{ github.workspace }}/.lab-cache"},
        "steps": setup + [
            {"name": "Guest image from the cache", "uses": "actions/cache@v4",
             "with": {"path": ".lab-cache/images", "key": "lab-image-${{ hashFiles('" + "', '".join(IMAGE_KEY_FILES) + "') }}"}},
            {"name": "Kernels from the cache", "uses": "actions/cache@v4",
             "with": {"path": ".lab-cache/kernels",
                      "key": "lab-kernels-${{ hashFiles('" + "', '".join(KERNEL_KEY_FILES) + "') }}-${{ matrix.cell }}",
                      "restore-keys": "lab-kernels-${{ hashFiles('" + "', '".join(KERNEL_KEY_FILES) + "') }}-"}},
            {"name": "Run the cell", "run": f"lab matrix run {path} --cell \"${{{{ matrix.cell }}}}\""},
            {"name": "Keep the run directory", "if": "always()", "uses": "actions/upload-artifact@v4",
             "with": {"name": "cell-${{ strategy.job-index }}", "path": "results/", "if-no-files-found": "warn"}},
        ],
    }
    report_job: dict[str, Any] = {
        "needs": "cell",
        "if": "always()",
        "runs-on": "ubuntu-latest",
        "steps": [
            {"uses": "actions/checkout@v4"},
            {"uses": "actions/setup-python@v5", "with": {"python-version": "3.11"}},
            {"name": "The lab", "run": "python -m pip install ."},
            {"name": "Every cell's run directory", "uses": "actions/download-artifact@v4",
             "with": {"pattern": "cell-*", "path": "artifacts"}},
            {"name": "Merge the night", "run": "lab results merge artifacts -o night"},
            {"name": "The previous night", "id": "baseline", "uses": "actions/cache/restore@v4",
             "with": {"path": "baseline", "key": "lab-night-${{ github.run_id }}", "restore-keys": "lab-night-"}},
            {"name": "Report (fails on a regression)", "run": "if [ -f baseline/night.json ]; then lab report night --baseline baseline -o report; "
                                                            "else lab report night -o report; fi"},
            {"name": "Publish the report", "if": "always()", "uses": "actions/upload-artifact@v4",
             "with": {"name": "lab-night", "path": "night/\nreport/\n"}},
            {"name": "This night is the next one's baseline", "if": "always()", "run": "rm -rf baseline && cp -r night baseline"},
            {"name": "Keep it", "if": "always()", "uses": "actions/cache/save@v4",
             "with": {"path": "baseline", "key": "lab-night-${{ github.run_id }}"}},
        ],
    }
    workflow = {
        "name": f"lab nightly ({matrix.name})",
        "on": {"schedule": [{"cron": cron}], "workflow_dispatch": {}},
        "permissions": {"contents": "read"},
        "jobs": {"cell": cell_job, "report": report_job},
    }
    return _dump(workflow, f"lab matrix emit --github {path}")


def gitlab(matrix: Matrix, cron_note: str = "schedule it in CI/CD > Schedules", tags: list[str] | None = None) -> str:
    path = _rel(matrix)
    install = [f"apt-get update -q && apt-get install -y -q --no-install-recommends {APT} python3-venv python3-pip",
               "python3 -m venv /opt/lab && /opt/lab/bin/pip install -q .", "export PATH=/opt/lab/bin:$PATH"]
    pipeline: dict[str, Any] = {
        "stages": ["cells", "report"],
        "workflow": {"rules": [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}, {"if": '$CI_PIPELINE_SOURCE == "web"'}]},
        "variables": {"LAB_RESULTS": "$CI_PROJECT_DIR/results", "LAB_CACHE": "$CI_PROJECT_DIR/.lab-cache"},
        "cell": {
            "stage": "cells",
            "tags": tags or ["kvm"],
            "timeout": "3h",
            "parallel": {"matrix": [{"CELL": [c.id for c in matrix.cells]}]},
            "cache": [
                {"key": {"files": ["images/lab-trixie/recipe.toml", "images/lab-trixie/packages.txt"], "prefix": "lab-image"},
                 "paths": [".lab-cache/images/"]},
                {"key": {"files": ["kernel/kernels.toml", "lab/kernels/debian.py"], "prefix": "lab-kernels"},
                 "paths": [".lab-cache/kernels/"]},
            ],
            "script": [*install, f'lab matrix run {path} --cell "$CELL"'],
            "artifacts": {"when": "always", "paths": ["results/"], "expire_in": "30 days"},
        },
        "report": {
            "stage": "report",
            "when": "always",
            "cache": {"key": "lab-night", "paths": ["baseline/"]},
            "script": [*install, "lab results merge results -o night",
                       "if [ -f baseline/night.json ]; then lab report night --baseline baseline -o report; "
                       "else lab report night -o report; fi",
                       ],
            "after_script": ["rm -rf baseline && cp -r night baseline"],
            "artifacts": {"when": "always", "paths": ["night/", "report/"], "expose_as": "lab night report", "expire_in": "90 days"},
        },
    }
    return _dump(pipeline, f"lab matrix emit --gitlab {path}; {cron_note}")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def _dump(document: dict[str, Any], made_by: str) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)
    return f"# Made by `{made_by}`; edit the matrix and emit again rather than this file.\n" + body
