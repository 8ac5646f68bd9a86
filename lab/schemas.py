"""The shapes of files the lab reads back from elsewhere: a run's results.json (a CI artifact), a
night's night.json and a bundle's bundle.json. Validated before use, so a damaged or hostile file is one line naming the
field, never an internal error further down (a string where a number belongs, a missing key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from lab.errors import UsageError
from lab.validation import describe

Verdict = Literal["PASS", "FAIL", "ERROR", "N/A", "FLAKY", "INFO"]
CellVerdict = Literal["PASS", "FAIL", "ERROR", "N/A", "FLAKY", "INFO", "MISSING"]
Scalar = Union[StrictStr, StrictInt, StrictFloat, StrictBool]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RateIn(_Open):
    failed: StrictInt = Field(ge=0)
    runs: StrictInt = Field(ge=0)


class CaseIn(_Open):
    verdict: Verdict
    reason: StrictStr = ""
    outcome: StrictStr = "error"


class AttemptIn(_Open):
    attempt: StrictInt
    fault: StrictStr
    failed: list[StrictStr] = []
    kernel_problems: list[dict[str, Any]] = []


class SectionIn(_Open):
    verdict: Verdict
    kernel: StrictStr | None = None
    release: StrictStr | None = None
    outcome: StrictStr = "error"
    reason: StrictStr = ""
    cases: dict[str, CaseIn] = {}
    rate: RateIn | None = None
    boot: dict[str, Any] = {}
    attempts: list[AttemptIn] = []
    facets: dict[str, Any] = {}


class ResultsIn(_Open):
    scenario: StrictStr | None = None
    cell: StrictStr | None = None
    cell_spec: dict[str, Any] = {}
    options: dict[str, Any] = {}
    subruns: dict[str, SectionIn] = {}


class CellIn(_Open):
    verdict: CellVerdict
    kernel: StrictStr
    entry: StrictStr
    scenario: StrictStr | None = None
    params: dict[str, Scalar] = {}
    release: StrictStr | None = None
    outcome: StrictStr = "error"
    reason: StrictStr = ""
    rate: RateIn | None = None
    figures: dict[str, StrictInt | StrictFloat] = {}
    run: StrictStr | None  # None: a MISSING cell brought back no run directory
    provenance: dict[str, Any] = {}
    attempts: list[dict[str, Any]] = []
    flaky: list[StrictStr] = []
    history: list[dict[str, Any]] = []
    regressed_since: StrictStr | None = None
    images: dict[StrictStr, StrictStr] = {}


class ImageIn(_Open):
    key: StrictStr
    resolved_at: StrictStr = ""
    packages: dict[StrictStr, StrictStr] = {}


class NightIn(_Open):
    format: Literal[1]
    name: StrictStr
    cells: dict[str, CellIn]
    kernels: dict[str, StrictStr | None] = {}
    images: dict[StrictStr, ImageIn] = {}
    superseded: list[Any] = []


class BundleIn(_Open):
    """bundle.json of a `lab results bundle` (its format number is checked first, for its own message)."""

    format: StrictInt
    scenario: StrictStr
    options: dict[str, Any]
    kernels: list[Any]
    verdicts: dict[str, Any]
    topology: dict[str, Any] = {}


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: dict[str, Any], path: Path, what: str) -> dict[str, Any]:
    """The data as a plain dict once it has the model's shape; else one line naming the field."""
    try:
        return model.model_validate(data).model_dump()
    except ValidationError as exc:
        raise UsageError(f"{path}: a damaged {what}: {describe(exc)}") from None
