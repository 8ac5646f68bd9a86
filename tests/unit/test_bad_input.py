"""The corpus of malformed input: every case gets one `lab: error:` line, exit status 2, no
traceback, and nothing created or started. `main()` runs in this process with the run directory and
the boot forbidden, so an input the lab only rejects after it has started something fails here."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from lab import cli
from lab.lab import Lab
from lab.rundir import RunDir

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FAKE_FSTESTS = FIXTURES / "fstests-fake"
GOOD_TEMPLATE = (Path(__file__).resolve().parents[2] / "topologies" / "nvme-pi.yaml.j2").read_text()


def _bundle(path: Path, meta: dict | None = None, files: dict[str, bytes] | None = None, raw_json: bytes | None = None) -> None:
    base = {"format": 2, "run": "r", "scenario": "stable-pages", "options": {"kernels": ["debian:7.3"]}, "kernels": [],
            "verdicts": {}, "topology": {"template": "nvme-pi.yaml.j2", "params": {}}}
    content = {"bundle.json": raw_json if raw_json is not None else json.dumps({**base, **(meta or {})}).encode(),
               "topology/nvme-pi.yaml.j2": GOOD_TEMPLATE.encode(), **(files or {})}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """Files the corpus refers to as {d}/..."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "syntax.yaml.j2").write_text("{% for x in y %}\n")
    (d / "raise.yaml.j2").write_text("name: {{ 1 / 0 }}\n")
    (d / "recurse.yaml.j2").write_text("{% include 'recurse.yaml.j2' %}\n")
    (d / "binary.yaml.j2").write_bytes(b"\x00\xff\xfe\x00garbage")
    (d / "escape.yaml.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    (d / "dupkey.yaml.j2").write_text("name: a\nname: b\nmachines: {vm: {}}\n")
    (d / "list.yaml.j2").write_text("- just\n- a list\n")
    (d / "passwd.yaml.j2").write_text("{% include '/etc/passwd' %}\n")
    (d / "notakernel").write_text("hello\n")
    (d / "raises.py").write_text("raise RuntimeError('broken on import')\n")
    (d / "empty.py").write_text("x = 1\n")
    header = "from lab.scenarios.framework import Scenario\n"
    (d / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (d / "shadow.py").write_text(header + "class StablePages(Scenario):\n    name = 'stable-pages'\n"
                                 "    def exercise(self, ctx):\n        ctx.case('x', 'PASS', 'mine')\n")
    (d / "notamodel.py").write_text(header + "class Mine(Scenario):\n    name = 'mine-a'\n    Options = dict\n"
                                    "    def exercise(self, ctx):\n        pass\n")
    (d / "two.py").write_text(header + "class A(Scenario):\n    name = 'mine-b'\nclass B(Scenario):\n    name = 'mine-c'\n")
    (d / "noexercise.py").write_text(header + "class Mine(Scenario):\n    name = 'mine-d'\n")
    (d / "badname.py").write_text(header + "class Mine(Scenario):\n    name = 'Bad Name!'\n"
                                  "    def exercise(self, ctx):\n        pass\n")
    (d / "results").mkdir()
    for name, files in {"badmanifest": {"manifest.json": "{\"id\": \"x\", "},
                        "badresults": {"manifest.json": "{}", "results.json": "[1, 2"},
                        "oldresults": {"manifest.json": "{}", "results.json": "{\"kernels\": {}}"},
                        "badjunit": {"manifest.json": "{}", "junit.xml": "<testsuite><testcase"},
                        "noresults": {"manifest.json": "{\"kind\": \"inspect\"}"}}.items():
        (d / name).mkdir()
        for f, text in files.items():
            (d / name / f).write_text(text)
    (d / "notabundle.tar.gz").write_text("plain text")
    with tarfile.open(d / "nobundlejson.tar.gz", "w:gz") as tar:
        tar.add(str(d / "notakernel"), arcname="something")
    _bundle(d / "badjson.tar.gz", raw_json=b"{\"format\": 2,")
    _bundle(d / "oldformat.tar.gz", {"format": 1})
    _bundle(d / "builds.tar.gz", {"options": {"kernels": ["build:source=linux-source-7.3,series=/tmp/x.mbox"]}})
    _bundle(d / "fstestsurl.tar.gz", {"scenario": "nfs-fstests", "topology": {},
                                       "options": {"fstests": "https://example.org/xfstests.git", "kernels": ["debian:7.3"]}})
    _bundle(d / "escape.tar.gz", files={"topology/nvme-pi.yaml.j2": b"{{ cycler.__init__.__globals__.os.system('id') }}"})
    _bundle(d / "inject.tar.gz", {"options": {"kernels": ["debian:7.3"], "params": {"ns_size": "1G\n    append: init=/bin/sh"}}})
    _bundle(d / "unknownopt.tar.gz", {"options": {"kernels": ["debian:7.3"], "run_this": "rm -rf /"}})
    _bundle(d / "notemplate.tar.gz", {"topology": {"template": "missing.yaml.j2"}})
    _bundle(d / "noscenario.tar.gz", {"scenario": "no-such-scenario"})
    _bundle(d / "numberscenario.tar.gz", {"scenario": 5, "verdicts": []})
    with tarfile.open(d / "traversal.tar.gz", "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(data))
    return d


@pytest.fixture(scope="module")
def runtime():
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="lb-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


CASES: list[tuple[list[str], dict[str, str], str]] = [
    # topologies and parameters
    (["topology", "show", "nvme-pi", "-p", "pi=9"], {}, "machines.vm.nvme[0].namespaces[0].pi"),
    (["topology", "show", "nvme-pi", "-p", "nope=1"], {}, "unknown parameter nope"),
    (["topology", "show", "no-such"], {}, "unknown topology 'no-such'"),
    (["topology", "show", "nvme-pi", "-p", "broken"], {}, "not key=value"),
    (["topology", "show", "nvme-pi", "-p", "pi=1", "-p", "pi=3"], {}, "parameter pi is given twice"),
    (["topology", "show", "nvme-pi", "-p", "pi=true"], {}, "not true/false"),
    (["topology", "show", "nvme-pi", "-p", "pi=1.0"], {}, "a whole number is needed here"),
    (["topology", "show", "nvme-pi", "-p", "cpus=.nan"], {}, "not a finite number"),
    (["topology", "show", "nvme-pi", "-p", "ns_size=1G\nappend: init=/bin/sh"], {}, "no spaces, quotes or newlines"),
    (["topology", "show", "nvme-pi", "-p", "ns_size=1G # comment"], {}, "no spaces, quotes or newlines"),
    (["topology", "show", "nvme-pi", "-p", "ns_size={a: 1}"], {}, "no spaces, quotes or newlines"),
    (["topology", "show", "nvme-pi", "-p", "pi="], {}, "Input should be 0, 1, 2 or 3"),
    (["topology", "show", "nvme-pi", "-p", "ns_size=-1G"], {}, "(not first)"),
    (["topology", "show", "nvme-pi", "-p", "ns_size=2X"], {}, "is not a size"),
    (["topology", "show", "nvme-pi", "-p", "x" * 100 + "=1"], {}, "is not key=value"),
    (["topology", "show", "nvme-pi", "-p", "pi=" + "1" * 300], {}, "at most 200 characters"),
    (["topology", "show", "{d}/missing.yaml.j2"], {}, "no such file"),
    (["topology", "show", "{d}/"], {}, "not a file"),
    (["topology", "show", "{d}/syntax.yaml.j2"], {}, "template syntax error"),
    (["topology", "show", "{d}/raise.yaml.j2"], {}, "the template raised ZeroDivisionError"),
    (["topology", "show", "{d}/recurse.yaml.j2"], {}, "recurses without end"),
    (["topology", "show", "{d}/binary.yaml.j2"], {}, "not a text file"),
    (["topology", "show", "{d}/escape.yaml.j2"], {}, "refused by the template sandbox"),
    (["topology", "show", "{d}/dupkey.yaml.j2"], {}, "key 'name' appears twice"),
    (["topology", "show", "{d}/list.yaml.j2"], {}, "must be a mapping"),
    (["topology", "show", "{d}/passwd.yaml.j2"], {}, "not a template next to it"),
    (["topology", "show", "x" * 5000], {}, "not a name or a path"),
    (["topology", "show", "p2p-switch", "--qemu", "-p", "cpu=NoSuchCpu"], {}, "no CPU model 'NoSuchCpu'"),
    (["topology", "show", "p2p-switch", "-p", "cpu=max;reboot"], {}, "no spaces, quotes or newlines"),
    # kernel references
    (["run", "stable-pages", "--kernel", ""], {}, "--kernel: a kernel reference cannot be empty"),
    (["run", "stable-pages", "--kernel", "debian:banana"], {}, "packaged kernels are debian:MAJOR.MINOR"),
    (["run", "stable-pages", "--kernel", "a kernel"], {}, "no spaces or control characters"),
    (["run", "stable-pages", "--kernel", "k" * 600], {}, "at most 512 characters"),
    (["run", "stable-pages", "--kernel", "/nonexistent/bzImage"], {}, "does not exist"),
    (["run", "stable-pages", "--kernel", "{d}/notakernel"], {}, "is not an x86 bzImage"),
    (["run", "stable-pages", "--kernel", "build:"], {}, "build: needs a key"),
    (["run", "stable-pages", "--kernel", "build:zz"], {}, "'zz' is not key=value"),
    (["run", "stable-pages", "--kernel", "build:abc"], {}, "'abc' is not key=value"),
    (["run", "stable-pages", "--kernel", "build:0123456789abcdef"], {}, "no such built kernel"),
    (["run", "stable-pages", "--kernel", "build:base=/nonexistent/linux"], {}, "kernel source '/nonexistent/linux'"),
    (["run", "stable-pages", "--kernel", "build:source=/tmp,colour=blue"], {}, "unknown key 'colour'"),
    (["run", "stable-pages", "--kernel", "no-such-kernel-name"], {}, "unknown kernel reference"),
    (["bench", "boot", "nfs-rdma-pair", "--runs", "1"], {}, "lab bench boot measures a one-machine topology; nfs-rdma-pair has 2"),
    (["inspect", "nvme-pi", "--kernel", ""], {}, "--kernel: a kernel reference cannot be empty"),
    (["inspect", "nvme-pi", "--kernel", "debian:banana"], {}, "debian:MAJOR.MINOR"),
    (["up", "nvme-pi", "--kernel", "/nonexistent/bzImage"], {}, "does not exist"),
    # scenario options
    (["run", "stable-pages", "--bs", "3"], {}, "--bs: a block size is a multiple of 512"),
    (["run", "stable-pages", "--bs", "1K"], {}, "not a multiple of the namespace's 4096-byte logical block"),
    (["run", "stable-pages", "--bs", "64Q"], {}, "is not a size"),
    (["run", "stable-pages", "--duration", "nan"], {}, "--duration"),
    (["run", "stable-pages", "--duration", "inf"], {}, "--duration"),
    (["run", "stable-pages", "--duration", "0"], {}, "--duration: Input should be greater than 0"),
    (["run", "stable-pages", "--duration", "-5"], {}, "--duration: Input should be greater than 0"),
    (["run", "stable-pages", "--duration", "soon"], {}, "--duration: Input should be a valid number"),
    (["run", "stable-pages", "--control-duration", "0"], {}, "--control-duration"),
    (["run", "stable-pages", "--size", "0"], {}, "--size: Input should be greater than 0"),
    (["run", "stable-pages", "--size", "99999"], {}, "--size: Input should be less than or equal to 4096"),
    (["run", "stable-pages", "--size", "2048"], {}, "larger than the 1024 MiB namespace"),
    (["run", "stable-pages", "--target", "btrfs"], {}, "--target: Input should be 'xfs', 'ext4' or 'raw'"),
    (["run", "stable-pages", "--direction", "up"], {}, "--direction"),
    (["run", "stable-pages", "--fault", "meteor"], {}, "--fault"),
    (["run", "stable-pages", "-p", "pi=1", "-p", "pi=1"], {}, "given twice"),
    (["run", "stable-pages", "--topology", "nvme-pi", "-p", "lba=1000"], {}, "lba"),
    (["run", "stable-pages", "--kernel", "debian:7.3", "--kernel", "debian:7.3"], {}, "share the name"),
    (["run", "p2p-block", "--cpu", "NoSuchCpu"], {}, "no CPU model 'NoSuchCpu'"),
    (["run", "p2p-block", "--cpu", "max;rm -rf /"], {}, "--cpu"),
    (["run", "p2p-block", "--use-cmb-sqes", "banana"], {}, "--use-cmb-sqes: Input should be a valid boolean"),
    (["run", "p2p-block", "--size", "3"], {}, "--size: Input should be a multiple of 4"),
    (["run", "p2p-block", "--placement", "nowhere"], {}, "--placement"),
    (["run", "nfs-dio", "--only", "size=huge"], {}, "matches none of the 44 cases"),
    (["run", "nfs-dio", "--transport", "udp"], {}, "--transport: Input should be 'tcp' or 'rdma'"),
    (["run", "nfs-dio", "--nfs-version", "5"], {}, "--nfs-version"),
    (["run", "nfs-dio", "--topology", "nvme-pi"], {}, "has no machine server, client"),
    (["run", "nfs-p2p", "--fault", "x"], {}, "--fault"),
    (["run", "nfs-fstests"], {}, "fstests needs a tree"),
    (["run", "fstests", "--fstests", str(FAKE_FSTESTS), "-p", "namespaces=1"], {}, "fstests needs two namespaces"),
    (["run", "nfs-fstests", "--fstests", "/nonexistent/fstests"], {}, "no such directory"),
    (["run", "nfs-fstests", "--fstests", "/tmp"], {}, "no fstests tree here"),
    (["run", "blktests"], {}, "blktests needs a blktests tree"),
    (["run", "blktests", "--blktests", "/tmp"], {}, "no blktests tree here"),
    (["run", "blktests", "--blktests", "/tmp", "--transport", "fc"], {}, "--transport"),
    (["run", "blktests", "--blktests", "/tmp", "--test", "nvme/4;reboot"], {}, "expected names like nvme/004"),
    (["run", "fstests", "--fstests", "/tmp", "--section", "btrfs"], {}, "--section"),
    (["suite", "build", "fstests", "--source", "/nonexistent"], {}, "no such directory"),
    (["run", "nfs-fstests", "--fstests", str(FAKE_FSTESTS), "--test", "generic/1; rm -rf /"], {}, "expected names like generic/091"),
    (["run", "nfs-fstests", "--fstests", str(FAKE_FSTESTS), "--preset", "nope"], {}, "known presets"),
    (["run", "nfs-fstests", "--fstests", str(FAKE_FSTESTS), "--timeout", "0"], {}, "--timeout"),
    (["run", "nfs-fstests", "--fstests", str(FAKE_FSTESTS), "--shard", "4/3"], {}, "--shard 4/3: part 4 of 3 does not exist"),
    (["run", "blktests", "--blktests", str(FIXTURES / "blktests-fake"), "--shard", "1/x"], {}, "--shard"),
    (["bench", "boot", "--runs", "0"], {}, "--runs must be between 1 and 100"),
    # environment
    (["run", "stable-pages"], {"LAB_ACCEL": "warp"}, "LAB_ACCEL='warp'"),
    (["run", "stable-pages"], {"LAB_BOOT_TIMEOUT": "abc"}, "LAB_BOOT_TIMEOUT='abc': not a number of seconds"),
    (["run", "stable-pages"], {"LAB_BOOT_TIMEOUT": "nan"}, "LAB_BOOT_TIMEOUT='nan'"),
    (["run", "stable-pages"], {"LAB_BOOT_TIMEOUT": "-1"}, "LAB_BOOT_TIMEOUT='-1'"),
    (["topology", "list"], {"LAB_CACHE": ""}, "LAB_CACHE is set but empty"),
    (["topology", "list"], {"LAB_TOPOLOGIES": "/nonexistent"}, "LAB_TOPOLOGIES=/nonexistent: no such directory"),
    (["topology", "list"], {"LAB_RUNTIME": "/tmp/" + "r" * 60}, "LAB_RUNTIME"),
    (["topology", "list"], {"LAB_KERNELS": "/nonexistent.toml"}, "LAB_KERNELS"),
    (["results", "list"], {"LAB_RESULTS": "/dev/null/results"}, "cannot create the results directory"),
    (["ssh", "vm"], {"LAB_RUNTIME": "/etc/hostname"}, "runtime directory /etc/hostname is not a directory"),
    (["ssh", "vm"], {"LAB_RUNTIME": "/etc"}, "runtime directory /etc "),
    # results and bundles
    (["results", "show", "no-such-run"], {}, "no run matching 'no-such-run'"),
    (["results", "show", "{d}/badmanifest"], {}, "manifest is damaged"),
    (["results", "show", "{d}/nowhere/"], {}, "no such run directory"),
    (["results", "compare", "{d}/badresults"], {}, "results is damaged"),
    (["results", "compare", "{d}/oldresults"], {}, "not results of a scenario run"),
    (["results", "junit", "{d}/badjunit", "{d}/badjunit"], {}, "damaged JUnit XML"),
    (["results", "bundle", "{d}/noresults"], {}, "has no scenario results"),
    (["results", "bundle", "{d}/badmanifest"], {}, "manifest is damaged"),
    (["replay", "/nonexistent/bundle.tar.gz"], {}, "no such bundle"),
    (["replay", "{d}/notabundle.tar.gz"], {}, "not a lab bundle"),
    (["replay", "{d}/nobundlejson.tar.gz"], {}, "no bundle.json"),
    (["replay", "{d}/badjson.tar.gz"], {}, "bundle.json is damaged"),
    (["replay", "{d}/oldformat.tar.gz"], {}, "bundle format 1 is not supported"),
    (["replay", "{d}/builds.tar.gz"], {}, "pass --allow-build"),
    (["replay", "{d}/fstestsurl.tar.gz"], {}, "clone and build fstests from https://example.org/xfstests.git"),
    (["replay", "{d}/escape.tar.gz"], {}, "refused by the template sandbox"),
    (["replay", "{d}/inject.tar.gz"], {}, "not a plain number, boolean or simple string"),
    (["replay", "{d}/unknownopt.tar.gz"], {}, "unknown option 'run_this'"),
    (["replay", "{d}/notemplate.tar.gz"], {}, "holds no such file"),
    (["replay", "{d}/noscenario.tar.gz"], {}, "unknown scenario 'no-such-scenario'"),
    (["replay", "{d}/numberscenario.tar.gz"], {}, "a damaged bundle.json: scenario: Input should be a valid string (got 5) (and 1 more)"),
    (["replay", "{d}/traversal.tar.gz"], {}, "is not something a lab bundle holds"),
    # running labs
    (["qmp", "vm", "query-status", "[1, 2]"], {}, "QMP arguments must be a JSON object, not list"),
    (["qmp", "vm", "query-status", "{bad"], {}, "QMP arguments must be a JSON object"),
    (["qmp", "vm", "bad command!"], {}, "not a command name"),
    (["ssh", "vm", "--lab", "no-such-lab-id"], {}, "no running lab"),
    (["down", "no-such-lab"], {}, "no running lab matching"),
    # reproducers and files
    (["repro", "--kernel", "debian:7.3"], {}, "give a command (after --) or --fio JOB"),
    (["repro", "--put", "/nonexistent/file", "--", "true"], {}, "/nonexistent/file: no such file or directory"),
    (["repro", "--max-time", "5", "--", "true"], {}, "--max-time goes with --until-fail"),
    (["repro", "--machine", "nope", "--", "true"], {}, "--machine nope: topology nvme-pi has vm"),
    (["repro", "--command", "x", "--", "y"], {}, "not both"),
    (["repro", "--repeat", "0", "--", "true"], {}, "--repeat: Input should be greater than or equal to 1"),
    (["repro", "--timeout", "nan", "--", "true"], {}, "--timeout"),
    (["repro", "--fio", "/nonexistent.fio"], {}, "/nonexistent.fio: no such file or directory"),
    (["run", "{d}/nonexistent.py"], {}, "no such scenario file"),
    (["run", "{d}/raises.py"], {}, "importing it raised RuntimeError: broken on import"),
    (["run", "{d}/empty.py"], {}, "defines 0 Scenario subclasses"),
    (["run", "{d}/exits.py"], {}, "importing it called sys.exit(3)"),
    (["run", "{d}/shadow.py"], {}, "scenario name 'stable-pages' is the lab's own"),
    (["run", "{d}/notamodel.py"], {}, "Mine.Options must be a subclass of lab.scenarios.options.ScenarioOptions"),
    (["run", "{d}/two.py"], {}, "defines 2 Scenario subclasses"),
    (["run", "{d}/noexercise.py"], {}, "Mine does not define exercise(self, ctx)"),
    (["run", "{d}/badname.py"], {}, "name must be a short lower-case word"),
    (["cp", "a", "b"], {}, "no running lab"),
    (["replay", "{d}/oldformat.tar.gz", "--kernel", ""], {}, "bundle format 1"),
    (["bisect", "--base", "/tmp", "--series", "x", "--scenario", "stable-pages", "--max-batches", "0"], {},
     "--max-batches must be between 1 and 100"),
    # kernel builds and bisect
    (["kernel", "build", "--source", "/tmp", "--patches", "-1"], {}, "--patches must be 0 or more"),
    (["kernel", "build", "--source", "/tmp", "--series", "/nonexistent/fix.mbox"], {}, "no such file or directory"),
    (["kernel", "build", "--source", "/tmp", "--config", "no-such-fragment"], {}, "config fragment 'no-such-fragment'"),
    (["kernel", "build", "--source", "/tmp"], {}, "is not a kernel tree"),
    (["kernel", "build", "--source", "/nonexistent"], {}, "no such file or directory"),
    (["kernel", "remove", "build:0123456789abcdef"], {}, "no such built kernel"),
    (["bisect", "--base", "/tmp", "--scenario", "stable-pages"], {}, "needs either --series"),
    (["bisect", "--base", "/nonexistent/tree", "--series", "/tmp", "--scenario", "stable-pages"], {}, "kernel source '/nonexistent/tree'"),
    (["bisect", "--base", "/tmp", "--series", "x", "--scenario", "stable-pages", "--", "--kernel", "debian:7.3"], {},
     "bisect chooses the kernels itself"),
    (["bisect", "--base", "/tmp", "--series", "x", "--scenario", "stable-pages", "--", "--bs", "3"], {}, "--bs"),
]


@pytest.mark.parametrize("argv,env,expected", CASES, ids=[" ".join(a)[:60] for a, _, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_started(argv, env, expected, d, runtime, tmp_path, monkeypatch, capsys):
    def forbidden(*_a, **_k):
        raise AssertionError("bad input reached a boot or a run directory")

    monkeypatch.setattr(Lab, "start", forbidden)
    monkeypatch.setattr(RunDir, "create", classmethod(forbidden))
    if argv[:2] == ["kernel", "build"]:
        import lab.host

        monkeypatch.setattr(lab.host, "ensure_host", forbidden)  # refused before host packages are installed
    monkeypatch.setenv("LAB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LAB_RUNTIME", runtime)  # no lab of anyone else's is running here
    monkeypatch.delenv("LAB_FSTESTS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace("{d}", str(d)))
    rc = cli.main([a.replace("{d}", str(d)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("lab: error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert not list((tmp_path / "results").glob("*")), "a run directory was made"


def test_argparse_choices_are_usage_errors_too(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bisect", "--base", "/tmp", "--series", "x", "--scenario", "nope"])
    assert info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_a_good_bundle_shows_its_plan_before_running(d, tmp_path, capsys):
    _bundle(tmp_path / "ok.tar.gz")
    assert cli.main(["replay", str(tmp_path / "ok.tar.gz"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "bundle ok.tar.gz: stable-pages run r" in out
    assert "kernel debian:7.3: fetched from Debian's archive" in out and "rendered in the sandbox" in out
    assert cli.main(["replay", str(d / "builds.tar.gz"), "--dry-run", "--allow-build"]) == 0
    assert "BUILT FROM SOURCE on this host" in capsys.readouterr().out
