"""Sweeps: a grid of runs (games x seeds x variants) trained on one Ray cluster as one Tune
experiment, each run then evaluated, and the table across runs written with runs as the unit.

    python sweep.py --config configs/paper.yaml --config configs/maze_idaac.yaml \\
        env.game=maze,heist,jumper --seeds 3

**The grid.** Every config file is a variant; an override whose value has commas outside brackets
is an axis (``env.game=maze,heist``, ``member.algo=ppo,idaac``, ``logging.eval_splits=[train],[train,test]``);
the runs are every combination, and ``--seeds N`` makes N replicates of each. Replicate i trains its
members from ``seed + i * ensemble.size`` and its explorer from ``explorer.seed + i``, so no two
replicates share a member's seed or an explorer (``seed=0,1`` would: its runs' members 1..9 are the
same networks, and it is refused). Each run is an ordinary run directory, ``<runs_dir>/<name>``,
named after its config and its values (``quickstart_maze_s0``): ``train.py``, ``eval.py`` and
``compare.py`` read it as any other.

**Training.** Every unfinished job of every run is a trial of one Tune experiment
(launch/ray_trials.py: ``train_trials``), placed over all of them (launch/placement.py); finished
runs are skipped and the others resume from their checkpoints, with the run-level rules of
``train.py`` (one trainer per run directory, settings that checkpoints depend on unchanged). With
``ray=false`` the runs train one after another, each as ``train.py`` would train it.

**Evaluation and the table.** Each trained run is evaluated as ``eval.py RUN`` would with the
sweep's ``eval.*`` and ``expgen.*`` settings (under Ray, as tasks spread over the cluster); a run
evaluated before with the same settings and the same checkpoints is not evaluated again. The table
compares the variants (``compare.py``'s statistics: each variant's runs over games and seeds as the
unit), and, with several games, each game alone. Everything the sweep writes besides the runs is in
``<runs_dir>/sweeps/<name>/``: ``sweep.json`` (its runs and their evaluations), ``table/``
(results.json, results.md, profiles.png; ``table/<game>/`` per game) and, unless ``--storage``
says otherwise, Tune's state in ``ray/``.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.checkpoint import checkpoint_steps
from core.config import Config, ConfigError, load_config
from core.run_layout import RunLayout
from launch.jobs import job_agents, pending_jobs, plan
from launch.run import check_unchanged, open_run, run_summary, train_run

log = logging.getLogger("expgen")
REPLICATE_KEYS = ("seed", "explorer.seed", "ensemble.seeds")  # axes that make replicates, not variants
FIXED_KEYS = ("name", "runs_dir", "ray", "ray_address")  # one value for the whole sweep
EVAL_SECTIONS = ("eval", "expgen")  # what evaluation reads; may change between invocations


def split_values(value: str) -> list[str]:
    """``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]``: commas inside brackets or quotes belong to a value."""
    parts, depth, quote, current = [], 0, "", ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    return parts + [current]


def axes_of(overrides: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Overrides split into the fixed ones and the axes (key, values), in the order given. Raises
    ``ConfigError`` for a malformed override, an empty value, a key twice or an axis of a key the
    whole sweep shares (``FIXED_KEYS``)."""
    fixed, axes, seen = [], [], set()
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"overrides must look like key=value or key=v1,v2,..., got {override!r}")
        key, value = (s.strip() for s in override.split("=", 1))
        if key in seen:
            raise ConfigError(f"{key} is given twice; give its values once, comma-separated: {key}=a,b")
        seen.add(key)
        values = [v.strip() for v in split_values(value)]
        if len(values) == 1:
            fixed.append(f"{key}={value}")
            continue
        if any(not v for v in values):
            raise ConfigError(f"{override!r} has an empty value between its commas")
        if key in FIXED_KEYS:
            raise ConfigError(f"{key} cannot vary within a sweep (one value for all its runs), got {override!r}")
        if len(set(values)) < len(values):
            raise ConfigError(f"{override!r} lists a value twice")
        axes.append((key, values))
    return fixed, axes


