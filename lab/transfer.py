"""Files in and out of a running guest (`lab cp`, repro's --put and --get): single files through the
guest's channel (the agent, or SFTP), directories as a tarball through the agent or a tar stream
over one SSH channel. Extraction on the host refuses what a tar of plain files would not
hold (absolute paths, '..', devices, links leaving the tree)."""

from __future__ import annotations

import io
import logging
import os
import shlex
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO, cast

from lab.errors import LabError, UsageError
from lab.guest import Guest

LOG = logging.getLogger(__name__)


def split_endpoint(spec: str, machines: list[str]) -> tuple[str | None, str]:
    """'vm:/root/x' -> ('vm', '/root/x'); a local path (even one with a colon) -> (None, path)."""
    head, sep, rest = spec.partition(":")
    if sep and head in machines:
        if not rest:
            raise UsageError(f"{spec}: give a path in the guest after '{head}:'")
        return head, rest
    return None, spec


def _remote_is_dir(guest: Guest, path: str) -> bool:
    return guest.run(["test", "-d", path], timeout=30).ok


def upload(guest: Guest, local: Path, remote: str) -> str:
    """Copy a file or a directory into the guest; like cp -r, into `remote` when it is a directory."""
    if not local.exists():
        raise UsageError(f"{local}: no such file or directory")
    target = f"{remote.rstrip('/')}/{local.name}" if _remote_is_dir(guest, remote) else remote
    LOG.debug("%s: copying %s to %s", guest.name, local, target)
    if local.is_file():
        guest.put(local, target)
        return target
    if not local.is_dir():
        raise UsageError(f"{local}: not a file or a directory")
    unpack = f"mkdir -p {shlex.quote(target)} && tar -C {shlex.quote(target)} -xf"
    with tempfile.NamedTemporaryFile(suffix=".tar") as buf:
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(local), arcname=".")
        buf.flush()
        if guest.agent is not None:  # a tarball through the agent, unpacked there: no SSH needed
            staged = f"/tmp/lab-upload-{os.getpid()}.tar"
            guest.put(Path(buf.name), staged)
            res = guest.run(f"{unpack} {staged}; rc=$?; rm -f {staged}; exit $rc", timeout=3600)
            rc, error = res.exit_code, res.stderr
        else:
            buf.seek(0)
            err = io.BytesIO()
            rc = guest.stream(f"{unpack} -", cast(BinaryIO, buf), io.BytesIO(), err, timeout=3600)
            error = err.getvalue().decode(errors="replace")
    if rc != 0:
        raise LabError(f"{guest.name}: unpacking into {target} failed: {error.strip()[-200:]}")
    return target


def download(guest: Guest, remote: str, local: Path) -> Path:
    """Copy a file or a directory out of the guest; into `local` when it is a directory."""
    kind = guest.run(f"if [ -d {shlex.quote(remote)} ]; then echo dir; elif [ -e {shlex.quote(remote)} ]; then echo file; fi",
                     timeout=30).stdout.strip()
    if not kind:
        raise UsageError(f"{guest.name}:{remote}: no such file or directory")
    target = local / Path(remote.rstrip("/")).name if local.is_dir() else local
    LOG.debug("%s: copying %s (%s) to %s", guest.name, remote, kind, target)
    if kind == "file":
        target.parent.mkdir(parents=True, exist_ok=True)
        guest.get(remote, target)
        return target
    with tempfile.TemporaryFile() as buf:
        if guest.agent is not None:  # packed in the guest, copied out through the agent
            staged = f"/tmp/lab-download-{os.getpid()}.tar"
            res = guest.run(["tar", "-C", remote, "-cf", staged, "."], timeout=3600)
            if not res.ok:
                raise LabError(f"{guest.name}: packing {remote} failed: {res.stderr.strip()[-200:]}")
            with tempfile.TemporaryDirectory() as tmp:
                guest.get(staged, Path(tmp) / "out.tar")
                guest.run(["rm", "-f", staged], timeout=60)
                buf.write((Path(tmp) / "out.tar").read_bytes())
        else:
            err = io.BytesIO()
            rc = guest.stream(["tar", "-C", remote, "-cf", "-", "."], None, buf, err, timeout=3600)
            if rc != 0:
                raise LabError(f"{guest.name}: packing {remote} failed: {err.getvalue().decode(errors='replace').strip()[-200:]}")
        buf.seek(0)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=buf, mode="r") as tar:
            safe_extract(tar, target)
    return target


def checked_members(tar: tarfile.TarFile, target: Path) -> list[tarfile.TarInfo]:
    """What a guest's tar may put on the host: regular files, directories and links that stay
    under target. Absolute names, '..', devices and escaping links are refused."""
    root = target.resolve()
    members = []
    for m in tar.getmembers():
        dest = (root / m.name).resolve()
        if m.name.startswith("/") or not dest.is_relative_to(root):
            raise LabError(f"refusing {m.name!r} from the guest: it would land outside {target}")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise LabError(f"refusing {m.name!r} from the guest: not a file, directory or link")
        if m.issym() or m.islnk():
            link = (dest.parent / m.linkname) if m.issym() else (root / m.linkname)
            if m.linkname.startswith("/") or not link.resolve().is_relative_to(root):
                raise LabError(f"refusing link {m.name!r} -> {m.linkname!r} from the guest: it leaves {target}")
        m.mode &= 0o755  # no set-id bits or world-writable files from a guest
        members.append(m)
    return members


def safe_extract(tar: tarfile.TarFile, target: Path) -> None:
    """tarfile's 'data' filter where Python has it (3.11.4+), the same rules by hand before."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter="data")
    else:
        tar.extractall(target, members=checked_members(tar, target))


def copy(guest_of: dict[str, Guest], src: str, dst: str) -> str:
    machines = list(guest_of)
    src_machine, src_path = split_endpoint(src, machines)
    dst_machine, dst_path = split_endpoint(dst, machines)
    if src_machine and dst_machine:
        raise UsageError("copy between two guests through the host: lab cp vm1:SRC DIR && lab cp DIR vm2:DST")
    if not src_machine and not dst_machine:
        raise UsageError(f"neither {src!r} nor {dst!r} names a machine of this lab ({', '.join(machines)}): use MACHINE:PATH")
    if dst_machine:
        return f"{dst_machine}:{upload(guest_of[dst_machine], Path(src_path).expanduser(), dst_path)}"
    assert src_machine
    return str(download(guest_of[src_machine], src_path, Path(os.path.expanduser(dst_path))))
