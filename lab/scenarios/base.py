"""Scenarios as the lab knows them: the Scenario base class a scenario file subclasses, the
variants (sub-runs) it plans, the -p parameter matrix, and the registry (@register, the lab's own
modules, the `lab.scenarios` entry-point group, and `lab run ./file.py`)."""

from __future__ import annotations

import importlib.metadata
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from lab import kernel_log
from lab.errors import LabError, UsageError
from lab.progress import info
from lab.settings import settings
from lab.scenarios.options import ScenarioOptions
from lab.topology.render import Rendered, render

if TYPE_CHECKING:
    from lab.scenarios.context import Context

LOG = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "lab.scenarios"


class NotApplicable(LabError):
    """The kernel or the topology lacks what the scenario tests: the sub-run's verdict is N/A."""


class ScenarioError(LabError):
    """What the scenario needed did not happen (a promised device is missing, nothing ran): ERROR."""


def safe_label(text: str, limit: int = 60) -> str:
    """A file-system-safe, bounded name for a sub-run or case directory."""
    label = re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-.")[:limit]
    return label or "run"


_INT_LIST = re.compile(r"^-?\d+(,-?\d+)+$")


def param_matrix(params: dict[str, Any], limit: int = 500, kernels: int = 1) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Cross the parameters that hold several values: a list (a bundle, a matrix file) or a string
    of comma-separated integers from `-p pi=1,3`; other strings are one value (`cpu=EPYC,pmu=off`).
    More than `limit` sub-runs (with `kernels` kernels each) is refused before anything is made."""
    expanded: dict[str, list[Any]] = {}
    for key, value in params.items():
        if isinstance(value, str) and _INT_LIST.match(value):
            values: list[Any] = [int(v) for v in value.split(",")]
        elif isinstance(value, list):
            values = list(value)
        else:
            values = [value]
        if not values:
            raise UsageError(f"parameter {key}: an empty list of values")
        if len(values) != len(set(map(repr, values))):
            raise UsageError(f"parameter {key}: a value is given twice ({value})")
        expanded[key] = values
    count = kernels
    for values in expanded.values():
        count *= len(values)
    if count > limit:
        raise UsageError(f"{count} sub-runs ({kernels} kernel(s) x the -p lists), above the limit of {limit}; "
                         f"--max-subruns N raises it")
    cells: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {})]
    for key, values in expanded.items():
        varying = len(values) > 1
        cells = [({**p, key: v}, {**vary, key: v} if varying else vary) for p, vary in cells for v in values]
    return cells


def matrix_label(ref: str, varying: dict[str, Any]) -> str:
    """A sub-run's name: its kernel, then the matrix parameters it has (debian-7.3-pi=3-pif=2)."""
    return safe_label("-".join([ref, *(f"{k}={v}" for k, v in varying.items())]), limit=80)


@dataclass
class Variant:
    """One sub-run: a kernel, the topology it boots, and the facets that tell it from its siblings."""

    label: str
    kernel: str
    topology: str
    params: dict[str, Any]
    facets: dict[str, Any] = field(default_factory=dict)
    rendered: Rendered | None = None


class Scenario:
    """Base class. Subclasses set the class attributes and implement exercise()."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type[ScenarioOptions]] = ScenarioOptions
    topology: ClassVar[str] = "nvme-pi"
    machines: ClassVar[tuple[str, ...]] = ()  # machine names exercise() drives; the topology must have them
    default_kernels: ClassVar[tuple[str, ...]] = ("debian:7.3",)
    expect_file: ClassVar[Path | None] = None
    source_file: ClassVar[Path | None] = None  # set for a scenario loaded from a file (lab run ./mine.py)
    file_options: ClassVar[tuple[str, ...]] = ()  # options naming host files a bundle must carry (repro's --put)

    def __init__(self, options: ScenarioOptions) -> None:
        self.options = options
        self.guest_images: tuple[str, ...] = ("lab-trixie",)  # the run's image recipes, set before prepare()

    @property
    def kernels(self) -> list[str]:
        return list(self.options.kernels) or list(settings().kernels) or list(self.default_kernels)

    def param_sets(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(parameters, the ones that vary) per cell of the -p matrix: `-p pi=1,3 -p pif=0,2` is four
        cells, crossed in the order given; without a list it is the one set of parameters."""
        return param_matrix(self.options.params, self.options.max_subruns, len(self.kernels))

    # -- what a scenario may override ----------------------------------------------------------
    def variants(self) -> list[Variant]:
        """One sub-run per kernel and cell of the -p matrix by default."""
        return [Variant(matrix_label(ref, varying), ref, self.options.topology or self.topology, params, dict(varying))
                for ref in self.kernels for params, varying in self.param_sets()]

    def check(self, variant: Variant) -> None:
        """Checks of the options against a rendered topology (block size vs logical block size, ...).
        Raise UsageError; runs before anything boots."""

    def prepare(self) -> None:
        """Host-side work before the first boot (build a guest program, fetch a tree); the guests'
        image recipes are in self.guest_images."""

    def setup(self, ctx: "Context") -> None:
        """Once per boot, before the first repetition: put programs in place, start servers."""

    def exercise(self, ctx: "Context") -> None:
        """One repetition of the scenario's cases (ctx.repetition counts from 1)."""
        raise NotImplementedError

    def kernel_log_rules(self, ctx: "Context", case: str, facets: dict[str, Any]) -> Sequence[kernel_log.Rule]:
        """Why problems in the kernel log of this case's window are there (the scenario provoked
        them, or a known emulation fact explains them); any other problem fails the case."""
        return ()

    def more(self, ctx: "Context", started: float) -> bool:
        """Whether to run another repetition; by default --repeat of them."""
        return ctx.repetition < self.options.repeat

    def table(self, results: dict[str, Any]) -> str:
        """The scenario's table; the default lists each sub-run's cases."""
        lines = []
        for label, s in results.get("subruns", {}).items():
            lines.append(f"{label} ({s.get('release', '?')})")
            for name, c in s["cases"].items():
                lines.append(f"  {name:40} {c['verdict']:5} {c['reason']}")
        return "\n".join(lines)

    # -- the framework's part -------------------------------------------------------------------
    def plan(self) -> list[Variant]:
        variants = self.variants()
        if not variants:
            raise UsageError(f"{self.name}: nothing to run (no kernel)")
        labels = [v.label for v in variants]
        if len(set(labels)) != len(labels):
            raise UsageError(f"{self.name}: two sub-runs would share the name {next(x for x in labels if labels.count(x) > 1)!r}; "
                             f"give each --kernel once")
        for v in variants:
            v.rendered = render(v.topology, v.params)
            missing = [m for m in self.machines if m not in v.rendered.topology.machines]
            if missing:
                raise UsageError(f"{self.name}: topology {v.topology} has no machine {', '.join(missing)} "
                                 f"(this scenario drives {', '.join(self.machines)})")
            self.check(v)
        return variants