def value_label(key: str, value: str) -> str:
    """How an axis value shows in a run's name: the game itself, else ``<last key part>-<value>``."""
    clean = re.sub(r"[^A-Za-z0-9.]+", "-", value).strip("-") or "x"
    return clean if key == "env.game" else f"{key.rsplit('.', 1)[-1]}-{clean}"


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid: its config, the variant it belongs to (what the table compares), its
    game (a stratum of the table) and its replicate index (None without ``--seeds``)."""

    cfg: Config
    variant: str
    game: str
    replicate: int | None = None


@dataclass(frozen=True)
class Sweep:
    """A grid of runs; ``root``: ``<runs_dir>/sweeps/<name>``; ``storage``: Tune's storage path."""

    name: str
    runs: list[SweepRun]
    root: Path
    storage: Path

    @property
    def ray(self) -> bool:
        return self.runs[0].cfg.ray

    @property
    def record(self) -> Path:
        return self.root / "sweep.json"

    @property
    def table(self) -> Path:
        return self.root / "table"

    def variants(self) -> dict[str, list[SweepRun]]:
        out: dict[str, list[SweepRun]] = {}
        for run in self.runs:
            out.setdefault(run.variant, []).append(run)
        return out


def expand(configs: list[str], overrides: list[str], seeds: int = 0, name: str = "",
           storage: str = "") -> Sweep:
    """The sweep's runs: every config file x every combination of the axes of ``overrides`` x
    ``seeds`` replicates (0: none). Each run's config is loaded and checked as train.py would.
    Raises ``ConfigError`` before any work: a bad override or config, two runs with one name, runs
    that disagree on ``ray``/``ray_address``/``runs_dir``, or replicates that are not independent
    (``check_independent``)."""
    if not configs:
        raise ConfigError("give at least one --config")
    if seeds < 0:
        raise ConfigError(f"--seeds must be >= 0, got {seeds}")
    fixed, axes = axes_of(overrides)
    if seeds and any(key in REPLICATE_KEYS for key, _ in axes):
        raise ConfigError("--seeds makes the replicates' seeds; drop the seed axis "
                          f"({', '.join(k for k, _ in axes if k in REPLICATE_KEYS)}) or --seeds")
    stems = [Path(c).stem for c in configs]
    if len(set(stems)) < len(stems):
        raise ConfigError(f"two config files have one name ({', '.join(configs)}): their runs would share names")
    runs: list[SweepRun] = []
    for path, stem in zip(configs, stems):
        for point in itertools.product(*(values for _, values in axes)):
            chosen = [f"{key}={value}" for (key, _), value in zip(axes, point)]
            base = load_config(path, [*fixed, *chosen])
            run_name = base.name + "".join(f"_{value_label(key, value)}" for (key, _), value in zip(axes, point))
            variant = " ".join([stem, *(f"{key}={value}" for (key, _), value in zip(axes, point)
                                        if key != "env.game" and key not in REPLICATE_KEYS)])
            for i in range(seeds) if seeds else [None]:
                extra = [] if i is None else [f"seed={base.seed + i * base.ensemble.size}",
                                              f"explorer.seed={base.explorer.seed + i}"]
                suffix = "" if i is None else f"_s{i}"
                cfg = load_config(path, [*fixed, *chosen, *extra, f"name={run_name}{suffix}"])
                runs.append(SweepRun(cfg, variant, cfg.env.game, i))
    names = [r.cfg.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"several runs of the sweep are named {', '.join(twice)}; give the configs other names")
    for key in ("ray", "ray_address", "runs_dir"):
        values = {str(getattr(r.cfg, key)) for r in runs}
        if len(values) > 1:
            raise ConfigError(f"the sweep's runs disagree on {key} ({', '.join(sorted(values))}); one Ray "
                              f"experiment trains them all: give {key}=... once")
    check_independent(runs)
    root = Path(runs[0].cfg.runs_dir) / "sweeps" / (name or "_".join(stems))
    return Sweep(root.name, runs, root, Path(storage) if storage else root / "ray")


def check_independent(runs: list[SweepRun]) -> None:
    """Runs of one variant on one game are the samples its statistics count: no two may train a
    member from the same seed, nor an explorer from the same seed. Raises ``ConfigError``."""
    cells: dict[tuple[str, str], list[SweepRun]] = {}
    for run in runs:
        cells.setdefault((run.variant, run.game), []).append(run)
    for (variant, game), cell in cells.items():
        for a, b in itertools.combinations(cell, 2):
            shared = sorted(set(a.cfg.member_seeds) & set(b.cfg.member_seeds))
            same_explorer = a.cfg.explorer.enabled and a.cfg.explorer.seed == b.cfg.explorer.seed
            if shared or same_explorer:
                what = (f"members with seeds {', '.join(map(str, shared[:5]))}{' ...' if len(shared) > 5 else ''}"
                        if shared else f"the explorer's seed {a.cfg.explorer.seed}")
                raise ConfigError(
                    f"{a.cfg.name} and {b.cfg.name} ({variant}, {game}) share {what}: they would not be "
                    "independent runs (member m trains from seed + m, the explorer from explorer.seed). Use "
                    "--seeds N for N independent replicates")


