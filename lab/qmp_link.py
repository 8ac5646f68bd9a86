"""One machine's QMP connection, safe to use from the lab's threads.

qemu.qmp's synchronous client runs each command on the event loop of the thread that created it,
and the lab creates every machine's client in its main thread: all machines share one loop. Two
threads driving it at once (machines shut down side by side, a boot thread asking slirp for its port
while another machine is queried) fail with "This event loop is already running", and a client
whose close failed is closed again by its __del__, which prints a traceback when QEMU is gone by
then. One lock for every synchronous call keeps them in turn; each call is a short request and reply.
"""

from __future__ import annotations

import threading
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

_LOOP_LOCK = threading.RLock()


class QmpLink:
    def __init__(self, socket_path: str, timeout: float | None = 60.0) -> None:
        with _LOOP_LOCK:
            self._qmp: QEMUMonitorProtocol | None = QEMUMonitorProtocol(socket_path)
        self._timeout = timeout

    def connect(self) -> None:
        """Connect and negotiate; on failure the client is closed before the error goes up."""
        assert self._qmp is not None
        with _LOOP_LOCK:
            try:
                self._qmp.connect()
                self._qmp.settimeout(self._timeout)
            except BaseException:
                self._close_locked()
                raise

    def cmd(self, command: str, **args: Any) -> Any:
        if self._qmp is None:
            raise EOFError("QMP connection closed")
        with _LOOP_LOCK:
            return self._qmp.cmd(command, **args)

    def close(self) -> None:
        with _LOOP_LOCK:
            self._close_locked()

    def _close_locked(self) -> None:
        qmp, self._qmp = self._qmp, None
        if qmp is None:
            return
        try:
            qmp.close()
        except (EOFError, ConnectionError):
            pass  # QEMU went first (the guest powered off): closed all the same, the client is idle
