"""The lab as most users and every CI pipeline run it: a wheel installed into a fresh venv, run from a
directory outside the checkout. It must find its topologies, image recipes, boot stages, guest
programs and kernel fragments (shipped in the wheel), boot a guest, and run a matrix cell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(1800)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(the venv's lab command, its environment, a working directory outside the checkout)."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)], root, dict(os.environ))
    assert built.returncode == 0, built.stderr[-2000:]
    venv = root / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)], root, dict(os.environ)).returncode == 0
    wheel = next(wheels.glob("lab-*.whl"))
    pip = run([str(venv / "bin/pip"), "install", "-q", str(wheel)], root, dict(os.environ), timeout=1200)
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["LAB_RESULTS"] = str(work / "results")
    return venv / "bin" / "lab", env, work


def test_the_installed_lab_uses_the_data_in_its_wheel(installed):
    lab, env, work = installed
    where = run([str(lab.parent / "python"), "-c", "import lab.paths as p; print(p.DATA_ROOT, p.INSTALLED)"], work, env)
    data_root, flag = where.stdout.split()
    assert flag == "True" and "site-packages/lab/_data" in data_root and not data_root.startswith(str(REPO))
    listed = run([str(lab), "topology", "list"], work, env)
    assert listed.returncode == 0, listed.stderr
    for name in ("nvme-pi", "nfs-rdma-pair", "p2p-switch", "netfs-pair"):
        assert name in listed.stdout
    for data in ("topologies/nvme-pi.yaml.j2", "images/init/init", "images/lab-trixie/customize.sh", "kernel/fragments/base.config",
                 "scenarios/stable-pages/dio_mutate.c", "scenarios/fstests/known-issues.toml", "matrix/nightly.toml"):
        assert (Path(data_root) / data).is_file(), data
    assert os.access(Path(data_root) / "images/init/init", os.X_OK)


def test_the_installed_lab_has_its_man_page_completion_and_config(installed, tmp_path):
    """`man lab` finds the page the wheel installs beside the venv's bin/; completion and `lab config
    show` work from the wheel (shtab is a dependency), reading a config file named by LAB_CONFIG."""
    lab, env, work = installed
    page = lab.parent.parent / "share/man/man1/lab.1"
    assert page.is_file() and page.read_text().startswith(".TH LAB")
    where = run(["man", "-w", "lab"], work, {k: v for k, v in env.items() if k != "MANPATH"})
    assert where.returncode == 0 and where.stdout.strip() == str(page), where.stdout + where.stderr
    bash = run([str(lab), "completion", "bash"], work, env)
    assert bash.returncode == 0 and "_lab_topologies" in bash.stdout
    cfg = tmp_path / "config.toml"
    cfg.write_text('accel = "tcg"\n')
    shown = run([str(lab), "config", "show"], work, dict(env, LAB_CONFIG=str(cfg)))
    assert shown.returncode == 0 and "tcg" in shown.stdout and f"file {cfg}" in shown.stdout, shown.stdout + shown.stderr


def test_the_installed_lab_boots_a_guest_and_runs_a_matrix_cell(installed):
    lab, env, work = installed
    seen = run([str(lab), "inspect", "nvme-pi", "--kernel", "debian:7.3"], work, env)
    assert seen.returncode == 0, seen.stdout + seen.stderr
    assert "integrity T10-DIF-TYPE1-CRC" in seen.stdout
    matrix = work / "one.toml"
    matrix.write_text('[matrix]\nname = "installed"\nkernels = ["debian:7.3"]\n[[entry]]\nscenario = "stable-pages"\n'
                      'options = { direction = "write", duration = 4, control_duration = 2, targets = ["xfs"] }\n')
    cell = run([str(lab), "matrix", "run", str(matrix)], work, env)
    assert cell.returncode == 0, cell.stdout + cell.stderr
    results = [json.loads(p.read_text()) for p in (work / "results").glob("*stable-pages*/results.json")]
    assert results and results[0]["cell"].startswith("stable-pages_debian-7.3")
    assert results[0]["subruns"]["debian-7.3"]["verdict"] == "PASS"