def agent_steps(cfg: Config) -> dict[str, int]:
    """Each agent's newest checkpoint step (0: none): what an evaluation of the run evaluated."""
    return {a.name: max(checkpoint_steps(a.checkpoints), default=0) for job in plan(cfg) for a in job_agents(cfg, job)}


def eval_overrides(cfg: Config) -> list[str]:
    """The sweep's ``eval.*`` and ``expgen.*`` values that differ from the run's saved config, as
    overrides (a run's config.yaml keeps the settings it was first trained with)."""
    saved = OmegaConf.to_container(OmegaConf.load(cfg.layout.config))
    now = OmegaConf.to_container(OmegaConf.structured(cfg))
    out = []
    for section in EVAL_SECTIONS:
        for key, value in now[section].items():
            if saved.get(section, {}).get(key) != value:
                out.append(f"{section}.{key}={override_text(value)}")
    return out


def override_text(value: Any) -> str:
    """A config value as a ``key=value`` override writes it: ``[a,b]``, ``true``, ``3e-4``."""
    if isinstance(value, list):
        return f"[{','.join(map(override_text, value))}]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def evaluation_name(cfg: Config, overrides: list[str]) -> str:
    """Which evaluation of the run eval.py writes with ``overrides`` (``eval.name``, or the split's
    name when it is not the run's own split: evaluation/loading.py)."""
    from evaluation.loading import load_eval_config

    return load_eval_config(cfg.layout.root, overrides).eval.name


class Record:
    """``sweep.json``: the sweep's runs (variant, game, directory) and, per run, the overrides and
    checkpoint steps of its last evaluation (``evaluated``); rewritten whole after every change."""

    def __init__(self, sweep: Sweep) -> None:
        self.path = sweep.record
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data = {"name": sweep.name, "runs": {
            r.cfg.name: {"variant": r.variant, "game": r.game, "dir": str(r.cfg.layout.root),
                         "evaluated": old.get("runs", {}).get(r.cfg.name, {}).get("evaluated")}
            for r in sweep.runs}}

    def current(self, cfg: Config, overrides: list[str]) -> bool:
        """Whether the run's evaluation on record used these overrides and its present checkpoints,
        and its results are still there."""
        done = self.data["runs"][cfg.name]["evaluated"]
        return (done is not None and done["overrides"] == overrides and done["steps"] == agent_steps(cfg)
                and (cfg.layout.eval(evaluation_name(cfg, overrides)) / "results.json").is_file())

    def evaluated(self, cfg: Config, overrides: list[str]) -> None:
        self.data["runs"][cfg.name]["evaluated"] = {"overrides": overrides, "steps": agent_steps(cfg)}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


def train(sweep: Sweep) -> None:
    """Train every unfinished run of the sweep (module docstring); each run's summary.json is
    written as train.py writes it (its jobs' wall times: each job's last attempt)."""
    pending = {r.cfg.name: pending_jobs(r.cfg, quiet=True) for r in sweep.runs}
    for run in sweep.runs:
        log.info("%s: %s", run.cfg.name, f"{len(pending[run.cfg.name])} job(s) to train" if pending[run.cfg.name]
                 else "trained to its budgets, skipped")
    todo = [r.cfg for r in sweep.runs if pending[r.cfg.name]]
    if not todo:
        return
    if not sweep.ray:
        for cfg in todo:  # every run's settings before any run trains
            check_unchanged(cfg)
        for cfg in todo:
            train_run(cfg)
        return
    from launch.ray_trials import Trial, init_ray, train_trials  # Ray is imported only when it is used

    todo = [replace(cfg, runs_dir=str(Path(cfg.runs_dir).resolve())) for cfg in todo]  # trials may run elsewhere
    with contextlib.ExitStack() as stack:
        for cfg in todo:  # each run opened as train.py opens it (launch/run.py: open_run), until all are trained
            stack.enter_context(open_run(cfg))
        trials = [Trial(cfg, job) for cfg in todo for job in pending_jobs(cfg)]
        init_ray(todo[0].ray_address)
        start = time.perf_counter()
        trained = train_trials(trials, sweep.storage.resolve(), f"sweep {sweep.name}: {len(todo)} runs, {len(trials)} trials "
                               "on Ray", todo[0].logging.progress)
        for cfg in todo:
            jobs = [t for key, t in trained.items() if key.rpartition("/")[0] == cfg.name]
            run_summary(cfg, jobs, time.perf_counter() - start)


