"""Artifacts from elsewhere turned against the host: a CI artifact whose cell id is a path, a run
directory with a symlink out, a damaged night, a matrix path that is shell, a state file that points
out of the runtime directory, a bzImage that is only its magic. Each is one `lab: error:` line,
exit 2, and nothing written outside the command's own output."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from lab import cli
from tests.unit.test_matrix import fake_run

REPO = Path(__file__).resolve().parents[2]


def one_error(argv: list[str], capsys) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lab: error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _retag(run: Path, **fields) -> None:
    results = json.loads((run / "results.json").read_text())
    results.update(fields)
    (run / "results.json").write_text(json.dumps(results))


# -- lab results merge -------------------------------------------------------------------------------
@pytest.mark.parametrize("cell_id", ["../../../victim", "/tmp/lab-victim-abs", "..", "a/b", "x\ny"])
def test_a_cell_id_is_a_name_never_a_path(tmp_path, capsys, cell_id):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    run = fake_run(tmp_path / "artifacts", "c1", "debian:7.3", "PASS")
    _retag(run, cell=cell_id)
    line = one_error(["results", "merge", str(tmp_path / "artifacts"), "-o", str(tmp_path / "night" / "n1")], capsys)
    assert "cell id" in line and "is not a plain name" in line
    assert (victim / "keep").read_text() == "mine"  # the directory outside the night was neither deleted nor replaced
    assert not Path("/tmp/lab-victim-abs").exists()
    assert not (tmp_path / "night" / "n1" / "cells" / "c1").exists()


def test_a_symlink_out_of_an_artifact_is_refused_and_one_inside_stays_a_link(tmp_path, capsys):
    secret = tmp_path / "host-secret"
    secret.write_text("host file")
    run = fake_run(tmp_path / "artifacts", "c1", "debian:7.3", "PASS")
    (run / "subruns/debian-7.3/program.out").symlink_to(secret)
    line = one_error(["results", "merge", str(tmp_path / "artifacts"), "-o", str(tmp_path / "n1")], capsys)
    assert "is a symlink to" in line and "refusing to follow it" in line
    assert not (tmp_path / "n1/cells/c1").exists()
    # A link inside the run directory is kept as a link, not followed.
    (run / "subruns/debian-7.3/program.out").unlink()
    (run / "subruns/debian-7.3/program.out").symlink_to("machines/vm/console.log")
    assert cli.main(["results", "merge", str(tmp_path / "artifacts"), "-o", str(tmp_path / "n2")]) == 0
    copied = tmp_path / "n2/cells/c1/subruns/debian-7.3/program.out"
    assert copied.is_symlink() and copied.read_text() == "LAB-READY\n"


@pytest.mark.parametrize("damage,where", [
    ({"subruns": "all good"}, "subruns"),
    ({"subruns": {"k": {"verdict": "PASS", "rate": {"failed": "3", "runs": 10}}}}, "subruns.k.rate.failed"),
    ({"subruns": {"k": {"verdict": "GREAT"}}}, "subruns.k.verdict"),
    ({"subruns": {"k": {"verdict": "PASS", "cases": {"a": {"reason": "no verdict"}}}}}, "subruns.k.cases.a.verdict"),
    ({"cell_spec": ["not", "a", "table"]}, "cell_spec"),
])
def test_a_damaged_results_json_is_one_line_naming_the_field(tmp_path, capsys, damage, where):
    run = fake_run(tmp_path / "artifacts", "c1", "debian:7.3", "PASS")
    _retag(run, **damage)
    line = one_error(["results", "merge", str(tmp_path / "artifacts"), "-o", str(tmp_path / "n1")], capsys)
    assert "a damaged results.json" in line and where in line


# -- lab report ----------------------------------------------------------------------------------------
def _night(tmp_path: Path) -> Path:
    fake_run(tmp_path / "artifacts", "c1", "debian:7.3", "PASS", params={"pi": 1, "price": "$\\nosuchcommand{$"})
    assert cli.main(["results", "merge", str(tmp_path / "artifacts"), "-o", str(tmp_path / "night")]) == 0
    return tmp_path / "night"


def test_dollar_signs_in_names_do_not_reach_mathtext(tmp_path):
    night = _night(tmp_path)
    assert cli.main(["report", str(night), "-o", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report/throughput.png").exists()


@pytest.mark.parametrize("damage,message", [
    (lambda c: c.update(run="../../.."), "leads out of"),
    (lambda c: c.update(run="/etc"), "must be a path relative to"),
    (lambda c: c.update(figures={"x MiB/s": "fast"}), "cells.c1.figures"),
    (lambda c: c.update(rate={"failed": "1", "runs": 3}), "cells.c1.rate.failed"),
    (lambda c: c.pop("kernel"), "cells.c1.kernel"),
    (lambda c: c.update(params={"pi": [1, 2]}), "cells.c1.params.pi"),
])
def test_a_damaged_night_is_one_line(tmp_path, capsys, damage, message):
    night = _night(tmp_path)
    data = json.loads((night / "night.json").read_text())
    damage(data["cells"]["c1"])
    (night / "night.json").write_text(json.dumps(data))
    line = one_error(["report", str(night), "-o", str(tmp_path / "report")], capsys)
    assert message in line


# -- lab matrix ---------------------------------------------------------------------------------------
MATRIX = '[matrix]\nname = "n"\nkernels = ["debian:7.3"]\n[[entry]]\nscenario = "stable-pages"\n'


def test_emit_quotes_the_matrix_path_in_job_scripts(tmp_path, monkeypatch, capsys):
    hostile = tmp_path / "m;touch pwned;$(id)`id`.toml"
    hostile.write_text(MATRIX)
    monkeypatch.chdir(tmp_path)
    for engine in ("--github", "--gitlab"):
        assert cli.main(["matrix", "emit", engine, str(hostile)]) == 0
        doc = yaml.safe_load(capsys.readouterr().out)
        if engine == "--github":
            script = next(s["run"] for s in doc["jobs"]["cell"]["steps"] if s.get("name") == "Run the cell")
        else:
            script = next(line for line in doc["cell"]["script"] if line.startswith("lab ci cell"))
        words = shlex.split(script)
        assert words[:3] == ["lab", "ci", "cell"] and words[3] == hostile.name and words[4] == "$CELL"
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("text,argv_extra,message", [
    (MATRIX, ["--cron", "0 2 * *"], "five cron fields"),
    (MATRIX, ["--cron", "0 2 * * *\nx: 1"], "five cron fields"),
    (MATRIX + "params = { pi = [] }\n", [], "entry[0].params.pi: an empty list expands to no cell"),
    (MATRIX + "params = { pi = [1] }\nexclude = [{ pi = 1 }]\n", [], "expands to no cell"),
    (MATRIX + "params = { a = " + str(list(range(30))) + ", b = " + str(list(range(30))) + " }\n", [],
     "900 cells or more (entry 1 alone expands to 900), above the limit of 500; --max-cells N raises it"),
    (MATRIX.replace('name = "n"', 'name = "n"\ncolour = "blue"'), [], "matrix.colour: unknown key"),
    (MATRIX + "[other]\nx = 1\n", [], "other: unknown key"),
    (MATRIX.replace('name = "n"', 'name = "../n"'), [], "is not a plain name"),
    (MATRIX + "params = { pi = { x = 1 } }\n", [], "entry[0].params.pi: holds dict"),
    (MATRIX, ["--install", "--index-url=http://evil/ lab"], "--install '--index-url=http://evil/ lab': a path inside the checkout"),
    (MATRIX, ["--install", "lab; rm -rf ~"], "no options, spaces or '..'"),
    (MATRIX, ["--install", "../../other/lab.whl"], "no options, spaces or '..'"),
    (MATRIX, ["--install", "dist/lab.whl\nx: 1"], "no options, spaces or '..'"),
])
def test_bad_matrices_and_schedules_are_refused(tmp_path, capsys, text, argv_extra, message):
    path = tmp_path / "m.toml"
    path.write_text(text)
    line = one_error(["matrix", "emit", "--github", str(path), *argv_extra], capsys)
    assert message in line


@pytest.mark.parametrize("engine", ["--github", "--gitlab"])
def test_the_install_spec_is_one_quoted_word_in_every_job(tmp_path, capsys, engine):
    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    assert cli.main(["matrix", "emit", engine, str(path), "--install", "lab[series]>=0.1,<0.2"]) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out)
    scripts = ([s["run"] for job in doc["jobs"].values() for s in job["steps"] if "run" in s] if engine == "--github"
               else [line for job in ("cell", "report") for line in doc[job]["script"]])
    specs = [line for script in scripts for line in script.splitlines() if line.startswith("spec=")]
    assert len(specs) == 2 and all(shlex.split(line) == ["spec=lab[series]>=0.1,<0.2"] for line in specs), specs
    assert all('"$LAB_VENV/bin/pip" install -q "$spec"' in script for script in scripts if "spec=" in script)


def test_a_matrix_path_with_a_newline_cannot_go_into_a_job(tmp_path, capsys):
    path = tmp_path / "m\nname: x.toml"
    path.write_text(MATRIX)
    assert "control characters" in one_error(["matrix", "emit", "--gitlab", str(path)], capsys)


def test_a_kernel_that_cannot_resolve_is_an_error_at_plan(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text(MATRIX.replace('kernels = ["debian:7.3"]', 'kernels = ["no-such-kernel-name", "build:0123456789abcdef"]'))
    assert cli.main(["matrix", "plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "kernel no-such-kernel-name: unknown kernel reference" in err
    assert "kernel build:0123456789abcdef: build:0123456789abcdef: no such built kernel" in err


def test_a_p_list_cross_product_above_the_limit_is_refused_with_its_count(capsys):
    many = ",".join(str(i) for i in range(30))
    line = one_error(["run", "stable-pages", "-p", f"a={many}", "-p", f"b={many}"], capsys)
    assert "1800 sub-runs (2 kernel(s) x the -p lists), above the limit of 500; --max-subruns N raises it" in line


# -- lab fault ----------------------------------------------------------------------------------------
def test_a_state_file_cannot_point_fault_injection_out_of_the_runtime(tmp_path, monkeypatch, capsys):
    runtime = tmp_path / "runtime" / "lab-1"
    runtime.mkdir(parents=True)
    outside = tmp_path / "host-file.img"
    outside.write_bytes(b"\0" * 8192)
    image = runtime / ".." / ".." / "host-file.img"  # a string prefix of the runtime directory, then out
    state = {"machines": {"vm": {"qmp": str(runtime / "qmp.sock"), "namespaces": {
        "ns0": {"image": str(image), "model": {"size": "1G", "lba": 4096, "ms": 8, "pi": 1}}}}}}
    from lab.commands import machines

    monkeypatch.setattr(machines, "live_state", lambda which: (runtime, state))
    line = one_error(["fault", "vm", "pi", "--lba", "1"], capsys)
    assert "is not a namespace image in this lab's runtime directory" in line
    assert outside.read_bytes() == b"\0" * 8192


# -- kernels and repro's files ----------------------------------------------------------------------------
def _header_only(path: Path) -> Path:
    data = bytearray(0x300)
    data[0x202:0x206] = b"HdrS"
    path.write_bytes(bytes(data))
    return path


def test_a_file_with_only_the_bzimage_magic_is_refused_before_anything(tmp_path, monkeypatch, capsys):
    from lab.paths import cache_dir

    fake = _header_only(tmp_path / "bzImage")
    before = sorted(p.name for p in cache_dir().glob("*")) if cache_dir().exists() else []
    for argv in (["run", "stable-pages", "--kernel", str(fake)], ["inspect", "nvme-pi", "--kernel", str(fake)],
                 ["up", "nvme-pi", "--kernel", str(fake)]):
        line = one_error(argv, capsys)
        assert "carries a bzImage header but is not a bootable kernel: no 0xAA55 boot flag" in line
    after = sorted(p.name for p in cache_dir().glob("*")) if cache_dir().exists() else []
    assert before == after


def test_repro_takes_only_regular_files_and_directories_without_links_out(tmp_path, capsys):
    line = one_error(["repro", "--put", "/dev/null", "--", "true"], capsys)
    assert "/dev/null: not a regular file or a directory" in line
    line = one_error(["repro", "--fio", str(tmp_path), "--", "true"], capsys)
    assert "not a regular file" in line
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "key").symlink_to(Path.home() / ".ssh" / "id_rsa")
    line = one_error(["repro", "--put", str(tree), "--", "true"], capsys)
    assert "is a symlink out of the directory" in line


def test_a_bundle_does_not_carry_a_host_file_through_a_link(tmp_path, capsys):
    secret = tmp_path / "secret"
    secret.write_text("host file")
    tree = tmp_path / "put"
    tree.mkdir()
    (tree / "script.sh").write_text("true\n")
    (tree / "innocent").symlink_to(secret)
    run = fake_run(tmp_path / "results", "c1", "debian:7.3", "PASS")
    _retag(run, scenario="repro", options={"command": "true", "put": [str(tree)], "kernels": ["debian:7.3"]})
    line = one_error(["results", "bundle", str(run), "-o", str(tmp_path / "out.tar.gz")], capsys)
    assert "is a symlink to" in line and not (tmp_path / "out.tar.gz").exists()


def test_topology_show_checks_the_image_recipe_as_up_does(tmp_path, capsys):
    template = tmp_path / "mine.yaml.j2"
    template.write_text((REPO / "topologies" / "nvme-pi.yaml.j2").read_text().replace("  vm:\n", "  vm:\n    image: no-such-recipe\n", 1))
    line = one_error(["topology", "show", str(template)], capsys)
    assert "unknown image recipe 'no-such-recipe'" in line
