"""A person's config file (~/.config/lab/config.toml or $LAB_CONFIG) under the LAB_* variables and the
flags, `lab config show` naming where each value came from, and the completion scripts generated from
the parser, run in a real bash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.settings import settings


def lab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, env=env, timeout=120)


def test_file_under_environment_under_flags(tmp_path: Path, monkeypatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('accel = "tcg"\ncache = "lab-cache"\nkernels = ["debian:6.12", "debian:7.3"]\n[review]\nbase = "linux-source-6.12"\n')
    monkeypatch.setenv("LAB_CONFIG", str(cfg))
    monkeypatch.delenv("LAB_ACCEL", raising=False)
    monkeypatch.delenv("LAB_CACHE", raising=False)
    s = settings()
    assert s.accel == "tcg" and s.kernels == ("debian:6.12", "debian:7.3") and s.review_base == "linux-source-6.12"
    assert s.cache == tmp_path / "lab-cache", "a relative directory in the file is beside the file"
    src = dict(s.sources)
    assert src["accel"] == f"file {cfg}" and src["kernels"] == f"file {cfg}" and src["cc"] == "default"
    monkeypatch.setenv("LAB_ACCEL", "kvm")
    s = settings()
    assert s.accel == "kvm" and dict(s.sources)["accel"] == "environment LAB_ACCEL"
    import os

    out = lab("config", "show", "--kernel", "build:abc", env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert rows["accel"].split()[1:] == ["kvm", "environment", "LAB_ACCEL"]
    assert rows["kernels"].split()[1:] == ["build:abc", "flag", "--kernel"]
    assert rows["review.base"].split()[1:] == ["linux-source-6.12", "file", str(cfg)]


@pytest.mark.parametrize("text, message", [
    ('acel = "tcg"\n', "unknown key 'acel' (known: accel,"),
    ('[review]\nbsae = "x"\n', "unknown key 'review.bsae'"),
    ('accel = "fast"\n', "LAB_ACCEL='fast': choose auto, kvm or tcg"),
    ('kernels = "debian:7.3"\n', "kernels must be a list of 1 to 16 kernel references"),
    ('kernels = ["debian:7.3; rm -rf /"]\n', "kernels must be a list"),
    ('boot_timeout = "soon"\n', "boot_timeout must be a number of seconds"),
    ('accel = \n', "not valid TOML"),
])
def test_bad_config_is_one_line_naming_the_file(tmp_path: Path, monkeypatch, text: str, message: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    monkeypatch.setenv("LAB_CONFIG", str(cfg))
    monkeypatch.delenv("LAB_ACCEL", raising=False)
    with pytest.raises(UsageError) as err:
        settings()
    assert message in str(err.value)
    import os

    out = lab("config", "show", env=dict(os.environ))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_lab_config_must_exist_and_the_default_place_may_not(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LAB_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(UsageError, match="LAB_CONFIG=.*missing.toml: no such file"):
        settings()
    monkeypatch.delenv("LAB_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert settings().config_file is None and settings().accel in ("auto", "kvm", "tcg")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab/config.toml").write_text('cc = "gcc-14"\n')
    assert settings().cc == "gcc-14" and settings().config_file == tmp_path / "lab/config.toml"


def _bash_complete(script: Path, words: list[str]) -> list[str]:
    line = " ".join(words)
    cmd = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _shtab_lab; "
           'printf "%s\\n" "${COMPREPLY[@]}"')
    bindir = Path(sys.executable).parent
    import os

    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_bash_completion_from_the_parser_completes_the_lab_words(tmp_path: Path) -> None:
    out = lab("completion", "bash")
    assert out.returncode == 0, out.stderr
    script = tmp_path / "lab.bash"
    script.write_text(out.stdout)
    assert _bash_complete(script, ["lab", "run", "stable-p"]) == ["stable-pages"]
    assert "nvme-pi" in _bash_complete(script, ["lab", "up", "n"])
    assert "p2p-switch" in _bash_complete(script, ["lab", "run", "p2p-block", "--topology", "p"])
    assert "debian:7.3" in _bash_complete(script, ["lab", "run", "stable-pages", "--kernel", "deb"])
    cells = _bash_complete(script, ["lab", "matrix", "run", "matrix/nightly.toml", "--cell", "nfs-dio"])
    assert cells and all(c.startswith("nfs-dio") for c in cells)
    assert "--debug-symbols" in _bash_complete(script, ["lab", "kernel", "fetch", "--deb"]), "flags come from the parser"


def test_zsh_completion_loads_and_defines_its_completers(tmp_path: Path) -> None:
    out = lab("completion", "zsh")
    assert out.returncode == 0, out.stderr
    script = tmp_path / "_lab"
    script.write_text(out.stdout)
    res = subprocess.run(["zsh", "-fc", f"autoload -U compinit; compinit -u; source {script}; whence -w _lab_topologies _shtab_lab"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "_lab_topologies: function" in res.stdout, res.stderr


def test_a_tab_press_or_config_show_makes_no_results_directory(tmp_path: Path) -> None:
    """They name where results go; only a run makes the directory (an installed lab's is ./results
    of wherever the user happens to be)."""
    import os

    missing = tmp_path / "not-yet"
    env = dict(os.environ, LAB_RESULTS=str(missing))
    words = lab("complete-words", "runs", env=env)
    assert words.returncode == 0 and words.stdout.split() == ["latest"]
    shown = lab("config", "show", env=env)
    assert shown.returncode == 0 and str(missing) in shown.stdout
    assert not missing.exists()
