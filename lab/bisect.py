"""Which patch changed the verdict: build and run a scenario on the base, on the whole series, then
binary-search the prefixes of the series (or the commits between two refs of a git tree). Every
step is a normal run directory; the summary names the last good and the first bad.

Only PASS, FAIL and BUILD-ERROR decide. A step whose run ends in ERROR is run once more; if it is
still ERROR (or N/A: the scenario could not test that kernel) the bisect stops, inconclusive at that
step, rather than let a broken boot or an untested kernel steer the search."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from lab.errors import LabError, UsageError
from lab.kernels import build
from lab.kernels.series import load_series
from lab.kernels.source import git, resolve_source
from lab.progress import info
from lab.rundir import RunDir
from lab.scenarios import framework
from lab.scenarios.options import ScenarioOptions
from lab.stats import Rate, separated

DECIDING = ("PASS", "FAIL")


class Inconclusive(Exception):
    """A step that cannot decide: its verdict is ERROR twice, or N/A."""

    def __init__(self, index: int, label: str, signature: str) -> None:
        super().__init__(f"inconclusive at {label}: {signature}")
        self.index, self.label, self.signature = index, label, signature


def decides(signature: str) -> bool:
    """A signature bisect may compare: every part PASS or FAIL, or the step did not build."""
    if signature == "BUILD-ERROR":
        return True
    return all(part.rsplit("=", 1)[-1] in DECIDING for part in signature.split(", "))


@dataclass
class Step:
    index: int  # 0 = base; i = base + patches 1..i (or the i-th commit after the good ref)
    label: str
    kernel: str = ""
    signature: str = ""
    run_dir: str = ""
    error: str = ""
    runs: list[str] = field(default_factory=list)  # every run of this step (an ERROR is run twice)
    failed: int = 0  # with --repeat: failing repetitions over every run of this step
    repetitions: int = 0

    @property
    def rate(self) -> Rate:
        return Rate(self.failed, self.repetitions)


@dataclass
class Search:
    """Binary search for the first candidate whose signature differs from candidate 0's."""
    count: int  # candidates 0..count
    evaluate: Callable[[int], str]
    seen: dict[int, str] = field(default_factory=dict)

    def verdict(self, i: int) -> str:
        if i not in self.seen:
            self.seen[i] = self.evaluate(i)
        return self.seen[i]

    def run(self) -> tuple[int, int] | None:
        """(last index with the base's verdict, first index without), or None if the end agrees."""
        good = self.verdict(0)
        if self.verdict(self.count) == good:
            return None
        lo, hi = 0, self.count
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.verdict(mid) == good:
                lo = mid
            else:
                hi = mid
        return lo, hi


@dataclass
class RateSearch:
    """Binary search on failure rates, for reproducers that fail only some of the time. A step is
    on the bad side when its rate's 95 % interval is clear of the good end's and overlaps the bad
    end's, on the good side the other way round; when it overlaps both (or neither) it is run
    again, up to a bound, and the search is inconclusive there if that does not settle it. The
    ends themselves are run again until their intervals separate."""
    count: int
    measure: Callable[[int], Rate]  # run the step once more (another batch of repetitions); its rate so far
    max_batches: int = 4
    rates: dict[int, Rate] = field(default_factory=dict)
    batches: dict[int, int] = field(default_factory=dict)

    def more(self, i: int) -> Rate:
        self.batches[i] = self.batches.get(i, 0) + 1
        self.rates[i] = self.measure(i)
        return self.rates[i]

    def rate(self, i: int) -> Rate:
        return self.rates[i] if i in self.rates else self.more(i)

    def run(self) -> tuple[int, int] | None:
        good, bad = self.rate(0), self.rate(self.count)
        while not separated(good, bad):
            if max(self.batches[0], self.batches[self.count]) >= self.max_batches:
                if good.value == bad.value:
                    return None
                raise Inconclusive(self.count, f"the ends ({good.describe()} and {bad.describe()})",
                                   "their failure rates do not separate")
            good, bad = self.more(0), self.more(self.count)
        lo, hi = 0, self.count
        while hi - lo > 1:
            mid = (lo + hi) // 2
            side = self.side(mid)
            if side == "good":
                lo = mid
            else:
                hi = mid
        return lo, hi

    def side(self, i: int) -> str:
        good, bad = self.rates[0], self.rates[self.count]
        while True:
            r = self.rate(i)
            near_good, near_bad = not separated(r, good), not separated(r, bad)
            if near_good != near_bad:
                return "good" if near_good else "bad"
            if self.batches[i] >= self.max_batches:
                raise Inconclusive(i, str(i), f"{r.describe()} cannot be told from either end "
                                              f"({good.describe()}; {bad.describe()})")
            self.more(i)


