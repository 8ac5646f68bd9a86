"""Which patch changed the verdict: build and run a scenario on the base, on the whole series, then
binary-search the prefixes of the series (or the commits between two refs of a git tree). Every
step is a normal run directory; the summary names the last good and the first bad.

Only PASS and FAIL decide. A step whose run ends in ERROR is run once more; if it is still ERROR
(or N/A: the scenario could not test that kernel) the bisect stops, inconclusive at that step,
rather than let a broken boot or an untested kernel steer the search. A step that does not build is
skipped, as `git bisect skip` does: the search goes on around it, and when it stands between the
last good and the first bad the result says that the first bad is one of them. With --repeat, a
batch in which every repetition ended in ERROR is inconclusive at its step, and a base that fails at
least as often as the whole series stops the bisect at once ("the base already fails"): the series
did not bring that failure in. `--case NAME` follows one case of the scenario, so expected failures
of its other cases do not decide."""

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
BUILD_ERROR = "BUILD-ERROR"


class Inconclusive(Exception):
    """A step that cannot decide: its verdict is ERROR twice, or N/A."""

    def __init__(self, index: int, label: str, signature: str) -> None:
        super().__init__(f"inconclusive at {label}: {signature}")
        self.index, self.label, self.signature = index, label, signature


class BaseFails(Exception):
    """With --repeat: the base fails at least as often as the whole series."""

    def __init__(self, base: Rate, end: Rate) -> None:
        super().__init__(f"the base already fails: {base.failed}/{base.runs}")
        self.base, self.end = base, end


def decides(signature: str) -> bool:
    """A signature bisect may compare: every part PASS or FAIL (a step that did not build is skipped)."""
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
    """Binary search for the first candidate whose signature differs from candidate 0's. A candidate
    that did not build (BUILD-ERROR) is skipped; the ends must build."""
    count: int  # candidates 0..count
    evaluate: Callable[[int], str]
    seen: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # after run(): skipped candidates between the two it returned

    def verdict(self, i: int) -> str:
        if i not in self.seen:
            self.seen[i] = self.evaluate(i)
        return self.seen[i]

    def end(self, i: int) -> str:
        verdict = self.verdict(i)
        if verdict == BUILD_ERROR:
            raise Inconclusive(i, str(i), "BUILD-ERROR: an end of the bisect must build")
        return verdict

    def run(self) -> tuple[int, int] | None:
        """(last index with the base's verdict, first index without), or None if the end agrees."""
        good = self.end(0)
        if self.end(self.count) == good:
            return None
        lo, hi = 0, self.count
        while untested := [i for i in range(lo + 1, hi) if self.seen.get(i) != BUILD_ERROR]:
            mid = min(untested, key=lambda i: (abs(i - (lo + hi) / 2), i))
            verdict = self.verdict(mid)
            if verdict == BUILD_ERROR:
                continue
            if verdict == good:
                lo = mid
            else:
                hi = mid
        self.skipped = [i for i in range(lo + 1, hi)]
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
        if good.failed and good.value >= bad.value:
            raise BaseFails(good, bad)
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


def followed(outcome: framework.Outcome, case: str | None) -> list[dict[str, Any]]:
    """What a step is judged on, per sub-run: the sub-run itself, or with --case only that case (a
    sub-run that has no such case reads ERROR, or N/A when the sub-run was N/A)."""
    subruns = list((outcome.results.get("subruns") or {}).values())
    if case is None:
        return subruns
    out = []
    for section in subruns:
        found = (section.get("cases") or {}).get(case)
        if found is None:
            verdict = "N/A" if section.get("verdict") == "N/A" else "ERROR"
            found = {"verdict": verdict, "reason": f"no case {case!r} in this run"}
        out.append({**found, "facets": section.get("facets", {})})
    return out


def signature(outcome: framework.Outcome, case: str | None = None) -> str:
    """The verdicts without the kernel labels: what bisect compares between steps."""
    if case is None:
        return outcome.signature()
    parts = []
    for judged in followed(outcome, case) or [{"verdict": "ERROR", "facets": {}}]:
        tag = ",".join(str(v) for v in judged.get("facets", {}).values())
        parts.append(f"{tag}={judged['verdict']}" if tag else judged["verdict"])
    return ", ".join(parts)


