"""What nfs-dio and netfs-dio share: the guest program's case names, the judgement of a run of its
integrity matrix (read back by the client, checksummed by a witness), and the fault they inject:
one byte flipped behind the client's back while it waits between write and verify."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import time
from functools import lru_cache
from typing import Callable

from lab.errors import LabError
from lab.guest import Guest
from lab.paths import scenarios_dir
from lab.scenarios.context import Context
from lab.scenarios.verdict import ERROR, FAIL, PASS, ProgramResult

LOG = logging.getLogger(__name__)

CORRUPT_OFFSET = 17  # inside the first case (file offset 0, 1000 bytes)
PAUSE_FILE = "/tmp/lab-pause"  # the guest program waits while this exists (--stop-before-verify)


@lru_cache(maxsize=1)
def case_names() -> tuple[str, ...]:
    """The guest program's case names, read from its source on the host (to check --only early)."""
    spec = importlib.util.spec_from_file_location("lab_nfs_dio_guest", scenarios_dir() / "nfs" / "nfs_dio.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(name for name, _, _ in module.cases())


def judge_transport(result: ProgramResult, server_sums: dict[str, str] | None, pins: str,
                    witness: str = "the server") -> tuple[str, str]:
    """PASS when every case was written, read back equal and checksummed equal by the witness (the
    server's own file system, or the host for a 9p share)."""
    if result.error or result.data is None:
        return ERROR, result.error or "no result"
    cases = result.data["cases"]
    bad = [c for c in cases if "error" in c]
    if bad:
        return FAIL, f"{len(bad)} of {len(cases)} cases failed; first: {bad[0]['name']}: {bad[0]['error']}"
    if server_sums is None:
        return ERROR, f"{witness}'s checksums could not be computed"
    differ = [c["name"] for c in cases if server_sums.get(c["name"]) != c["sha256"]]
    if differ:
        return FAIL, (f"{len(differ)} of {len(cases)} cases differ at {witness} (its own checksum of the stored "
                      f"bytes); first: {differ[0]}")
    if pins.startswith("UNBALANCED"):
        return FAIL, pins
    return PASS, f"{len(cases)} cases verified by read-back and by {witness}'s checksum, {result.data['mib_per_s']} MiB/s"


def flip_on_host(path: str) -> None:
    """The byte at CORRUPT_OFFSET of a host file (a 9p share's backing file) inverted."""
    with open(path, "r+b") as f:
        f.seek(CORRUPT_OFFSET)
        byte = f.read(1)
        f.seek(CORRUPT_OFFSET)
        f.write(bytes([byte[0] ^ 0xFF]))


def flip_in_guest(guest: Guest, path: str) -> None:
    """The byte at CORRUPT_OFFSET of a file in a guest (the server's export) inverted and synced."""
    flip = (f"f=open({path!r},'r+b'); f.seek({CORRUPT_OFFSET}); b=f.read(1); f.seek({CORRUPT_OFFSET}); "
            f"f.write(bytes([b[0] ^ 0xff])); f.close()")
    guest.run(["python3", "-c", flip], timeout=60, check=True)
    guest.run("sync", timeout=60)


def run_with_flip(ctx: Context, argv: list[object], save_as: str, flip: Callable[[], None]) -> ProgramResult:
    """Fault injection: the matrix program runs on the client with --stop-before-verify; when it
    pauses after writing, `flip()` corrupts the stored bytes behind its back, then it goes on to
    verify. The run must report the case and the offset."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lab-matrix")
    future = pool.submit(ctx.run_program, [*argv, "--stop-before-verify", PAUSE_FILE], machine="client", timeout=1800,
                         save_as=save_as, required=("cases", "mib_per_s"), count="cases")
    client = ctx.guest("client")
    # A second session watches for the pause: one connection runs one command at a time.
    watcher = Guest("client", client.port, client.key_file)
    try:
        deadline = time.monotonic() + 300
        while not watcher.run(["test", "-e", PAUSE_FILE], timeout=30).ok:
            if time.monotonic() > deadline or future.done():
                raise LabError("client never reached the verification pause")
            time.sleep(0.5)
        flip()
        watcher.run(["rm", "-f", PAUSE_FILE], timeout=30, check=True)
    finally:
        watcher.close()
        pool.shutdown(wait=True)
    return future.result()
