"""fstests (xfstests) against the NFS mount of nfs-rdma-pair, per transport: the user's tree is copied
into the client, configured for FSTYP=nfs with the transport's mount options, and `./check` runs
the test list; the result is a pass/fail/notrun table per test and transport.

The parts that do not need a guest (the check script, the result parser, the table) are plain
functions, tested against a tiny fake fstests tree."""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from lab import junit
from lab.errors import BootError, LabError, UsageError
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios import nfs
from lab.scenarios.runner import run_jobs
from lab.scenarios.verdict import ERROR, FAIL, PASS

NAME = "nfs-fstests"
# The list the NFS direct-I/O series (seed 000) was tested with, over RDMA and TCP.
PRESETS = {
    "nfs-dio": ("generic/091 generic/130 generic/139 generic/143 generic/154 generic/155 generic/183 generic/188 "
                "generic/190 generic/196 generic/198 generic/203 generic/214 generic/240 generic/263 generic/287 "
                "generic/290 generic/292 generic/330 generic/444 generic/450 generic/451 generic/586 generic/647 "
                "generic/708 generic/729 generic/760").split(),
}
DEFAULT_PRESET = "nfs-dio"
GUEST_TREE = "/root/fstests"
TEST_DIR = "/mnt/fstests-test"
SCRATCH_MNT = "/mnt/fstests-scratch"
PASS_S, FAIL_S, NOTRUN_S = "pass", "fail", "notrun"
_TEST_RE = re.compile(r"^[a-z0-9_-]+/\d{3,}$")
_LINE_RE = re.compile(r"^([a-z0-9_-]+/\d{3,})\s+(.*)$")


def check_tree(path: Path) -> None:
    """A built fstests tree: the check script, common/rc, and the compiled helpers."""
    if not path.is_dir():
        raise UsageError(f"--fstests {path}: no such directory")
    if not (path / "check").is_file() or not (path / "common/rc").is_file():
        raise UsageError(f"--fstests {path}: not an fstests tree (no check script and common/rc)")
    if not (path / "ltp/fsstress").is_file():
        raise UsageError(f"--fstests {path}: not built (no ltp/fsstress); run 'make' in it first")


def is_url(spec: str) -> bool:
    return bool(re.match(r"^(git|https?|ssh|file)://", spec)) or bool(re.match(r"^[\w.-]+@[\w.-]+:", spec))


def fetch_tree(spec: str) -> Path:
    """A local tree as it is, or a git URL cloned (once per URL) into the cache and built with make."""
    if not is_url(spec):
        path = Path(spec).expanduser().resolve()
        check_tree(path)
        return path
    import hashlib
    import subprocess

    from lab.paths import cache_dir
    from lab.progress import run_logged, step

    dest = cache_dir() / "fstests" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    if not (dest / "check").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
        with step(f"cloning fstests from {spec}") as st:
            run_logged(["git", "clone", "-q", "--depth", "1", spec, str(tmp)], dest.parent / f"{dest.name}.log", st, what="git clone")
        tmp.rename(dest)
    if not (dest / "ltp/fsstress").is_file():
        with step(f"building fstests in {dest} (make)") as st:
            run_logged(["make", "-j2"], dest / "lab-build.log", st, what="make (fstests needs xfslibs-dev, uuid-dev, "
                       "libattr1-dev, libacl1-dev, libaio-dev, liburing-dev, libtool, autoconf on the host)", cwd=dest)
    check_tree(dest)
    return dest


def resolve_tests(tests: list[str] | None, preset: str | None) -> list[str]:
    names: list[str] = []
    if preset:
        if preset not in PRESETS:
            raise UsageError(f"--preset {preset!r}: known presets: {', '.join(PRESETS)}")
        names += PRESETS[preset]
    for item in tests or []:
        names += item.replace(",", " ").split()
    if not names:
        names = list(PRESETS[DEFAULT_PRESET])
    for n in names:
        if not _TEST_RE.match(n):
            raise UsageError(f"test {n!r}: expected names like generic/091")
    return list(dict.fromkeys(names))


def local_config(server: str, mount_options: str) -> str:
    return "\n".join([
        "export FSTYP=nfs",
        f"export TEST_DEV={server}:{nfs.EXPORT}/test",
        f"export TEST_DIR={TEST_DIR}",
        f"export SCRATCH_DEV={server}:{nfs.EXPORT}/scratch",
        f"export SCRATCH_MNT={SCRATCH_MNT}",
        f"export NFS_MOUNT_OPTIONS={shlex.quote('-o ' + mount_options)}",
        "",
    ])