def counted(judged: dict[str, Any]) -> tuple[int, int]:
    """(failed, completed) repetitions of a sub-run or case: an ERROR repetition is not counted."""
    tally = judged.get("repetitions")
    if isinstance(tally, dict):
        return int(tally.get("failed", 0)), int(tally.get("passed", 0)) + int(tally.get("failed", 0))
    rate = judged.get("rate")
    if isinstance(rate, dict):
        return int(rate["failed"]), int(rate["runs"])
    if judged.get("verdict") in DECIDING:
        return int(judged["verdict"] == "FAIL"), 1
    return 0, 0


class Bisect:
    """One bisect: its steps (built once, run as often as the search asks), the search that
    drives them, and bisect.json and summary.txt rewritten after every step."""

    def __init__(self, scenario: str, options: ScenarioOptions, requests: list[build.BuildRequest], labels: list[str],
                 describe: dict, build_kernel: Callable[[build.BuildRequest], Any], run_scenario: Callable[..., framework.Outcome],
                 max_batches: int, case: str | None) -> None:
        self.scenario, self.options, self.requests, self.labels = scenario, options, requests, labels
        self.build_kernel, self.run_scenario, self.max_batches, self.case = build_kernel, run_scenario, max_batches, case
        self.run_dir = RunDir.create("bisect", scenario)
        self.run_dir.update(scenario=scenario, options=describe)
        self.steps: dict[int, Step] = {}
        self.summary: dict = {"scenario": scenario, **describe, "candidates": labels, "steps": [], "result": None}
        if case is not None:
            self.summary["case"] = case

    def save(self) -> None:
        self.summary["steps"] = [dict(vars(self.steps[i])) for i in sorted(self.steps)]
        self.run_dir.write("bisect.json", json.dumps(self.summary, indent=2))
        self.run_dir.write("summary.txt", report(self.summary) + "\n")

    def run_once(self, i: int, kernel_ref: str) -> tuple[str, int]:
        """The step's signature and how many repetitions of this run completed (PASS or FAIL)."""
        step = self.steps[i]
        outcome = self.run_scenario(self.scenario, self.options.model_copy(update={"kernels": [kernel_ref]}))
        step.signature = signature(outcome, self.case)
        step.runs.append(str(outcome.run_dir.path))
        step.run_dir = str(outcome.run_dir.path)
        completed = 0
        for judged in followed(outcome, self.case):
            failed, runs = counted(judged)
            step.failed += failed
            step.repetitions += runs
            completed += runs
        return step.signature, completed

    def kernel(self, i: int) -> str | None:
        """The step's kernel ref, built once; None when it does not build (BUILD-ERROR: skipped, as
        git bisect skip does)."""
        step = self.steps.setdefault(i, Step(i, self.labels[i]))
        if step.kernel or step.signature == BUILD_ERROR:
            return step.kernel or None
        info(f"bisect: {self.labels[i]} ({len(self.steps)} of at most {_max_steps(len(self.labels) - 1)} steps)")
        try:
            step.kernel = self.build_kernel(self.requests[i]).ref
            return step.kernel
        except LabError as exc:
            step.signature = BUILD_ERROR
            step.error = str(exc).splitlines()[0]
            info(f"bisect: {self.labels[i]}: {BUILD_ERROR} ({step.error}); skipped")
            self.save()
            return None

    def measure(self, i: int) -> Rate:
        """With --repeat: one more batch of the step; its failure rate over every completed repetition."""
        ref = self.kernel(i)
        if ref is None:
            raise Inconclusive(i, self.labels[i], f"BUILD-ERROR ({self.steps[i].error}): a flaky reproducer needs a kernel")
        _, completed = self.run_once(i, ref)
        step = self.steps[i]
        self.save()
        if not completed:
            raise Inconclusive(i, self.labels[i], f"no repetition completed ({step.signature}): a rate needs runs that happened")
        info(f"bisect: {self.labels[i]}: {step.rate.describe()}")
        return step.rate

    def evaluate(self, i: int) -> str:
        """The step's verdict signature; an ERROR is run once more, and what still does not decide stops the bisect."""
        ref = self.kernel(i)
        if ref is None:
            return BUILD_ERROR
        sig, _ = self.run_once(i, ref)
        if "ERROR" in sig:  # N/A does not change on a second run; an ERROR may
            info(f"bisect: {self.labels[i]}: {sig}; running it once more")
            sig, _ = self.run_once(i, ref)
        info(f"bisect: {self.labels[i]}: {sig}")
        self.save()
        if not decides(sig):
            raise Inconclusive(i, self.labels[i], sig)
        return sig

    def result(self) -> dict[str, Any]:
        """Run the search and say what it found, why it stopped, or that nothing changed."""
        flaky = self.options.repeat > 1
        search: Search | RateSearch = (RateSearch(len(self.labels) - 1, self.measure, max_batches=self.max_batches) if flaky
                                       else Search(len(self.labels) - 1, self.evaluate))
        try:
            found = search.run()
        except Inconclusive as exc:
            label = self.labels[exc.index] if exc.label == str(exc.index) else exc.label
            return {"changed": None, "inconclusive": {"index": exc.index, "label": label, "signature": exc.signature}}
        except BaseFails as exc:
            return {"changed": None, "base_fails": {"base": exc.base.to_dict(), "end": exc.end.to_dict(),
                                                    "base_run": self.steps[0].run_dir}}
        if found is None:
            return {"changed": False, "verdict": self.steps[0].signature}
        good, bad = found
        result = {"changed": True, "last_good": vars(self.steps[good]), "first_bad": vars(self.steps[bad])}
        skipped = getattr(search, "skipped", [])
        if skipped:
            result["could_be"] = [self.labels[i] for i in (*skipped, bad)]
        return result

    def run(self) -> tuple[RunDir, dict]:
        self.summary["mode"] = (f"failure rates, {self.options.repeat} repetitions a batch, at most {self.max_batches} batches "
                                f"a step" if self.options.repeat > 1 else "verdicts")
        status = "interrupted"
        try:
            self.summary["result"] = self.result()
            status = "done"
        finally:
            self.save()
            self.run_dir.finish(status, verdict=verdict_word(self.summary["result"]))
        return self.run_dir, self.summary