# -- registry -------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Scenario]] = {}
_LOADED = False
BUILTIN_MODULES = ("stable_pages", "p2p_block", "nfs_dio", "nfs_p2p", "fstests", "blktests", "repro", "netfs", "fault_injection",
                   "pin_audit", "dio_bench")


def register(cls: type[Scenario]) -> type[Scenario]:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{1,39}", name):
        raise TypeError(f"scenario {cls.__name__}: name must be a short lower-case word (got {name!r})")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"scenario {name!r} is registered twice ({existing.__module__} and {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def scenarios(refresh: bool = False) -> dict[str, type[Scenario]]:
    """Every registered scenario: the lab's own, then those of installed packages (looked up once;
    `refresh` looks again, for packages installed since)."""
    global _LOADED
    if refresh or not _LOADED:
        _LOADED = True
        for module in BUILTIN_MODULES:
            importlib.import_module(f"lab.scenarios.{module}")
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
                if isinstance(loaded, type) and issubclass(loaded, Scenario):
                    register(loaded)
            except Exception as exc:  # a broken plugin must not break the lab's own scenarios
                LOG.warning("scenario plugin %s (%s) failed to load: %s", ep.name, ep.value, exc, exc_info=True)
                info(f"warning: scenario plugin {ep.name} ({ep.value}) failed to load: {exc}")
    return dict(_REGISTRY)


def load_file(path: Path) -> str:
    """A Python file with one Scenario subclass (lab run ./my_scenario.py): imported and registered;
    returns the scenario's name."""
    import importlib.util

    if not path.is_file():
        raise UsageError(f"{path}: no such scenario file")
    module_name = f"lab_user_scenario_{safe_label(path.stem, 40).replace('-', '_').replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # sys.exit() at import is the file's error too, not the lab's exit
        raise UsageError(f"{path}: importing it called sys.exit({exc.code!r})") from None
    except Exception as exc:  # the user's file: its error, in one line
        raise UsageError(f"{path}: importing it raised {exc.__class__.__name__}: {str(exc)[:200]}") from None
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Scenario) and obj.__module__ == module_name and hasattr(obj, "name")]
    if len(found) != 1:
        raise UsageError(f"{path}: defines {len(found)} Scenario subclasses with a name; lab run takes a file with one")
    cls = found[0]
    builtin = scenarios().get(getattr(cls, "name", None))  # type: ignore[arg-type]
    if builtin is not None and builtin.source_file is None:
        raise UsageError(f"{path}: scenario name {cls.name!r} is the lab's own ({builtin.__module__}); give yours another name")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, ScenarioOptions)):
        raise UsageError(f"{path}: {cls.__name__}.Options must be a subclass of lab.scenarios.options.ScenarioOptions "
                         f"(a pydantic model), not {cls.Options!r}")
    if not callable(getattr(cls, "exercise", None)) or cls.exercise is Scenario.exercise:
        raise UsageError(f"{path}: {cls.__name__} does not define exercise(self, ctx)")
    cls.source_file = path.resolve()
    try:
        register(cls)
    except TypeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return cls.name


def get(name: str) -> type[Scenario]:
    found = scenarios()
    if name not in found:
        raise UsageError(f"unknown scenario {name!r}; scenarios: {', '.join(sorted(found))}")
    return found[name]


# -- a booted sub-run -----------------------------------------------------------------------------
