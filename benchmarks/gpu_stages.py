"""What ``benchmarks/gpu_suite.sh`` checks and measures on a lent GPU machine, most important first:
imports, the CUDA tests (DEVICE_TESTS), then configs/maze.yaml's jobs (``STAGES``). The suite that
runs them within a budget, each in a fresh process, is ``benchmarks/gpu_suite.py``.

``--dry-run`` runs every stage on the CPU at tiny sizes (small CNN, 4 envs x 16 steps, 2 members)
through the same code: tests/test_gpu_suite.py runs it, so the suite cannot fail on the GPU for a
reason a CPU could have shown.

Measurements reuse benchmarks/full_run.py (``measure``: one job's steady-state steps/s and the
phase breakdown of one iteration; ``together``: all jobs at once; ``project``: the wall time of the
config's budgets) on ``configs/maze.yaml`` with ``ray=false``.

Adding a stage: write ``def my_stage(ctx: Context) -> None`` (save results with ``ctx.save``; put
headline numbers in ``ctx.save(summary={...})``), then insert a ``Stage`` into ``STAGES`` at its
priority, with a GPU and a dry-run estimate and limit.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
JSON_NAME, LOG_NAME = "gpu_suite.json", "gpu_suite.log"
CONFIG = ROOT / "configs" / "maze.yaml"
MARGIN_S = 3.0  # kept back from the budget for the last JSON write
TAIL_CHARS = 2000

# Everything runs without Ray (the GPU machines have none); no held-out evaluation in a measurement.
BASE = ["ray=false", "logging.eval_interval=0", "logging.progress=false"]
GPU = ["device=cuda"]
DRY = ["device=cpu", "network.kind=small", "env.num_envs=4", "ppo.num_steps=16", "ppo.num_minibatches=2",
       "ppo.epochs=1", "explorer.buffer_size=16", "ensemble.size=2"]

# What the stages and tests/test_device.py import, and what needs it; the wheel to carry if missing.
REQUIRED = {
    "torch": "everything (the machine's own)",
    "numpy": "everything (the machine's own)",
    "procgen": "the envs (wheel procgen-mirror)",
    "gym3": "procgen (wheel gym3)",
    "gym": "procgen's registration (wheel gym)",
    "gym_notices": "gym, envs/procgen_vec.py (wheel gym-notices)",
    "cffi": "gym3 (wheel cffi)",
    "pycparser": "cffi (wheel pycparser)",
    "gymnasium": "envs/procgen_vec.py (wheel gymnasium)",
    "farama_notifications": "gymnasium (wheel farama-notifications)",
    "omegaconf": "core/config.py (wheel omegaconf)",
    "yaml": "omegaconf (pyyaml)",
    "cloudpickle": "gym, gymnasium (cloudpickle)",
    "imageio": "gym3 (imageio)",
    "tensorboard": "training curves: torch.utils.tensorboard (tensorboard)",
    "tqdm": "progress bars (tqdm)",
    "rich": "the job table (rich)",
    "pytest": "the tests stage (pytest)",
}
OPTIONAL = {
    "stable_baselines3": "engine=sb3 and tests/test_sb3_engine.py; not used here",
    "ray": "ray=true and the Ray tests; the suite runs ray=false",
    "av": "eval.py --video (PyAV)",
    "matplotlib": "eval.py's results.png",
    "scipy": "eval.py's statistics",
}
PROJECT = ["train", "benchmarks.full_run", "tests.test_device"]  # the modules the stages run


# ---- inside a stage's process ----------------------------------------------------------------------

class StageFailed(RuntimeError):
    """A stage's check failed; its message is the stage's reason."""


class Context:
    """What a stage function gets: the mode, its scratch folder, the suite's results so far, and
    ``save`` for its own results (written at once, so a stage stopped at its limit keeps them)."""

    def __init__(self, name: str, scratch: Path, suite: dict[str, Any], dry: bool, seconds: float) -> None:
        self.name, self.scratch, self.suite, self.dry, self.seconds = name, scratch, suite, dry, seconds
        self.result: dict[str, Any] = {}

    def save(self, **items: Any) -> None:
        self.result.update(items)
        write_json(result_path(self.scratch, self.name), self.result)

    def previous(self, name: str) -> dict[str, Any]:
        """An earlier stage's result ({} if it did not run or saved nothing)."""
        for s in self.suite.get("stages", []):
            if s["name"] == name:
                return s.get("result") or {}
        return {}

    def config(self, *overrides: str):
        from core.config import load_config

        return load_config(CONFIG, [*BASE, *(DRY if self.dry else GPU), f"runs_dir={self.scratch / 'runs'}",
                                    *overrides], name="gpu_suite")


