"""pytest fixtures that boot lab topologies, so a user's own pytest file is a lab scenario:

    import pytest

    @pytest.mark.lab(topology="nvme-pi", params={"pi": 3})
    def test_type3_namespace(guest):
        fmt = guest.run("cat /sys/block/nvme0n1/integrity/format", check=True).stdout.strip()
        assert fmt == "T10-DIF-TYPE3-CRC"

    def test_two_kernels(lab_boot):
        for kernel in ("debian:6.12", "debian:7.3"):
            lab = lab_boot("nvme-pi", kernel=kernel)
            assert lab.guest("vm").run("uname -r").stdout.startswith(kernel.split(":")[1])

Fixtures: `lab_boot(topology, params=None, kernel=None, fresh=False)` boots a topology (or hands
back the one already booted with the same topology, parameters and kernel in this session; with
fresh=True a lab of the test's own, stopped when the test ends); `lab` boots what the test's
`@pytest.mark.lab(...)` asks for; `guest` is that lab's first machine. `--lab-kernel REF` sets
the default kernel, `--lab-accel` the accelerator. Each lab keeps its run directory (consoles,
manifest) under the lab's results directory; every guest is stopped when the session ends.
Registered through the `pytest11` entry point: installing the lab is enough."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import pytest
from lab.settings import ACCELS

DEFAULT_KERNEL = "debian:7.3"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lab", "QEMU guests from the lab")
    group.addoption("--lab-kernel", default=None, metavar="REF", help=f"default kernel of lab fixtures (default: {DEFAULT_KERNEL})")
    group.addoption("--lab-accel", default=None, choices=ACCELS, help="accelerator (default: $LAB_ACCEL or auto)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab(topology='nvme-pi', params=None, kernel=None, fresh=False): boot this for the "
                                       "`lab` and `guest` fixtures")


class LabPool:
    """Booted labs of a session, keyed by what they are, so tests that want the same one share it."""

    def __init__(self, kernel: str, accel: str) -> None:
        self.kernel = kernel
        self.accel = accel
        self.labs: dict[str, Any] = {}

    def boot(self, topology: str, params: dict[str, Any] | None = None, kernel: str | None = None) -> Any:
        from lab.lab import Lab
        from lab.rundir import RunDir
        from lab.topology.render import render

        rendered = render(topology, params or {})
        lab = Lab(rendered, kernel_ref=kernel or self.kernel, accel=self.accel, run=RunDir.create("pytest", rendered.name))
        try:
            lab.start()
        except BaseException:
            lab.stop()
            assert lab.run is not None
            lab.run.finish("error")
            raise
        return lab

    def shared(self, topology: str, params: dict[str, Any] | None = None, kernel: str | None = None) -> Any:
        key = json.dumps([topology, params or {}, kernel or self.kernel], sort_keys=True)
        lab = self.labs.get(key)
        if lab is None or not all(m.alive() for m in lab.machines.values()):
            if lab is not None:
                self.stop(lab)
            lab = self.labs[key] = self.boot(topology, params, kernel)
        return lab

    @staticmethod
    def stop(lab: Any) -> None:
        lab.stop()
        if lab.run is not None:
            lab.run.finish("done")

    def close(self) -> None:
        for lab in self.labs.values():
            self.stop(lab)
        self.labs.clear()


@pytest.fixture(scope="session")
def lab_kernel(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--lab-kernel") or DEFAULT_KERNEL


@pytest.fixture(scope="session")
def lab_pool(request: pytest.FixtureRequest, lab_kernel: str) -> Iterator[LabPool]:
    from lab.host import ensure_host
    from lab.lab import reap_stale_runtimes
    from lab.settings import settings

    ensure_host()
    reap_stale_runtimes()
    pool = LabPool(lab_kernel, request.config.getoption("--lab-accel") or settings().accel)
    yield pool
    pool.close()


@pytest.fixture
def lab_boot(lab_pool: LabPool) -> Iterator[Callable[..., Any]]:
    own: list[Any] = []

    def boot(topology: str = "nvme-pi", params: dict[str, Any] | None = None, kernel: str | None = None,
             fresh: bool = False) -> Any:
        if fresh:
            lab = lab_pool.boot(topology, params, kernel)
            own.append(lab)
            return lab
        return lab_pool.shared(topology, params, kernel)

    yield boot
    for lab in own:
        LabPool.stop(lab)


@pytest.fixture
def lab(request: pytest.FixtureRequest, lab_boot: Callable[..., Any]) -> Any:
    marker = request.node.get_closest_marker("lab")
    kwargs = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        kwargs.setdefault("topology", marker.args[0])
    return lab_boot(**kwargs)


@pytest.fixture
def guest(lab: Any) -> Any:
    return lab.guest(next(iter(lab.machines)))