def check_script(tree: str, config: str, tests: list[str], section_timeout: int) -> str:
    """What runs in the client: write local.config, run check with an xunit report, print it."""
    return f"""cd {shlex.quote(tree)} || exit 97
cat > local.config <<'LAB_EOF'
{config}LAB_EOF
mkdir -p {TEST_DIR} {SCRATCH_MNT}
rm -rf results
timeout {section_timeout} ./check -R xunit {' '.join(tests)}
rc=$?
echo "LAB-CHECK-EXIT $rc"
for x in results/result.xml results/*/result.xml; do
    [ -f "$x" ] && {{ echo LAB-XUNIT-BEGIN; cat "$x"; echo; echo LAB-XUNIT-END; break; }}
done
exit 0
"""


def parse_check_output(text: str) -> dict[str, str]:
    """Per-test status from check's console output: pass, fail or notrun. The summary lines
    (Not run:, Failures:) override a test's own line."""
    status: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _LINE_RE.match(line)
        if m:
            test, rest = m.group(1), m.group(2)
            if rest.startswith("[not run]") or rest.startswith("[expunged]"):
                status[test] = NOTRUN_S
            elif (rest.startswith("- output mismatch") or rest.startswith("[failed") or "inconsistent" in rest
                  or "_check_" in rest or rest.startswith("- ")):
                status[test] = FAIL_S
            elif re.match(r"^(\d+s\s*\.\.\.\s*)?\d+s$", rest) or re.match(r"^\d+s\s*\.\.\.\s*\d+s", rest):
                status.setdefault(test, PASS_S)
            continue
        for prefix, value in (("Not run:", NOTRUN_S), ("Failures:", FAIL_S)):
            if line.startswith(prefix):
                for test in line[len(prefix):].split():
                    if _TEST_RE.match(test):
                        status[test] = value
    return status


