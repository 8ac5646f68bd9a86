"""Nightly matrices: a TOML file of scenarios x topology parameter sets x kernels, expanded into
cells with stable identities (the same cell in two nights is recognisably the same), every cell
validated before anything boots, run here one at a time or fanned out by a CI engine.

    [matrix]
    name = "nightly"
    kernels = ["debian:6.12", "debian:7.3"]      # default for every entry

    [[entry]]
    scenario = "stable-pages"
    options = { direction = "write", duration = 10 }
    params = { pi = [1, 3], pif = [0, 2] }        # lists are crossed; scalars are fixed
    exclude = [{ pi = 1, pif = 2 }]                 # cells matching every key of one are dropped

A cell is one scenario run on one kernel with one parameter set: the unit a CI job runs."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      ValidationError)

from lab.errors import LabError, UsageError
from lab.safepaths import check_name
from lab.validation import describe

# A matrix or a -p list that expands past this is refused with its count (a typo can make 512,000).
MAX_CELLS = 500



@dataclass(frozen=True)
class Cell:
    matrix: str
    scenario: str
    kernel: str
    topology: str | None
    params: dict[str, Any]
    options: dict[str, Any]
    entry: str  # the entry's name (or its scenario)

    @property
    def id(self) -> str:
        """Readable and stable: scenario, kernel and parameters, plus a short hash of everything."""
        identity = json.dumps({"scenario": self.scenario, "kernel": self.kernel, "topology": self.topology,
                               "params": self.params, "options": self.options}, sort_keys=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:6]
        params = "-".join(f"{k}{v}" for k, v in sorted(self.params.items()))
        shard = f"shard{self.options['shard'].replace('/', 'of')}" if isinstance(self.options.get("shard"), str) else ""
        name = "_".join(p for p in (self.entry, self.kernel, params, shard) if p)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:90] + f"_{digest}"

    def scenario_options(self) -> dict[str, Any]:
        data = dict(self.options)
        data["kernels"] = [self.kernel]
        data["params"] = dict(self.params)
        if self.topology:
            data["topology"] = self.topology
        return data

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "matrix": self.matrix, "entry": self.entry, "scenario": self.scenario, "kernel": self.kernel,
                "topology": self.topology, "params": self.params, "options": self.options}


@dataclass
class Matrix:
    name: str
    path: Path
    cells: list[Cell] = field(default_factory=list)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


Scalar = Union[StrictStr, StrictInt, StrictFloat, StrictBool]


def _one_or_many(value: Any) -> Any:
    """A value, or a list of values crossed into cells: strings, numbers, booleans."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("an empty list expands to no cell")
    for v in values:
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"holds {type(v).__name__} {v!r}; a value is a string, number or boolean (or a list of them)")
    return value


OneOrMany = Annotated[Any, BeforeValidator(_one_or_many)]


def _name(value: str) -> str:
    from lab.safepaths import check_name

    try:
        return check_name(value, "name")
    except UsageError as exc:
        raise ValueError(str(exc).removeprefix("name ")) from None


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Head(_Closed):
    name: Annotated[StrictStr, AfterValidator(_name)] | None = None
    kernels: OneOrMany = "debian:7.3"


class Entry(_Closed):
    scenario: StrictStr
    name: Annotated[StrictStr, AfterValidator(_name)] | None = None
    topology: StrictStr | None = None
    kernels: OneOrMany | None = None
    params: dict[str, OneOrMany] = {}
    options: dict[str, Any] = {}
    exclude: list[dict[str, Scalar]] = []
    shards: Annotated[StrictInt, Field(ge=1, le=32)] = 1  # a suite's test list split into this many cells


class MatrixFile(_Closed):
    matrix: Head = Head()
    entry: Annotated[list[Entry], Field(min_length=1)]


