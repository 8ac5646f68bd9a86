"""The network file systems scenarios mount besides NFS (lab.scenarios.nfs): 9p over virtio from a
host share, and SMB 3.1.1 from ksmbd on the server, over TCP or RDMA; each mount proven from
/proc/mounts, not from what was asked."""

from __future__ import annotations

import shlex

from lab.errors import LabError
from lab.guest import Guest
from lab.scenarios import nfs

MOUNTS = {"9p": "/mnt/9p", "cifs": "/mnt/cifs", "nfs": nfs.MOUNT}
SMB_EXPORT = "/export/smb"
SMB_USER, SMB_PASSWORD = "lab", "lab-smb-pass"


def setup_smb_server(server: Guest) -> None:
    """ksmbd exporting a directory of the server's XFS as share 'lab' to user 'lab'."""
    conf = (f"[global]\n\tserver min protocol = SMB3_11\n[lab]\n\tpath = {SMB_EXPORT}\n\twriteable = yes\n"
            f"\tforce user = root\n\tforce group = root\n")
    script = f"""set -e
modprobe ksmbd
mkdir -p {SMB_EXPORT} /etc/ksmbd && chmod 1777 {SMB_EXPORT}
printf %s {shlex.quote(conf)} > /etc/ksmbd/ksmbd.conf
ksmbd.adduser -a {SMB_USER} -p {shlex.quote(SMB_PASSWORD)} >/dev/null 2>&1 || ksmbd.adduser -u {SMB_USER} -p {shlex.quote(SMB_PASSWORD)}
ksmbd.mountd
"""
    res = server.run(script, timeout=120)
    if not res.ok:
        raise LabError(f"server: ksmbd set-up failed: {' | '.join((res.stderr or res.stdout).strip().splitlines()[-3:])}")


def mount_line(guest: Guest, mountpoint: str) -> str:
    return guest.run(f"grep ' {mountpoint} ' /proc/mounts", timeout=30).stdout.strip()


def mount_9p(client: Guest) -> str:
    client.run("modprobe -a 9pnet_virtio 9p", timeout=60)
    client.run(["mkdir", "-p", MOUNTS["9p"]], check=True)
    res = client.run(["mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=262144", "lab9p", MOUNTS["9p"]], timeout=120)
    line = mount_line(client, MOUNTS["9p"])
    if not res.ok or "trans=virtio" not in line:
        raise LabError(f"client: mount -t 9p failed: {(res.stderr or res.stdout).strip()[-200:]} ({line or 'not mounted'})")
    return line


def mount_cifs(client: Guest, server: str, transport: str) -> str:
    client.run("modprobe cifs", timeout=60)
    client.run(["mkdir", "-p", MOUNTS["cifs"]], check=True)
    opts = f"username={SMB_USER},password={SMB_PASSWORD},vers=3.1.1,uid=0,gid=0" + (",rdma" if transport == "rdma" else "")
    res = client.run(["mount", "-t", "cifs", f"//{server}/lab", MOUNTS["cifs"], "-o", opts], timeout=240)
    line = mount_line(client, MOUNTS["cifs"])
    if not res.ok or not line:
        raise LabError(f"client: mount -t cifs -o vers=3.1.1{',rdma' if transport == 'rdma' else ''} failed: "
                       f"{(res.stderr or res.stdout).strip()[-200:]}")
    # The transport is proven from the mount's own options, not from what was asked.
    if ("rdma" in line.split()[3].split(",")) != (transport == "rdma"):
        raise LabError(f"client: asked for SMB over {transport} but /proc/mounts says: {line}")
    return line
