"""A lab that is up, as other lab commands find it: its state file in the runtime directory, its
machines, their guests, and one QMP command on a machine's user monitor socket (with deadlines on
connecting and on the answer: qemu.qmp's synchronous client has no deadline on connecting)."""

from __future__ import annotations

from pathlib import Path

from lab.errors import LabError, UsageError


def live_state(which: str | None) -> tuple[Path, dict]:
    from lab.lab import machines_alive, read_state
    from lab.paths import runtime_root

    if which is not None and (not which.strip() or len(which) > 200):
        raise UsageError("--lab: give a run id or part of one")
    states = []
    for f in sorted(runtime_root().glob("*/state.json"), key=lambda p: p.stat().st_mtime):
        state = read_state(f)
        if state is not None and machines_alive(f.parent, state):
            states.append((f.parent, state))
    if which:
        states = [(d, s) for d, s in states if which in d.name or which in str(s.get("run") or "")]
    if not states:
        raise UsageError("no running lab" + (f" matching {which!r}" if which else "") + "; start one with 'lab up'")
    return states[-1]


def machine_of(state: dict, name: str | None) -> tuple[str, dict]:
    machines = state["machines"]
    name = name or next(iter(machines))
    if name not in machines:
        raise UsageError(f"no machine {name[:40]!r} in this lab; machines: {', '.join(machines)}")
    return name, machines[name]


def guests(state: dict) -> dict:
    from lab.guest import Guest

    return {name: Guest(name, m["ssh_port"], Path(state["key_file"])) for name, m in state["machines"].items()
            if isinstance(m.get("ssh_port"), int)}


def qmp_call(socket_path: str, command: str, arguments: dict, timeout: float = 10.0) -> dict:
    """One QMP command on a monitor socket, with a deadline on connecting and on the answer."""
    import asyncio

    from qemu.qmp import ExecuteError, QMPClient

    async def call() -> dict:
        client = QMPClient("lab")
        try:
            await asyncio.wait_for(client.connect(socket_path), timeout)
        except asyncio.TimeoutError:
            raise LabError(f"QMP at {socket_path} did not answer within {timeout:.0f} s") from None
        try:
            try:
                return {"return": await asyncio.wait_for(client.execute(command, arguments or None), timeout)}
            except ExecuteError as exc:
                return {"error": {"class": exc.error_class, "desc": exc.error.error.desc}}
            except asyncio.TimeoutError:
                raise LabError(f"QMP command {command} got no answer within {timeout:.0f} s") from None
        finally:
            await client.disconnect()

    try:
        return asyncio.run(call())
    except (OSError, EOFError) as exc:
        raise LabError(f"cannot talk to QMP at {socket_path}: {exc}") from None
    except LabError:
        raise
    except Exception as exc:  # qemu.qmp's ConnectError and protocol errors
        raise LabError(f"QMP at {socket_path}: {exc.__class__.__name__}: {exc}") from None
