"""QMP from several threads at once, against real QEMU processes with no machine (they start at once)."""

from __future__ import annotations

import gc
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab.qmp_link import QmpLink

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64 (installed by .ci/run)")


def _qemus(tmp_path: Path, n: int) -> tuple[list[subprocess.Popen], list[QmpLink]]:
    procs, links = [], []
    for i in range(n):
        sock = tmp_path / f"qmp{i}.sock"
        procs.append(subprocess.Popen([str(QEMU), "-machine", "none", "-nodefaults", "-display", "none",
                                       "-qmp", f"unix:{sock},server=on,wait=off"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        link = QmpLink(str(sock))  # made in this thread, like the lab's machines: they share its loop
        link.connect()
        links.append(link)
    return procs, links


def test_machines_queried_and_closed_side_by_side(tmp_path, capfd):
    procs, links = _qemus(tmp_path, 2)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = list(pool.map(lambda link: [link.cmd("query-status")["status"] for _ in range(100)], links))
        assert answers == [["running"] * 100] * 2
        for link in links:
            link.cmd("quit")  # QEMU goes first, as when a guest powers off before the lab closes
        for p in procs:
            p.wait(timeout=20)
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(QmpLink.close, links))
        with pytest.raises(EOFError):
            links[0].cmd("query-status")
        del links
        gc.collect()
        assert "Exception ignored" not in capfd.readouterr().err
    finally:
        for p in procs:
            p.kill()
            p.wait()
