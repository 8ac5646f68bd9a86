"""Named kernels files: names map to build requests, paths are relative to the file, mistakes are
one-line errors naming the file and the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.kernels import named
from lab.kernels.build import BuildRequest


def test_names_paths_and_precedence(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "fix.mbox").write_text("")
    (tmp_path / "debug.config").write_text("")
    f = tmp_path / "lab-kernels.toml"
    f.write_text('["base"]\nsource = "linux-source-7.3"\n\n["base+series"]\nsource = "linux-source-7.3"\n'
                 'series = "fix.mbox"\nconfig = ["debug.config", "xfs"]\npatches = 2\nfragments = ["base", "xfs"]\n'
                 '["lab-7.3"]\nsource = "linux-source-7.2"\n')
    monkeypatch.chdir(tmp_path)
    assert named.lookup("base") == BuildRequest(source="linux-source-7.3", name="base")
    assert named.lookup("base+series") == BuildRequest(
        source="linux-source-7.3", series=str(tmp_path / "fix.mbox"), configs=(str(tmp_path / "debug.config"), "xfs"),
        patches=2, name="base+series", fragments=("base", "xfs"))
    # ./lab-kernels.toml comes before the lab's own kernel/kernels.toml
    assert named.lookup("lab-7.3").source == "linux-source-7.2"
    assert named.lookup("nope") is None


@pytest.mark.parametrize("text,message", [
    ('["x"]\nseries = "a"\n', r"\[x\] needs source"),
    ('["x"]\nsource = "s"\ncolour = "red"\n', r"\[x\] unknown key\(s\) colour"),
    ('x = 1\n', r"\[x\] must be a table"),
    ('["x"\n', "not valid TOML"),
])
def test_a_malformed_kernels_file_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "k.toml"
    f.write_text(text)
    with pytest.raises(UsageError, match=message):
        named.parse_file(f)


def test_the_shipped_kernels_file_parses() -> None:
    shipped = named.parse_file(Path(named.repo_dir()) / "kernel" / "kernels.toml")
    assert shipped["lab-7.3"].source == "linux-source-7.3"