def evaluate_runs(sweep: Sweep) -> list[str]:
    """Evaluate every run whose evaluation is not current (``Record.current``); returns the errors
    (one line per run that failed; the others' results are kept)."""
    from evaluation.runs import mode_label, run_score

    record = Record(sweep)
    record.save()
    todo = []
    for run in sweep.runs:
        overrides = eval_overrides(run.cfg)
        if record.current(run.cfg, overrides):
            log.info("%s: evaluated before with these settings and checkpoints, not again", run.cfg.name)
        else:
            todo.append((run.cfg, overrides))
    errors = []
    for cfg, overrides, outcome in _evaluate(sweep, todo):
        if isinstance(outcome, str):
            errors.append(f"{cfg.name}: {outcome}")
            continue
        record.evaluated(cfg, overrides)
        log.info("%s evaluated: %s", cfg.name, ", ".join(
            f"{mode_label(m)} {run_score(outcome, m, 'return'):.2f}" for m in outcome["modes"]))
    return errors


def evaluate_one(run_dir: str, overrides: list[str], threads: int = 0) -> dict[str, Any]:
    """``eval.py RUN``: evaluate and write the run's report; the results. ``threads``: torch threads
    (0: torch's default)."""
    import torch

    from evaluation.evaluate import evaluate
    from evaluation.report import write_report

    if threads:
        torch.set_num_threads(threads)
    evaluation = evaluate(run_dir, overrides)
    write_report(evaluation.results, RunLayout(Path(run_dir)), evaluation.episodes)
    return evaluation.results


def _evaluate(sweep: Sweep, todo: list[tuple[Config, list[str]]]) -> Iterator[tuple[Config, list[str], Any]]:
    """Each run's results, or its error as a string: in this process without Ray; under Ray, one
    task per run (1 CPU and a whole GPU each when the cluster has a GPU per run, else an equal
    share), as they finish."""
    from launch.jobs import USER_ERRORS

    if not todo:
        return
    if not sweep.ray:
        for cfg, overrides in todo:
            try:
                yield cfg, overrides, evaluate_one(str(cfg.layout.root), overrides)
            except USER_ERRORS as e:
                yield cfg, overrides, f"{type(e).__name__}: {e}"
        return
    import ray

    from launch.ray_trials import init_ray

    init_ray(todo[0][0].ray_address)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    share = 0.0 if not gpus else 1.0 if gpus >= len(todo) else math.floor(1e4 / math.ceil(len(todo) / gpus)) / 1e4
    task = ray.remote(num_cpus=1, num_gpus=share, max_retries=1)(evaluate_one)
    pending = {task.remote(str(cfg.layout.root.resolve()), overrides, 1): (cfg, overrides) for cfg, overrides in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        cfg, overrides = pending.pop(done[0])
        try:
            yield cfg, overrides, ray.get(done[0])
        except ray.exceptions.RayTaskError as e:  # also an instance of the task's own error
            cause = e.cause if isinstance(e.cause, USER_ERRORS) else e
            yield cfg, overrides, f"{type(cause).__name__}: {cause}"


def tabulate(sweep: Sweep) -> list[dict[str, Any]]:
    """The table across runs (module docstring): ``compare_runs`` over the variants (all games, runs
    as the unit), then each game alone when there are several; printed and written under
    ``table/``. Returns the comparisons."""
    from evaluation.runs import compare_runs, print_comparison, write_comparison

    variants = sweep.variants()
    games = sorted({r.game for r in sweep.runs})
    first = sweep.runs[0].cfg
    name = evaluation_name(first, eval_overrides(first))
    comparisons = []
    for game, out in [(None, sweep.table)] + ([(g, sweep.table / g) for g in games] if len(games) > 1 else []):
        groups = {v: [str(r.cfg.layout.root) for r in runs if game is None or r.game == game]
                  for v, runs in variants.items()}
        comp = compare_runs(groups, name=name)
        print_comparison(comp)
        for path in write_comparison(comp, out).values():
            print(f"wrote {path}")
        comparisons.append(comp)
    return comparisons


def describe(sweep: Sweep) -> str:
    """The grid in words: its runs by variant, and where its files go."""
    lines = [f"sweep {sweep.name}: {len(sweep.runs)} runs in {sweep.runs[0].cfg.runs_dir}, "
             f"{'one Ray experiment' if sweep.ray else 'one run after another (ray=false)'}; "
             f"its files in {sweep.root}, Tune's state in {sweep.storage}"]
    for variant, runs in sweep.variants().items():
        lines.append(f"  {variant}: {', '.join(r.cfg.name for r in runs)}")
    return "\n".join(lines)
