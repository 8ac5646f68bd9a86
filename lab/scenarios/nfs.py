"""NFS between the two machines of nfs-rdma-pair: server set-up with an RDMA listener, client mounts
over the transport asked for (and the proof of which one is in use), and the nfs-dio scenario."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from lab import junit
from lab.errors import BootError, LabError, UsageError
from lab.lab import Lab
from lab.paths import scenarios_dir
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios.runner import run_jobs
from lab.scenarios.verdict import ERROR, FAIL, PASS
from lab.topology.render import render

NAME = "nfs-dio"
EXPORT = "/export"
MOUNT = "/mnt/nfs"
RDMA_PORT = 20049
VERSIONS = ("3", "4.1", "4.2")
TRANSPORTS = ("tcp", "rdma")
GUEST_DIR = "/usr/local/lib/lab"


class NfsError(LabError):
    pass


def server_address(lab: Lab) -> str:
    return lab.rendered.topology.machines["server"].nics[0].address.split("/")[0]


def setup_server(guest, subdirs: tuple[str, ...] = ()) -> None:
    """XFS on the namespace, exported (and each of `subdirs` below it as its own export); nfsd with
    TCP 2049 and RDMA 20049 listeners. The lean init starts no services, so the daemons are started
    here, in the order systemd would."""
    exports = "".join(f"{EXPORT}/{d} *(rw,no_root_squash,no_subtree_check,insecure)\n" for d in subdirs)
    script = f"""set -e