def series_candidates(base: str, series_spec: str, configs: tuple[str, ...]) -> tuple[list[build.BuildRequest], list[str]]:
    resolve_source(base)  # a base that does not exist is a usage error before anything is built
    series = load_series(series_spec)
    requests = [build.BuildRequest(source=base, series=series_spec if i else None, configs=configs,
                                   patches=i if i else None) for i in range(len(series.patches) + 1)]
    labels = ["base"] + [f"patch {p.title}" for p in series.patches]
    return requests, labels


def commit_candidates(tree: str, good: str, bad: str, configs: tuple[str, ...]) -> tuple[list[build.BuildRequest], list[str]]:
    source = resolve_source(f"{tree}@{good}")
    if source.kind != "git" or source.path is None:
        raise UsageError(f"--good/--bad need a git tree as --base, not {tree}")
    bad_commit = git(source.path, "rev-parse", "--verify", "--quiet", f"{bad}^{{commit}}", check=False).stdout.strip()
    if not bad_commit:
        raise UsageError(f"no commit {bad!r} in {source.path}")
    commits = git(source.path, "rev-list", "--reverse", "--first-parent", f"{source.commit}..{bad_commit}").stdout.split()
    if not commits:
        raise UsageError(f"{bad} is not a descendant of {good} in {source.path}")
    chain = [source.commit or good, *commits]
    subjects = [git(source.path, "log", "-1", "--format=%h %s", c).stdout.strip() for c in chain]
    return [build.BuildRequest(source=f"{source.path}@{c}", configs=configs) for c in chain], subjects