def run_bisect(scenario: str, options: ScenarioOptions, requests: list[build.BuildRequest], labels: list[str],
               describe: dict, build_kernel: Callable[[build.BuildRequest], Any] = build.build,
               run_scenario: Callable[..., framework.Outcome] = framework.run, max_batches: int = 4,
               case: str | None = None) -> tuple[RunDir, dict]:
    """build_kernel and run_scenario are the lab's own; tests of the search logic pass others."""
    return Bisect(scenario, options, requests, labels, describe, build_kernel, run_scenario, max_batches, case).run()


def verdict_word(result: dict | None) -> str:
    if result is None:
        return "unfinished"
    if result.get("base_fails"):
        return "base fails"
    return {True: "changed", False: "unchanged"}.get(result["changed"], "inconclusive")


def exit_status(result: dict | None) -> int:
    """0 the change was found, 1 nothing changed, 3 inconclusive (or the base already fails)."""
    word = verdict_word(result)
    return {"changed": 0, "unchanged": 1}.get(word, 3)


def _max_steps(count: int) -> int:
    return 2 + max(0, (count - 1).bit_length())


def report(summary: dict) -> str:
    followed = f", following case {summary['case']!r}" if summary.get("case") else ""
    lines = [f"bisect of {summary['scenario']}{followed} over {len(summary['candidates']) - 1} step(s):"]
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
               else "only PASS and FAIL decide; an ERROR was run twice")
        lines.append(f"inconclusive at {inc['label']}: {inc['signature']} ({why})")
    elif result.get("base_fails"):
        base, end = result["base_fails"]["base"], result["base_fails"]["end"]
        lines.append(f"the base already fails: {base['failed']}/{base['runs']} (the whole series: {end['failed']}/{end['runs']}); "
                     f"the series did not bring this failure in, so there is nothing to bisect")
        lines.append(f"  base run: {result['base_fails'].get('base_run', '')}")
    elif not result["changed"]:
        lines.append(f"the verdict does not change: {result['verdict']} on the base and with every patch")
    else:
        good, bad = result["last_good"], result["first_bad"]
        lines.append(f"first change: {bad['label']}  ({good['signature']} -> {bad['signature']})")
        lines.append(f"  last good: {good['label']}  {good['kernel']}  {good['run_dir']}")
        lines.append(f"  first bad: {bad['label']}  {bad['kernel']}  {bad['run_dir'] or bad.get('error', '')}")
        if result.get("could_be"):
            lines.append(f"  steps between them did not build (skipped): the first bad is one of {', '.join(result['could_be'])}")
    return "\n".join(lines)