def check_imports(ctx: Context) -> None:
    """Every module the stages and tests/test_device.py import, the project's own modules, CUDA, and
    one procgen step (procgen's wheels against this machine's numpy)."""
    import importlib
    import importlib.util
    from importlib import metadata

    try:
        import envs.procgen_vec  # noqa: F401  (first: it silences gym's import banner)
    except Exception:  # noqa: BLE001  (reported below)
        pass

    def probe(name: str) -> dict[str, Any]:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001  (a broken install raises anything)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = None
        return {"ok": True, "version": None if version is None else str(version),
                "path": str(getattr(module, "__file__", "") or "")}

    def present(name: str) -> dict[str, Any]:  # optional ones: found, not imported (Ray's import is slow)
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        return {"ok": True, "path": spec.origin} if spec else {"ok": False, "error": "not installed"}

    required = {name: probe(name) for name in REQUIRED}
    optional = {name: present(name) for name in OPTIONAL}
    project = {name: probe(name) for name in PROJECT}
    missing = [f"{n} (needed by {REQUIRED[n]}): {r['error']}" for n, r in required.items() if not r["ok"]]
    missing += [f"project module {n}: {r['error']}" for n, r in project.items() if not r["ok"]]
    absent = [f"{n} ({OPTIONAL[n]})" for n, r in optional.items() if not r["ok"]]
    ctx.save(required=required, optional=optional, project=project, missing=missing, optional_missing=absent)
    for line in missing:
        print(f"MISSING {line}")
    for line in absent:
        print(f"absent (optional) {line}")
    import torch

    cuda: dict[str, Any] = {"available": torch.cuda.is_available(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        props = torch.cuda.get_device_properties(0)
        x = torch.randn(1024, 1024, device="cuda")
        torch.cuda.synchronize()
        cuda.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                    matmul_ok=bool(torch.isfinite(x @ x).all()))
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p' | head -1"], capture_output=True,
                         text=True).stdout.strip() or platform.processor()
    machine = {"gpu": cuda.get("name"), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    ctx.save(cuda=cuda, machine=machine)
    print(f"python {machine['python']}, torch {cuda['torch']} (CUDA {cuda['torch_cuda']}), "
          f"GPU: {cuda.get('name', 'none')}, CPU: {cpu}, {machine['cores']} cores")
    if not missing:
        import numpy as np

        from envs.make import make_env

        cfg = ctx.config()
        env = make_env(cfg.env, 2, "train", rand_seed=0)
        try:
            obs = env.reset(seed=0)[0]
            obs = env.step(np.zeros(2, dtype=np.int64))[0]
        finally:
            env.close()
        ctx.save(procgen_step={"ok": True, "obs": list(obs.shape), "numpy": np.__version__})
    ctx.save(summary={"missing": missing, "gpu": cuda.get("name")})
    if missing:
        raise StageFailed("missing: " + "; ".join(missing))
    if not ctx.dry and not cuda["available"]:
        raise StageFailed("torch sees no CUDA device")


class TestRecorder:
    """A pytest plugin that saves every test's outcome as it is reported."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.outcomes = ctx, {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":  # a skip or error in setup or teardown
            outcome = "error" if report.failed and report.when != "call" else report.outcome
            if report.nodeid not in sum(self.outcomes.values(), []):
                self.outcomes.setdefault(outcome, []).append(report.nodeid)
                self.ctx.save(outcomes=self.outcomes)


# The test files whose CUDA tests (``-k cuda``: "cuda" in their ids) the tests stage runs. Only
# files whose imports need no Ray or SB3 (the GPU machines have neither).
# Every test file with CUDA cases (selected by ``-k cuda``: their names or parameters say cuda).
DEVICE_TESTS = ["tests/test_device.py", "tests/test_precision.py", "tests/test_recurrent.py", "tests/test_explorer.py",
                "tests/test_episodes.py"]


def run_device_tests(ctx: Context) -> None:
    """DEVICE_TESTS in this process: on the GPU their CUDA tests (``-k cuda``); in a dry run one CPU
    test and the CUDA ones (skipped without CUDA, but collected). Saved test by test."""
    import pytest

    select = "cuda or (cpu and knn)" if ctx.dry else "cuda"
    args = [*DEVICE_TESTS, "-v", "-p", "no:cacheprovider", "-k", select]
    ctx.save(command="pytest " + " ".join(args), outcomes={})
    recorder = TestRecorder(ctx)
    rc = int(pytest.main(args, plugins=[recorder]))
    counts = {k: len(v) for k, v in recorder.outcomes.items()}
    failed = recorder.outcomes.get("failed", []) + recorder.outcomes.get("error", [])
    ctx.save(rc=rc, counts=counts, failed=failed, summary={"tests": counts, "tests_failed": failed})
    if rc != 0 or not counts.get("passed"):
        hint = "" if counts.get("passed") or failed else " (nothing passed: does torch see the GPU?)"
        raise StageFailed(f"pytest exited {rc} with {counts}{hint}" + (f"; failed: {', '.join(failed)}" if failed else ""))


def measure_one(ctx: Context, label: str, members: int | None, overrides: list[str], breakdown: bool) -> dict[str, Any]:
    """One job of configs/maze.yaml alone in this process (full_run.measure): ``members`` reward
    agents (None: all of the config's), or the explorer (0)."""
    import torch

    from benchmarks import full_run
    from launch.jobs import Job

    cfg = ctx.config(*overrides)
    if members == 0:
        job = Job("explorer")
    else:
        job = Job("members", tuple(range(members or cfg.ensemble.size)))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = full_run.measure(cfg, job, ctx.seconds, breakdown=breakdown)
    result["overrides"] = list(overrides)
    ctx.save(**{label: result})
    share = ""
    if "breakdown" in result:
        b = result["breakdown"]
        share = "; " + ", ".join(f"{p} {100 * b[p] / b['total']:.0f}%" for p in b if p != "total")
    print(f"{label}: {result['job']} {result['sps']:,.0f} steps/s, {result['iteration_s']:.2f} s per iteration "
          f"({result['iterations']} timed, {result['slices']} slice(s), {result['runtime']}){share}", flush=True)
    return result


def members_fp32_pop10(ctx: Context) -> None:
    r = measure_one(ctx, "members", None, ["network.precision=fp32"], breakdown=True)
    ctx.save(summary={"members_fp32_pop10_sps": r["sps"], "members_fp32_pop10_peak_gib": r.get("peak_gib")})


def members_fp32_pop1(ctx: Context) -> None:
    r = measure_one(ctx, "members", 1, ["network.precision=fp32"], breakdown=False)
    whole = ctx.previous("members_fp32_pop10").get("members", {}).get("sps")
    gain = whole / r["sps"] if whole else None  # the population against as many single runs, one after another
    ctx.save(summary={"members_fp32_pop1_sps": r["sps"], "population_vs_single_runs": gain})


def explorer_fp32(ctx: Context) -> None:
    r = measure_one(ctx, "explorer", 0, ["network.precision=fp32"], breakdown=True)
    ctx.save(summary={"explorer_fp32_sps": r["sps"], "explorer_fp32_peak_gib": r.get("peak_gib")})


def side_by_side_fp32(ctx: Context) -> None:
    """The config's jobs all at once on the device (full_run.together, each in a fresh process), then
    one held-out evaluation per job (side by side too), and the projected wall time of
    configs/maze.yaml's budgets from these and the alone speeds, without and with held-out evaluation
    (its logging.eval_interval, eval_episodes and eval_splits; a dry run plays 4 episodes on one split)."""
    from benchmarks import full_run
    from core.config import load_config
    from launch.jobs import plan
    from launch.progress import duration

    # BASE turns held-out evaluation off for the measurements; its schedule is configs/maze.yaml's.
    maze_logging = load_config(CONFIG, ["ray=false", "device=cpu"], name="gpu_suite").logging
    schedule = [f"logging.eval_interval={maze_logging.eval_interval}"]
    if ctx.dry:
        schedule += ["logging.eval_episodes=4", "logging.eval_splits=[test]"]
    cfg = ctx.config("network.precision=fp32", *schedule)
    jobs = plan(cfg)
    both = full_run.together(cfg, jobs, ctx.seconds, heldout=cfg.logging.eval_interval > 0)
    together = {r["job"]: r["sps"] for r in both}
    ctx.save(together=both)
    alone = {}
    for stage in ("members_fp32_pop10", "explorer_fp32"):
        for r in ctx.previous(stage).values():
            if isinstance(r, dict) and "job" in r and "sps" in r:
                alone[r["job"]] = r["sps"]
    for name, sps in together.items():
        print(f"together  {name:<14} {sps:>9,.0f} steps/s" +
              (f" ({sps / alone[name]:.2f}x alone)" if name in alone else ""), flush=True)
    costs = full_run.heldout_costs(cfg, jobs, {r["job"]: r["heldout"]["seconds"] for r in both if "heldout" in r})
    log = cfg.logging
    print(f"held-out evaluation of {CONFIG.name} (every {log.eval_interval} updates, {log.eval_episodes} episodes "
          f"per agent on {', '.join(log.eval_splits)}; one per job measured side by side):", flush=True)
    for name, c in costs.items():
        print(f"  {name:<14} {c['evaluations']:>5} x {c['seconds_each']:.1f} s = {duration(c['total_s'])}", flush=True)
    heldout_h = {n: c["total_s"] / 3600 for n, c in costs.items()}
    budget = {j.name: full_run.job_budget(cfg, j) for j in jobs}
    if set(alone) >= set(budget):
        wall = full_run.project(budget, alone, together)
        with_heldout = full_run.project(budget, alone, together, {n: c["total_s"] for n, c in costs.items()})
        one_by_one = sum(budget[n] / alone[n] for n in budget)
        print(f"projected wall time of {CONFIG.name}: {duration(wall)} side by side ({wall / 3600:.2f} h); "
              f"{duration(one_by_one)} one job after another (training only); with held-out evaluation "
              f"{duration(with_heldout)} side by side ({with_heldout / 3600:.2f} h)", flush=True)
        ctx.save(budget=budget, alone=alone, heldout=costs, projected_wall_s=wall,
                 projected_wall_with_heldout_s=with_heldout, one_by_one_wall_s=one_by_one,
                 summary={"together_sps": together, "together_vs_alone": {n: together[n] / alone[n] for n in together},
                          "projected_wall_h": wall / 3600, "projected_wall_with_heldout_h": with_heldout / 3600,
                          "heldout_h": heldout_h, "one_by_one_wall_h": one_by_one / 3600})
    else:
        reason = f"no projection: alone speeds missing for {sorted(set(budget) - set(alone))}"
        print(reason)
        ctx.save(budget=budget, alone=alone, heldout=costs, projected_wall_s=None, reason=reason,
                 summary={"together_sps": together, "projected_wall_h": None, "heldout_h": heldout_h})


def compare(ctx: Context, overrides: list[str], label: str, baseline: dict[str, str]) -> dict[str, Any]:
    """Members (the whole population) and the explorer measured under ``overrides``, each against
    the same job's earlier measurement (``baseline``: job kind -> stage name)."""
    ratios = {}
    for kind, members in (("members", None), ("explorer", 0)):
        r = measure_one(ctx, kind, members, overrides, breakdown=label in ("pipeline", "acting"))
        before = ctx.previous(baseline[kind]).get(kind, {}).get("sps")
        ratios[kind] = r["sps"] / before if before else None
        ctx.save(ratios=ratios)
    return ratios


def bf16(ctx: Context) -> None:
    """The trunk in bf16 autocast (network.precision=bf16) against the fp32 stages."""
    ratios = compare(ctx, ["network.precision=bf16"], "bf16",
                     {"members": "members_fp32_pop10", "explorer": "explorer_fp32"})
    ctx.save(summary={"bf16_vs_fp32": ratios})


def pipeline(ctx: Context) -> None:
    """Rollouts serial against overlapped (env.pipeline): the fp32 stages ran ``auto`` (serial; a
    config may say otherwise); this stage measures the other schedule, so both are in the JSON."""
    ran = ctx.previous("members_fp32_pop10").get("members", {}).get("slices")
    other = "serial" if ran == 2 else "overlap"
    ratios = compare(ctx, [f"env.pipeline={other}", "network.precision=fp32"], "pipeline",
                     {"members": "members_fp32_pop10", "explorer": "explorer_fp32"})
    # overlap / serial, whichever of the two this stage measured
    speedup = {k: (None if v is None else (1 / v if other == "serial" else v)) for k, v in ratios.items()}
    ctx.save(measured=other, summary={"overlap_vs_serial": speedup})


def acting(ctx: Context) -> None:
    """Acting eager against captured as CUDA graphs (network.acting): the fp32 stages ran ``auto``
    (captured on CUDA, eager on a CPU); this stage measures eager, so both are in the JSON. A CPU
    has no graphs: the dry run measures eager twice, through the same code."""
    ran = ctx.previous("members_fp32_pop10").get("members", {}).get("runtime", "")
    captured_before = "CUDA graphs" in ran
    ratios = compare(ctx, ["network.acting=eager", "network.precision=fp32"], "acting",
                     {"members": "members_fp32_pop10", "explorer": "explorer_fp32"})
    # captured / eager, where the fp32 stages were captured
    speedup = {k: (1 / v if v else None) for k, v in ratios.items()} if captured_before else None
    ctx.save(captured_before=captured_before, summary={"captured_vs_eager": speedup})


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    run: Callable[[Context], None]
    estimate_s: float  # on the GPU: about what it takes; skipped when less than this is left
    limit_s: float  # on the GPU: stopped after this (or when the budget ends, if sooner)
    dry_estimate_s: float  # the same in a dry run (a 2-core CPU)
    dry_limit_s: float
    needs: tuple[str, ...] = ("imports",)  # skipped if one of these ran and did not pass

    def estimate(self, dry: bool) -> float:
        return self.dry_estimate_s if dry else self.estimate_s

    def limit(self, dry: bool) -> float:
        return self.dry_limit_s if dry else self.limit_s


# Priority order: what the README's Status most needs first. GPU estimates: the H200's times on
# 2026-11-30 (README Performance), plus the held-out evaluation side_by_side_fp32 has since gained.
STAGES = [
    Stage("imports", "imports, CUDA and one procgen step", check_imports, 10, 60, 3, 90, needs=()),
    Stage("tests", f"{' '.join(DEVICE_TESTS)} on CUDA (-k cuda)", run_device_tests, 60, 180, 5, 180),
    Stage("members_fp32_pop10", "members alone, population of 10, fp32", members_fp32_pop10, 70, 120, 4, 120),
    Stage("members_fp32_pop1", "one member alone, fp32", members_fp32_pop1, 25, 60, 4, 120),
    Stage("explorer_fp32", "explorer alone, fp32", explorer_fp32, 30, 100, 4, 120),
    Stage("side_by_side_fp32", "members and explorer side by side, held-out evaluation; projected maze.yaml time",
          side_by_side_fp32, 100, 170, 30, 180),
    Stage("bf16", "members (10) and explorer alone, bf16 trunk", bf16, 65, 150, 6, 150),
    Stage("pipeline", "members (10) and explorer alone, the other env.pipeline schedule", pipeline, 85, 170, 8, 150),
    Stage("acting", "members (10) and explorer alone, eager acting (the fp32 stages: auto)", acting, 75, 160, 8, 150),
]
BY_NAME = {s.name: s for s in STAGES}


def run_stage_here(name: str, scratch: Path, suite_json: Path, dry: bool, seconds: float) -> int:
    """Run stage ``name`` in this process; its exit status (a failure is saved as its ``error``)."""
    suite = json.loads(suite_json.read_text()) if suite_json.is_file() else {}
    ctx = Context(name, scratch, suite, dry, seconds)
    try:
        BY_NAME[name].run(ctx)
    except StageFailed as e:
        ctx.save(error=str(e))
        print(f"stage {name} failed: {e}", file=sys.stderr)
        return 1
    except BaseException as e:  # noqa: BLE001  (recorded, then the process fails)
        ctx.save(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-TAIL_CHARS:])
        traceback.print_exc()
        return 1
    return 0

def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)

def result_path(scratch: Path, name: str) -> Path:
    return scratch / f"{name}.result.json"
