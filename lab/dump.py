"""A guest's memory as a vmcore, through QMP dump-guest-memory: kdump-compressed where this QEMU
supports it (zlib at least), else ELF. With the vmcoreinfo device every lab machine has, drgn and
crash open it knowing the kernel's layout. QEMU writes the file itself; the lab waits for it with
query-dump and says how far it got."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.errors import LabError, UsageError
from lab.progress import step

# Best first: smaller files, all readable by drgn and crash as they are. (QEMU before 8.2 writes
# kdump in the flattened format only, which needs `makedumpfile -R` first: ELF there.)
PREFERRED = ("kdump-raw-zstd", "kdump-raw-lzo", "kdump-raw-zlib", "elf")


Qmp = Callable[[str, dict[str, Any]], dict[str, Any]]


def _ok(reply: dict[str, Any], what: str) -> Any:
    if "error" in reply:
        raise LabError(f"{what}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return")


def choose_format(qmp: Qmp, requested: str | None) -> str:
    offered = [f for f in (_ok(qmp("query-dump-guest-memory-capability", {}), "query-dump-guest-memory-capability") or {})
               .get("formats", [])]
    if requested:
        if requested not in offered:
            raise UsageError(f"--format {requested}: this QEMU writes {', '.join(offered)}")
        return requested
    return next((f for f in PREFERRED if f in offered), "elf")


def dump(qmp: Qmp, out: Path, fmt: str | None = None, timeout: float = 1800.0) -> dict[str, Any]:
    """Write the machine's memory to `out` (which must not exist); returns what query-dump said at the end."""
    if out.exists() or out.is_symlink():
        raise UsageError(f"-o {out}: exists; the lab does not overwrite files")
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: {out.parent} is not a directory")
    chosen = choose_format(qmp, fmt)
    started = time.monotonic()
    with step(f"dumping guest memory ({chosen}) to {out}") as st:
        _ok(qmp("dump-guest-memory", {"paging": False, "protocol": f"file:{out.resolve()}", "detach": True, "format": chosen}),
            "dump-guest-memory")
        while True:
            status = _ok(qmp("query-dump", {}), "query-dump") or {}
            if status.get("status") == "completed":
                break
            if status.get("status") == "failed":
                raise LabError(f"dump-guest-memory failed after {status.get('completed', 0)} of {status.get('total', '?')} bytes")
            if time.monotonic() - started > timeout:
                raise LabError(f"dump-guest-memory did not finish within {timeout:.0f} s")
            total = status.get("total") or 0
            if total:
                st.update(f"{100 * (status.get('completed') or 0) // total} % of {total >> 20} MiB")
            time.sleep(0.5)
    return {"format": chosen, "path": str(out), "bytes": out.stat().st_size, "guest_bytes": status.get("total"),
            "seconds": round(time.monotonic() - started, 1)}
