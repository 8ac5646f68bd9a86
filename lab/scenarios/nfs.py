"""NFS between the two machines of nfs-rdma-pair: server set-up with an RDMA listener, client mounts
over the transport asked for (and the proof of which one is in use), pin counters. Shared by the
nfs-dio, nfs-p2p and nfs-fstests scenarios."""

from __future__ import annotations

from typing import Literal

from lab.errors import LabError
from lab.lab import Lab
from lab.guest import Guest, shell_join

EXPORT = "/export"
MOUNT = "/mnt/nfs"
RDMA_PORT = 20049
VERSIONS = ("3", "4.1", "4.2")
TRANSPORTS = ("tcp", "rdma")
Transport = Literal["tcp", "rdma"]
Version = Literal["3", "4.1", "4.2"]


class NfsError(LabError):
    pass


def server_address(lab: Lab) -> str:
    return lab.rendered.topology.machines["server"].nics[0].address.split("/")[0]


def setup_server(guest: Guest, device: str = "/dev/nvme0n1", subdirs: tuple[str, ...] = ()) -> None:
    """XFS on the namespace, exported (and each of `subdirs` below it as its own export); nfsd with
    TCP 2049 and RDMA 20049 listeners. The lean init starts no services, so the daemons are started
    here, in the order systemd would."""
    exports = "".join(f"{EXPORT}/{d} *(rw,no_root_squash,no_subtree_check,insecure)\n" for d in subdirs)
    script = f"""set -e
modprobe -a nfsd xfs rpcrdma 2>/dev/null || modprobe -a nfsd xfs
mkfs.xfs -f -q {shell_join([device])}
mkdir -p {EXPORT} && mount {shell_join([device])} {EXPORT} && chmod 1777 {EXPORT}
for d in {shell_join(subdirs)}; do mkdir -p {EXPORT}/$d && chmod 1777 {EXPORT}/$d; done
mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
mkdir -p /var/lib/nfs/rpc_pipefs /run/rpcbind
mountpoint -q /var/lib/nfs/rpc_pipefs || mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
rpcbind -w
printf '{EXPORT} *(rw,no_root_squash,no_subtree_check,insecure)\\n{exports}' > /etc/exports
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
        raise NfsError(f"server: NFS set-up failed: {' | '.join((res.stderr or res.stdout).strip().splitlines()[-3:])}")


def mount_options(version: str, transport: str) -> str:
    opts = f"vers={version},proto={transport}" + (f",port={RDMA_PORT}" if transport == "rdma" else "")
    return opts + (",nolock" if version == "3" else "")


def mounted_proto(line: str) -> str:
    """proto= of a /proc/mounts line ('?' when absent)."""
    fields = line.split()
    if len(fields) < 4:
        return "?"
    return next((o.split("=", 1)[1] for o in fields[3].split(",") if o.startswith("proto=")), "?")


def mount(guest: Guest, server: str, version: str, transport: str, export: str = EXPORT, mountpoint: str = MOUNT) -> str:
    """Mount and prove the transport from /proc/mounts: NFSv4.1+ silently reuses an existing
    connection, so what mount(8) was asked for is not evidence."""
    opts = mount_options(version, transport)
    guest.run(f"umount -f {shell_join([mountpoint])} 2>/dev/null; mkdir -p {shell_join([mountpoint])}", timeout=60)
    if transport == "rdma":
        guest.run(["modprobe", "rpcrdma"], timeout=60)
    argv = ["timeout", "240", "mount", "-t", "nfs", "-o", opts, f"{server}:{export}", mountpoint]
    # rxe retransmits on timeouts when the host is busy: allow a slow first connection, retry once.
    res = guest.run(argv, timeout=300)
    if not res.ok:
        guest.run(f"umount -f {shell_join([mountpoint])} 2>/dev/null", timeout=60)
        res = guest.run(argv, timeout=300)
    if not res.ok:
        raise NfsError(f"client: mount -o {opts} failed: {(res.stderr or res.stdout).strip()[-200:]}")
    line = guest.run(f"grep ' {mountpoint} ' /proc/mounts", timeout=30).stdout.strip()
    proto = mounted_proto(line)
    if proto != transport:
        raise NfsError(f"client: asked for proto={transport} but /proc/mounts says proto={proto} ({line})")
    return line


PIN_COUNTERS = "grep -E '^nr_foll_pin_(acquired|released) ' /proc/vmstat"


def parse_pins(text: str) -> dict[str, int]:
    """vmstat's 'name value' lines as a dict."""
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if len(line.split()) == 2)}


def vmstat_pins(guest: Guest) -> dict[str, int]:
    return parse_pins(guest.run(PIN_COUNTERS, timeout=30).stdout)


# The counters read until neither moved over three reads 0.3 s apart (at most 15 s): pins of I/O
# that completes asynchronously (cifs, FUSE) are released after the syscall returned, and a
# snapshot taken meanwhile counted another row's releases as this one's.
SETTLED_PINS_SCRIPT = """prev=; stable=0
for i in $(seq 1 50); do
    now=$({counters})
    if [ "$now" = "$prev" ]; then stable=$((stable + 1)); else stable=0; fi
    [ $stable -ge 2 ] && break
    prev=$now; sleep 0.3
done
echo "$now"
""".format(counters=PIN_COUNTERS)


def settled_vmstat_pins(guest: Guest) -> dict[str, int]:
    """vmstat's pin counters once they stopped moving (see SETTLED_PINS_SCRIPT)."""
    return parse_pins(guest.run(SETTLED_PINS_SCRIPT, timeout=60).stdout)


def describe_pins(before: dict[str, int], at_rest: dict[str, int]) -> str:
    acquired = at_rest.get("nr_foll_pin_acquired", 0) - before.get("nr_foll_pin_acquired", 0)
    released = at_rest.get("nr_foll_pin_released", 0) - before.get("nr_foll_pin_released", 0)
    if acquired == 0 and released == 0:
        return "not exercised: the NFS direct path took page references, not pins (counters did not move)"
    if acquired == released:
        return f"balanced: {acquired} pins acquired and released"
    return f"UNBALANCED at rest: {acquired} acquired, {released} released"