def load(path: Path, max_cells: int = MAX_CELLS) -> Matrix:
    """Parse and expand a matrix file. Structure errors are usage errors naming the file and the
    field (unknown keys and tables, values that are not strings, numbers or booleans, empty lists),
    then an entry that every exclude removes, and a matrix larger than max_cells."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such matrix file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a matrix file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    if not data.get("entry"):
        raise UsageError(f"{path}: no [[entry]] tables: a matrix names at least one scenario")
    try:
        doc = MatrixFile.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{path}: {describe(exc)}") from None
    matrix = Matrix(doc.matrix.name or check_name(path.stem, f"{path}: the matrix name"), path)
    seen: dict[str, int] = {}
    for i, entry in enumerate(doc.entry, start=1):
        where = f"{path}: entry[{i - 1}]"
        for reserved in ("kernels", "params", "topology"):
            if reserved in entry.options:
                raise UsageError(f"{where}.options.{reserved}: set it with the entry's own '{reserved}' key")
        kernels = _list(entry.kernels if entry.kernels is not None else doc.matrix.kernels)
        keys = sorted(entry.params)
        size = len(kernels) * entry.shards
        for k in keys:
            size *= len(_list(entry.params[k]))
        if len(matrix.cells) + size > max_cells:
            raise UsageError(f"{path}: {len(matrix.cells) + size} cells or more (entry {i} alone expands to {size}), above the "
                             f"limit of {max_cells}; --max-cells N raises it")
        made = 0
        for combo in itertools.product(*[_list(entry.params[k]) for k in keys]) if keys else [()]:
            chosen = dict(zip(keys, combo, strict=True))
            if any(all(chosen.get(k) == v for k, v in x.items()) for x in entry.exclude):
                continue
            for kernel, part in itertools.product(kernels, range(1, entry.shards + 1)):
                options = {**entry.options, "shard": f"{part}/{entry.shards}"} if entry.shards > 1 else entry.options
                cell = Cell(matrix.name, entry.scenario, str(kernel), entry.topology, chosen, options,
                            entry.name or entry.scenario)
                if cell.id in seen:
                    raise UsageError(f"{where}: cell {cell.id} is also made by entry {seen[cell.id]}")
                seen[cell.id] = i
                matrix.cells.append(cell)
                made += 1
        if not made:
            raise UsageError(f"{where}: every combination of its params is excluded: it expands to no cell")
    return matrix


def select(matrix: Matrix, ids: list[str] | None) -> list[Cell]:
    if not ids:
        return list(matrix.cells)
    by_id = {c.id: c for c in matrix.cells}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise UsageError(f"no cell {unknown[0]!r} in {matrix.path} ('lab matrix plan' lists them)")
    return [by_id[i] for i in ids]


def validate(cells: list[Cell]) -> list[str]:
    """Every cell's options, topology and kernel reference checked without booting: one line per
    invalid cell."""
    from lab.scenarios import framework
    from lab.scenarios.options import validate as validate_options

    from lab.kernels import resolve
    from lab.preflight import check_against_qemu

    problems = []
    checked_topologies: set[str] = set()
    bad_kernels: dict[str, str] = {}
    for ref in dict.fromkeys(cell.kernel for cell in cells):
        try:
            resolve.check(ref)
        except LabError as exc:
            bad_kernels[ref] = str(exc).splitlines()[0]
    for cell in cells:
        if cell.kernel in bad_kernels:
            problems.append(f"{cell.id}: kernel {cell.kernel}: {bad_kernels[cell.kernel]}")
            continue
        try:
            cls = framework.get(cell.scenario)
            options = validate_options(cls.Options, cell.scenario_options())
            variants = cls(options).plan()
            key = json.dumps([cell.scenario, cell.topology, cell.params], sort_keys=True)
            if key not in checked_topologies:
                check_against_qemu([v.rendered.topology for v in variants if v.rendered is not None])
                checked_topologies.add(key)
        except LabError as exc:
            problems.append(f"{cell.id}: {str(exc).splitlines()[0]}")
    return problems


def known_durations(results: Path) -> dict[str, float]:
    """Cell id -> seconds of its latest run in a results directory (for plan's estimates)."""
    out: dict[str, tuple[str, float]] = {}
    for manifest in results.glob("*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        cell, seconds, started = m.get("cell"), m.get("seconds"), str(m.get("started", ""))
        if isinstance(cell, str) and isinstance(seconds, (int, float)) and (cell not in out or started > out[cell][0]):
            out[cell] = (started, float(seconds))
    return {k: v for k, (_, v) in out.items()}


def plan_text(matrix: Matrix, cells: list[Cell], durations: dict[str, float]) -> str:
    lines = [f"matrix {matrix.name}: {len(cells)} cell(s)"]
    total, unknown = 0.0, 0
    for cell in cells:
        est = durations.get(cell.id)
        if est is None:
            unknown += 1
        else:
            total += est
        shown = f"{est / 60:5.1f} min" if est is not None else "    ? min"
        lines.append(f"  {cell.id:70} {shown}")
    lines.append(f"expected: {total / 60:.1f} min for {len(cells) - unknown} cell(s) run before"
                 + (f", {unknown} never run here" if unknown else ""))
    return "\n".join(lines)


def run_cells(cells: list[Cell]) -> list[tuple[Cell, Any]]:
    """Run cells one after another on this host; every cell is a normal run directory tagged with
    its identity."""
    from lab.progress import info
    from lab.scenarios import framework
    from lab.scenarios.options import validate as validate_options

    outcomes = []
    for n, cell in enumerate(cells, start=1):
        info(f"matrix: cell {n} of {len(cells)}: {cell.id}")
        cls = framework.get(cell.scenario)
        started = time.monotonic()
        outcome = framework.run(cls, validate_options(cls.Options, cell.scenario_options()),
                                tags={"cell": cell.id, "cell_spec": cell.to_dict()})
        outcome.run_dir.update(seconds=round(time.monotonic() - started, 1))
        outcomes.append((cell, outcome))
    return outcomes