def parse_xunit(xml_text: str) -> dict[str, str]:
    """Per-test status from fstests' xunit report (check -R xunit)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return {}
    status = {}
    for case in root.iter("testcase"):
        name = case.get("name", "")
        if not _TEST_RE.match(name):
            continue
        if case.find("skipped") is not None:
            status[name] = NOTRUN_S
        elif case.find("failure") is not None or case.find("error") is not None:
            status[name] = FAIL_S
        else:
            status[name] = PASS_S
    return status


def results_from(output: str, tests: list[str]) -> dict:
    """Statuses of every requested test (missing = not reported), from xunit when check wrote it."""
    xunit = ""
    if "LAB-XUNIT-BEGIN" in output:
        xunit = output.split("LAB-XUNIT-BEGIN", 1)[1].split("LAB-XUNIT-END", 1)[0]
    console = output.split("LAB-CHECK-EXIT", 1)[0]
    exit_m = re.search(r"LAB-CHECK-EXIT (\d+)", output)
    found = parse_check_output(console)
    found.update(parse_xunit(xunit))
    statuses = {t: found.get(t, "not reported") for t in tests}
    return {"statuses": statuses, "check_exit": int(exit_m.group(1)) if exit_m else None, "source": "xunit" if xunit else "console"}


def verdict_of(section: dict) -> str:
    statuses = section["statuses"]
    if section.get("check_exit") is None or all(s == "not reported" for s in statuses.values()):
        return ERROR
    if any(s in (FAIL_S, "not reported") for s in statuses.values()):
        return FAIL
    return PASS


def table(results: dict) -> str:
    lines = []
    for label, k in results.get("kernels", {}).items():
        transports = list(k.get("transports", {}))
        lines.append(f"{label} ({k.get('release', '?')}): {k['verdict']}" + (f" - {k['reason']}" if k["verdict"] == ERROR else ""))
        if not transports:
            continue
        tests = list(next(iter(k["transports"].values())).get("statuses", {}))
        lines.append(f"  {'test':14}" + "".join(f"{t:>10}" for t in transports))
        for test in tests:
            lines.append(f"  {test:14}" + "".join(f"{k['transports'][t]['statuses'].get(test, '-'):>10}" for t in transports))
        totals = []
        for t in transports:
            values = list(k["transports"][t]["statuses"].values())
            totals.append(f"{t}: {values.count(PASS_S)} pass, {values.count(FAIL_S)} fail, {values.count(NOTRUN_S)} notrun"
                          + (f", {len(values) - values.count(PASS_S) - values.count(FAIL_S) - values.count(NOTRUN_S)} not reported"
                             if len(values) != values.count(PASS_S) + values.count(FAIL_S) + values.count(NOTRUN_S) else ""))
        lines.append("  " + "; ".join(totals))
    return "\n".join(lines) if lines else "no kernel was run"


def tree_tarball(path: Path) -> bytes:
    """The tree without git metadata or old results, as a gzip tarball for the client."""
    buf = io.BytesIO()

    def keep(info_: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info_.name).parts
        return None if len(parts) > 1 and parts[1] in (".git", "results") else info_

    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(str(path), arcname="fstests", filter=keep)
    return buf.getvalue()


@dataclass
class Options:
    fstests: str | None = None
    tests: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=lambda: ["debian:7.3"])
    transports: list[str] = field(default_factory=lambda: list(nfs.TRANSPORTS))
    version: str = "4.2"
    timeout: int = 3600  # seconds per transport for the whole check run
    accel: str = "auto"

    def validate(self) -> None:
        nfs.Options(kernels=self.kernels, transports=self.transports, version=self.version).validate()
        if not self.fstests:
            raise UsageError("nfs-fstests needs an fstests tree: --fstests PATH (or a git URL), or LAB_FSTESTS")
        if not is_url(self.fstests):
            check_tree(Path(self.fstests).expanduser())
        if not self.tests:
            raise UsageError("no tests to run")

    def to_dict(self) -> dict:
        return {"fstests": self.fstests, "tests": self.tests, "kernels": self.kernels, "transports": self.transports,
                "version": self.version, "timeout": self.timeout}


def run_kernel(options: Options, ref: str, sub: RunDir) -> dict:
    from lab.lab import Lab
    from lab.topology.render import render

    section: dict = {"kernel": ref, "transports": {}, "verdict": ERROR, "reason": ""}
    sub.update(scenario=NAME, options=options.to_dict(), kernel_ref=ref)
    tree = Path(options.fstests or "").expanduser()
    try:
        with Lab(render("nfs-rdma-pair"), kernel_ref=ref, accel=options.accel, run=sub) as lab:
            server, client = lab.guest("server"), lab.guest("client")
            section["release"] = lab.kernels["client"].release
            nfs.setup_server(server, subdirs=("test", "scratch"))
            local = sub.path / "fstests.tar.gz"
            local.write_bytes(tree_tarball(tree))
            client.put(local, "/root/fstests.tar.gz")
            local.unlink()
            client.run(f"rm -rf {GUEST_TREE} && tar -xzf /root/fstests.tar.gz -C /root && rm /root/fstests.tar.gz",
                       timeout=600, check=True)
            for transport in options.transports:
                t0 = time.monotonic()
                opts = nfs.mount_options(options.version, transport)
                # Mount TEST_DEV ourselves first: fstests reuses it, and /proc/mounts proves the transport.
                line = nfs.mount(client, nfs.server_address(lab), options.version, transport,
                                 export=f"{nfs.EXPORT}/test", mountpoint=TEST_DIR)
                script = check_script(GUEST_TREE, local_config(nfs.server_address(lab), opts), options.tests, options.timeout)
                res = client.run(script, timeout=options.timeout + 300)
                output = res.stdout + res.stderr
                sub.write(f"{transport}/check.out", output)
                client.run(f"cd {GUEST_TREE} && tar -czf /root/results-{transport}.tar.gz results 2>/dev/null", timeout=120)
                try:
                    client.get(f"/root/results-{transport}.tar.gz", sub.path / transport / "results.tar.gz")
                except Exception:  # the results tree is a bonus; the console output is kept anyway
                    pass
                client.run(f"umount -f {SCRATCH_MNT} 2>/dev/null; umount -f {TEST_DIR} 2>/dev/null", timeout=120)
                parsed = results_from(output, options.tests)
                parsed.update(mount=line, seconds=round(time.monotonic() - t0, 1))
                parsed["verdict"] = verdict_of(parsed)
                section["transports"][transport] = parsed
                counts = {s: list(parsed["statuses"].values()).count(s) for s in (PASS_S, FAIL_S, NOTRUN_S)}
                info(f"{ref}: fstests over {transport}: {parsed['verdict']} ({counts}) in {parsed['seconds']} s")
    except (BootError, LabError) as exc:
        section["reason"] = str(exc).splitlines()[0]
        sub.write("error.txt", str(exc))
    return nfs.close_section(section, options.transports, sub)


def _write(run_dir: RunDir, results: dict) -> None:
    run_dir.write("results.json", json.dumps(results, indent=2))
    run_dir.write("summary.txt", table(results) + "\n")
    cases = []
    for label, k in results["kernels"].items():
        for t, v in k["transports"].items():
            for test, status in v["statuses"].items():
                cases.append({"name": f"{test} ({t})", "classname": f"{NAME}.{label}",
                              "outcome": "skipped" if status == NOTRUN_S else status, "ok": status in (PASS_S, NOTRUN_S),
                              "message": status})
    junit.write(NAME, cases, run_dir.path / "junit.xml")


def run(options: Options) -> tuple[RunDir, dict]:
    options.validate()
    options.fstests = str(fetch_tree(options.fstests or ""))
    jobs = [(ref.replace(":", "-"), ref, lambda sub, ref=ref: run_kernel(options, ref, sub)) for ref in options.kernels]
    return run_jobs(NAME, "nfs-rdma-pair", options.to_dict(), jobs, _write)