modprobe -a nfsd xfs rpcrdma 2>/dev/null || modprobe -a nfsd xfs
mkfs.xfs -f -q /dev/nvme0n1
mkdir -p {EXPORT} && mount /dev/nvme0n1 {EXPORT} && chmod 1777 {EXPORT}
for d in {' '.join(subdirs)}; do mkdir -p {EXPORT}/$d && chmod 1777 {EXPORT}/$d; done
mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
mkdir -p /var/lib/nfs/rpc_pipefs /run/rpcbind
mountpoint -q /var/lib/nfs/rpc_pipefs || mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
rpcbind -w
printf '{EXPORT} *(rw,no_root_squash,no_subtree_check,insecure)\n{exports}' > /etc/exports
exportfs -ra
rpc.mountd
rpc.statd --no-notify || true
# A fresh nfsd refuses OPENs for its grace period (90 s by default) and clients retry with backoff:
# without this the first transport measured crawls at 0.2 MiB/s. 10 s is the kernel's minimum.
echo 10 > /proc/fs/nfsd/nfsv4leasetime
echo 10 > /proc/fs/nfsd/nfsv4gracetime
rpc.nfsd 8
echo 'rdma {RDMA_PORT}' > /proc/fs/nfsd/portlist
cat /proc/fs/nfsd/portlist
"""
    res = guest.run(script, timeout=300)
    if not res.ok or f"rdma {RDMA_PORT}" not in res.stdout:
        raise NfsError(f"server: NFS set-up failed: {(res.stderr or res.stdout).strip().splitlines()[-3:]}")


def mount_options(version: str, transport: str) -> str:
    opts = f"vers={version},proto={transport}" + (f",port={RDMA_PORT}" if transport == "rdma" else "")
    return opts + (",nolock" if version == "3" else "")


def mount(guest, server: str, version: str, transport: str, export: str = EXPORT, mountpoint: str = MOUNT) -> str:
    """Mount and prove the transport from /proc/mounts: NFSv4.1+ silently reuses an existing
    connection, so what mount(8) was asked for is not evidence."""
    opts = mount_options(version, transport)
    guest.run(f"umount -f {mountpoint} 2>/dev/null; mkdir -p {mountpoint}", timeout=60)
    if transport == "rdma":
        guest.run("modprobe rpcrdma", timeout=60)
    # rxe retransmits on timeouts when the host is busy: allow a slow first connection, retry once.
    res = guest.run(f"timeout 240 mount -t nfs -o {opts} {server}:{export} {mountpoint}", timeout=300)
    if not res.ok:
        guest.run(f"umount -f {mountpoint} 2>/dev/null", timeout=60)
        res = guest.run(f"timeout 240 mount -t nfs -o {opts} {server}:{export} {mountpoint}", timeout=300)
    if not res.ok:
        raise NfsError(f"client: mount -o {opts} failed: {(res.stderr or res.stdout).strip()[-200:]}")
    line = guest.run(f"grep ' {mountpoint} ' /proc/mounts", timeout=30).stdout.strip()
    proto = next((o.split("=", 1)[1] for o in line.split()[3].split(",") if o.startswith("proto=")), "?") if line else "?"
    if proto != transport:
        raise NfsError(f"client: asked for proto={transport} but /proc/mounts says proto={proto} ({line})")
    return line


def vmstat_pins(guest) -> dict[str, int]:
    text = guest.run("grep -E '^nr_foll_pin_(acquired|released) ' /proc/vmstat", timeout=30).stdout
    return {k: int(v) for k, v in (l.split() for l in text.splitlines())}


@dataclass
class Options:
    kernels: list[str] = field(default_factory=lambda: ["debian:7.3"])
    transports: list[str] = field(default_factory=lambda: list(TRANSPORTS))
    version: str = "4.2"
    inject_corruption: bool = False
    only: str | None = None
    accel: str = "auto"
    params: dict = field(default_factory=dict)  # nfs-rdma-pair parameters (rdma=siw, pi=0, ...)

    def validate(self) -> None:
        render("nfs-rdma-pair", self.params)  # bad parameters fail before anything boots
        for t in self.transports:
            if t not in TRANSPORTS:
                raise UsageError(f"--transport {t!r}: choose tcp or rdma")
        if self.version not in VERSIONS:
            raise UsageError(f"--nfs-version {self.version!r}: choose from {', '.join(VERSIONS)}")

    def to_dict(self) -> dict:
        return {"kernels": self.kernels, "transports": self.transports, "version": self.version,
                "inject_corruption": self.inject_corruption, "only": self.only, "params": self.params}


def _corrupt_on_server(server, client, pause: str) -> dict:
    """Fault injection: flip one byte of the file on the server between the client's write and its
    verification, then let the client go on. The lab must report the case and the offset."""
    deadline = time.monotonic() + 300
    while not client.run(f"test -e {pause}", timeout=30).ok:
        if time.monotonic() > deadline:
            raise NfsError("client never reached the verification pause")
        time.sleep(0.5)
    offset = 17  # inside the first case (file offset 0, 1000 bytes)
    server.run(f"python3 -c \"f=open('{EXPORT}/nfs-dio.dat','r+b'); f.seek({offset}); b=f.read(1); f.seek({offset}); "
               f"f.write(bytes([b[0] ^ 0xff])); f.close()\" && sync", timeout=60, check=True)
    client.run(f"rm -f {pause}", timeout=30, check=True)
    return {"file_offset": offset}


def run_kernel(options: Options, ref: str, sub: RunDir) -> dict:
    section: dict = {"kernel": ref, "transports": {}, "verdict": ERROR, "reason": ""}
    sub.update(scenario=NAME, options=options.to_dict(), kernel_ref=ref)
    try:
        started = time.monotonic()
        with Lab(render("nfs-rdma-pair", options.params), kernel_ref=ref, accel=options.accel, run=sub) as lab:
            server, client = lab.guest("server"), lab.guest("client")
            section["release"] = lab.kernels["client"].release
            setup_server(server)
            client.run(f"mkdir -p {GUEST_DIR}", check=True)
            client.put(scenarios_dir() / "nfs/nfs_dio.py", f"{GUEST_DIR}/nfs_dio.py")
            section["setup_seconds"] = round(time.monotonic() - started, 1)
            for transport in options.transports:
                t0 = time.monotonic()
                line = mount(client, server_address(lab), options.version, transport)
                mounted = round(time.monotonic() - started, 1)
                section.setdefault("mounted_seconds", {})[transport] = mounted
                info(f"{ref}: mounted over {transport} after {mounted} s: {line}")
                before = vmstat_pins(client)
                cmd = f"python3 {GUEST_DIR}/nfs_dio.py --dir {MOUNT}" + (f" --only '{options.only}'" if options.only else "")
                injected = None
                if options.inject_corruption:
                    pause = "/tmp/lab-pause"
                    cmd += f" --stop-before-verify {pause}"
                    import threading

                    holder: dict = {}
                    th = threading.Thread(target=lambda: holder.update(res=client.run(cmd, timeout=1800)))
                    th.start()
                    # A second SSH session for the pause checks: one fabric connection runs one command at a time.
                    from lab.ssh import Guest

                    watcher = Guest("client", client.port, client.key_file)
                    try:
                        injected = _corrupt_on_server(server, watcher, pause)
                    finally:
                        watcher.close()
                    th.join()
                    res = holder["res"]
                else:
                    res = client.run(cmd, timeout=1800)
                sub.write(f"{transport}/nfs_dio.out", res.stdout + res.stderr)
                after = vmstat_pins(client)
                client.run(f"sync; umount {MOUNT}", timeout=120)
                at_rest = vmstat_pins(client)
                try:
                    out = json.loads(res.stdout.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    section["transports"][transport] = {"verdict": ERROR, "reason": f"unreadable output: {res.stderr.strip()[-300:]}"}
                    continue
                bad = [c for c in out["cases"] if "error" in c]
                acquired = at_rest.get("nr_foll_pin_acquired", 0) - before.get("nr_foll_pin_acquired", 0)
                released = at_rest.get("nr_foll_pin_released", 0) - before.get("nr_foll_pin_released", 0)
                if acquired == 0 and released == 0:
                    pins = "not exercised: the NFS direct path took page references, not pins (counters did not move)"
                elif acquired == released:
                    pins = f"balanced: {acquired} pins acquired and released"
                else:
                    pins = f"UNBALANCED at rest: {acquired} acquired, {released} released"
                verdict = FAIL if bad or pins.startswith("UNBALANCED") else PASS
                reason = (f"{len(bad)} of {len(out['cases'])} cases failed; first: {bad[0]['name']}: {bad[0]['error']}" if bad
                          else f"{len(out['cases'])} cases verified, {out['mib_per_s']} MiB/s")
                section["transports"][transport] = {
                    "verdict": verdict, "reason": reason, "mount": line, "pins": pins, "injected": injected,
                    "cases": len(out["cases"]), "failed": [{"name": c["name"], "error": c["error"]} for c in bad],
                    "mib_per_s": out["mib_per_s"], "seconds": round(time.monotonic() - t0, 1),
                    "vmstat": {"before": before, "after_io": after, "at_rest": at_rest},
                }
                info(f"{ref}: nfs-dio over {transport}: {verdict}: {reason}; pins {pins}")
    except (BootError, LabError) as exc:
        section["reason"] = str(exc).splitlines()[0]
        sub.write("error.txt", str(exc))
    return close_section(section, options.transports, sub)


def close_section(section: dict, transports: list[str], sub: RunDir) -> dict:
    """A kernel's verdict from its transports' (ERROR unless every transport ran), written to its sub-run."""
    verdicts = [t["verdict"] for t in section["transports"].values()]
    if len(verdicts) == len(transports):
        section["verdict"] = ERROR if ERROR in verdicts else FAIL if FAIL in verdicts else PASS
        section["reason"] = "; ".join(f"{t}: {v['verdict']}" for t, v in section["transports"].items())
    sub.write("verdict.json", json.dumps(section, indent=2))
    sub.finish("done", verdict=section["verdict"])
    return section


def _write(kind: str):
    def write(run_dir: RunDir, results: dict) -> None:
        run_dir.write("results.json", json.dumps(results, indent=2))
        run_dir.write("summary.txt", table(results) + "\n")
        cases = [{"name": t, "classname": f"{kind}.{label}", "outcome": "error" if v["verdict"] == ERROR else "as expected",
                  "ok": v["verdict"] == PASS, "message": f"{v['verdict']}: {v['reason']}"}
                 for label, k in results["kernels"].items() for t, v in k["transports"].items()]
        junit.write(kind, cases, run_dir.path / "junit.xml")
    return write


def run(options: Options) -> tuple[RunDir, dict]:
    options.validate()
    jobs = [(ref.replace(":", "-"), ref, lambda sub, ref=ref: run_kernel(options, ref, sub)) for ref in options.kernels]
    return run_jobs(NAME, "nfs-rdma-pair", options.to_dict(), jobs, _write(NAME))


def table(results: dict) -> str:
    lines = []
    for label, k in results["kernels"].items():
        lines.append(f"{label} ({k.get('release', '?')}): {k['verdict']}" + (f" - {k['reason']}" if k["verdict"] == ERROR else ""))
        for t, v in k["transports"].items():
            lines.append(f"  {t:5} {v['verdict']:5} {v['reason']}")
            if v.get("pins"):
                lines.append(f"        pins: {v['pins']}")
    return "\n".join(lines)


# -- nfs-p2p --------------------------------------------------------------------------------------
P2P_NAME = "nfs-p2p"


def nfs_p2p_support(guest) -> bool:
    """Whether the client kernel carries the NFS P2PDMA series (its transport op is a symbol)."""
    return guest.run("grep -qwE 'xprt_rdma_supports_p2pdma|nfs_.*p2pdma|rpc_.*supports_p2pdma' /proc/kallsyms", timeout=60).ok


def expected_p2p(support: bool, transport: str) -> str:
    if not support:
        return "no NFS P2P support in this kernel: the direct path cannot take P2P pages (EREMOTEIO)"
    if transport == "rdma":
        return "NFS P2P support present, but rxe/siw use virtual DMA and cannot map P2P pages: refusal"
    return "NFS P2P support present, but TCP has no P2P capability: refusal"


def run_p2p_kernel(options: Options, ref: str, sub: RunDir) -> dict:
    section: dict = {"kernel": ref, "transports": {}, "verdict": ERROR, "reason": ""}
    sub.update(scenario=P2P_NAME, options=options.to_dict(), kernel_ref=ref)
    try:
        with Lab(render("nfs-rdma-pair", options.params), kernel_ref=ref, accel=options.accel, run=sub) as lab:
            server, client = lab.guest("server"), lab.guest("client")
            kernel = lab.kernels["client"]
            section["release"] = kernel.release
            bdf = client.run("basename $(readlink -f /sys/class/nvme/nvme0/device)", timeout=30, check=True).stdout.strip()
            if kernel.config_value("PCI_P2PDMA") != "y" or not client.run(f"test -d /sys/bus/pci/devices/{bdf}/p2pmem").ok:
                section.update(verdict="N/A", reason="not applicable: no PCI_P2PDMA in this kernel (the client's CMB is not P2P memory)")
                return section
            setup_server(server)
            client.run(f"mkdir -p {GUEST_DIR}", check=True)
            client.put(scenarios_dir() / "nfs/nfs_p2p.py", f"{GUEST_DIR}/nfs_p2p.py")
            for transport in options.transports:
                mount(client, server_address(lab), options.version, transport)
                support = nfs_p2p_support(client)
                expectation = expected_p2p(support, transport)
                client.run("dmesg -C", timeout=30)
                res = client.run(f"python3 {GUEST_DIR}/nfs_p2p.py --provider {bdf} --file {MOUNT}/p2p.dat", timeout=600)
                dmesg = client.run("dmesg", timeout=30).stdout
                sub.write(f"{transport}/nfs_p2p.out", res.stdout + res.stderr)
                sub.write(f"{transport}/dmesg", dmesg)
                client.run(f"umount {MOUNT}", timeout=120)
                try:
                    out = json.loads(res.stdout.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    section["transports"][transport] = {"verdict": ERROR, "reason": f"unreadable output: {res.stderr.strip()[-300:]}"}
                    continue
                refused = [op for op in ("write", "read") if not out[op]["ok"]]
                wrong = [op for op in ("write", "read") if out[op]["ok"] and not out[op].get("data_matches")]
                if wrong:
                    verdict, reason = FAIL, f"{', '.join(wrong)} moved wrong data"
                elif len(refused) == 2:
                    errnos = {out[op]["errno"] for op in refused}
                    verdict = PASS if (support or errnos == {"EREMOTEIO"}) else FAIL
                    reason = f"refused with {', '.join(sorted(errnos))}: {expectation}"
                else:
                    verdict = FAIL
                    reason = f"expected a refusal ({expectation}); {', '.join(op for op in ('write', 'read') if out[op]['ok'])} succeeded"
                section["transports"][transport] = {"verdict": verdict, "reason": reason, "nfs_p2p_support": support,
                                                    "result": out, "kernel_messages": [l.split('] ', 1)[-1] for l in dmesg.splitlines()
                                                                                     if "p2p" in l.lower() or "peer-to-peer" in l][:5]}
                info(f"{ref}: nfs-p2p over {transport}: {verdict}: {reason}")
    except (BootError, LabError) as exc:
        section["reason"] = str(exc).splitlines()[0]
        sub.write("error.txt", str(exc))
        return section
    finally:
        sub.write("verdict.json", json.dumps(section, indent=2))
    verdicts = [t["verdict"] for t in section["transports"].values()]
    if len(verdicts) == len(options.transports):
        section["verdict"] = ERROR if ERROR in verdicts else FAIL if FAIL in verdicts else PASS
        section["reason"] = "; ".join(f"{t}: {v['verdict']}" for t, v in section["transports"].items())
    sub.finish("done", verdict=section["verdict"])
    return section


def run_p2p(options: Options) -> tuple[RunDir, dict]:
    options.validate()
    jobs = [(ref.replace(":", "-"), ref, lambda sub, ref=ref: run_p2p_kernel(options, ref, sub)) for ref in options.kernels]
    return run_jobs(P2P_NAME, "nfs-rdma-pair", options.to_dict(), jobs, _write(P2P_NAME))