def run_bisect(scenario: str, options: ScenarioOptions, requests: list[build.BuildRequest], labels: list[str],
               describe: dict, build_kernel: Callable[[build.BuildRequest], Any] = build.build,
               run_scenario: Callable[..., framework.Outcome] = framework.run, max_batches: int = 4) -> tuple[RunDir, dict]:
    """build_kernel and run_scenario are the lab's own; tests of the search logic pass others."""
    run_dir = RunDir.create("bisect", scenario)
    run_dir.update(scenario=scenario, options=describe)
    steps: dict[int, Step] = {}
    summary: dict = {"scenario": scenario, **describe, "candidates": labels, "steps": [], "result": None}

    def save() -> None:
        summary["steps"] = [dict(vars(steps[i])) for i in sorted(steps)]
        run_dir.write("bisect.json", json.dumps(summary, indent=2))
        run_dir.write("summary.txt", report(summary) + "\n")

    def run_once(i: int, kernel_ref: str) -> str:
        step = steps[i]
        outcome = run_scenario(scenario, options.model_copy(update={"kernels": [kernel_ref]}))
        step.signature = outcome.signature()
        step.runs.append(str(outcome.run_dir.path))
        step.run_dir = str(outcome.run_dir.path)
        for section in outcome.results.get("subruns", {}).values():
            rate = section.get("rate") or ({"failed": int(section["verdict"] == "FAIL"), "runs": 1}
                                          if section["verdict"] in DECIDING else {"failed": 0, "runs": 0})
            step.failed += rate["failed"]
            step.repetitions += rate["runs"]
        return step.signature

    def build_step(i: int) -> str | None:
        """The step's kernel ref, or None when it does not build (BUILD-ERROR)."""
        step = steps.setdefault(i, Step(i, labels[i]))
        if step.kernel or step.signature == "BUILD-ERROR":
            return step.kernel or None
        info(f"bisect: {labels[i]} ({len(steps)} of at most {_max_steps(len(labels) - 1)} steps)")
        try:
            step.kernel = build_kernel(requests[i]).ref
            return step.kernel
        except LabError as exc:
            step.signature = "BUILD-ERROR"
            step.error = str(exc).splitlines()[0]
            save()
            raise Inconclusive(i, labels[i], f"BUILD-ERROR ({step.error}): a flaky reproducer needs a kernel") from None

    def measure(i: int) -> Rate:
        ref = build_step(i)
        assert ref is not None
        run_once(i, ref)
        step = steps[i]
        info(f"bisect: {labels[i]}: {step.rate.describe()}")
        save()
        return step.rate

    def evaluate(i: int) -> str:
        step = steps.setdefault(i, Step(i, labels[i]))
        info(f"bisect: {labels[i]} ({len(steps)} of at most {_max_steps(len(labels) - 1)} steps)")
        try:
            kernel = build_kernel(requests[i])
        except LabError as exc:
            # A series step that does not build (or apply) is a verdict of its own, like git bisect's 'bad'.
            step.signature = "BUILD-ERROR"
            step.error = str(exc).splitlines()[0]
            info(f"bisect: {labels[i]}: {step.signature}")
            save()
            return step.signature
        step.kernel = kernel.ref
        signature = run_once(i, kernel.ref)
        if "ERROR" in signature:
            info(f"bisect: {labels[i]}: {signature}; running it once more")
            signature = run_once(i, kernel.ref)
        info(f"bisect: {labels[i]}: {signature}")
        save()
        if not decides(signature):
            raise Inconclusive(i, labels[i], signature)
        return signature

    flaky = options.repeat > 1
    summary["mode"] = f"failure rates, {options.repeat} repetitions a batch, at most {max_batches} batches a step" if flaky else "verdicts"
    status = "interrupted"
    try:
        try:
            if flaky:
                found = RateSearch(len(labels) - 1, measure, max_batches=max_batches).run()
            else:
                found = Search(len(labels) - 1, evaluate).run()
        except Inconclusive as exc:
            label = labels[exc.index] if exc.label == str(exc.index) else exc.label
            summary["result"] = {"changed": None, "inconclusive": {"index": exc.index, "label": label,
                                                                   "signature": exc.signature}}
            status = "done"
        else:
            if found is None:
                summary["result"] = {"changed": False, "verdict": steps[0].signature}
            else:
                good, bad = found
                summary["result"] = {"changed": True, "last_good": vars(steps[good]), "first_bad": vars(steps[bad])}
            status = "done"
    finally:
        save()
        result = summary["result"]
        verdict = "unfinished" if result is None else {True: "changed", False: "unchanged"}.get(result["changed"], "inconclusive")
        run_dir.finish(status, verdict=verdict)
    return run_dir, summary


def _max_steps(count: int) -> int:
    return 2 + max(0, (count - 1).bit_length())


def report(summary: dict) -> str:
    lines = [f"bisect of {summary['scenario']} over {len(summary['candidates']) - 1} step(s):"]
    for s in summary["steps"]:
        extra = f"  ({s['error']})" if s.get("error") else ""
        rate = f"  {Rate(s['failed'], s['repetitions']).describe()}" if s.get("repetitions", 0) > 1 else ""
        lines.append(f"  {s['label'][:60]:60} {s['signature']}{rate}{extra}")
    result = summary.get("result")
    if result is None:
        lines.append("unfinished")
    elif result.get("inconclusive"):
        inc = result["inconclusive"]
        why = ("failure rates that do not separate, after every repetition allowed" if summary.get("mode", "").startswith("failure")
               else "only PASS, FAIL and BUILD-ERROR decide; an ERROR was run twice")
        lines.append(f"inconclusive at {inc['label']}: {inc['signature']} ({why})")
    elif not result["changed"]:
        lines.append(f"the verdict does not change: {result['verdict']} on the base and with every patch")
    else:
        good, bad = result["last_good"], result["first_bad"]
        lines.append(f"first change: {bad['label']}  ({good['signature']} -> {bad['signature']})")
        lines.append(f"  last good: {good['label']}  {good['kernel']}  {good['run_dir']}")
        lines.append(f"  first bad: {bad['label']}  {bad['kernel']}  {bad['run_dir'] or bad.get('error', '')}")
    return "\n".join(lines)
