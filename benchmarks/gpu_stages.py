"""What ``benchmarks/gpu_suite.sh`` checks and measures on a CUDA machine, most important first:
imports, the CUDA tests (DEVICE_TESTS), then configs/maze.yaml's jobs (``STAGES``). The runner that
runs them, each in a fresh process and optionally within a time budget, is
``benchmarks/gpu_suite.py``.

``--dry-run`` runs every stage on the CPU at tiny sizes (small CNN, 4 envs x 16 steps, 2 members)
through the same code: tests/test_gpu_suite.py runs it, so the suite cannot fail on the GPU for a
reason a CPU could have shown.

Measurements reuse benchmarks/full_run.py (``measure``: one job's steady-state steps/s and the
phase breakdown of one iteration; ``together``: all jobs at once; ``project``: the wall time of the
config's budgets) on ``configs/maze.yaml`` with ``ray=false``. Besides those: the members' update
alone per forward mode x precision with its achieved TFLOP/s (``members_update``), one GRU replay
of the explorer's update (``gru_replay``), a short learning check of the chosen precision against
fp32 with held-out curves side by side (``learning_check``), and last the projected wall time of
configs/maze.yaml against the project's targets (``projection``).

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
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
JSON_NAME, LOG_NAME = "gpu_suite.json", "gpu_suite.log"
CONFIG = ROOT / "configs" / "maze.yaml"
MARGIN_S = 3.0  # kept back from the budget for the last JSON write
TAIL_CHARS = 2000

# Everything runs with ray=false (the jobs themselves are measured, and the machine need not have
# Ray); no held-out evaluation in a measurement.
BASE = ["ray=false", "logging.eval_interval=0", "logging.progress=false"]
GPU = ["device=cuda"]
DRY = ["device=cpu", "network.kind=small", "env.num_envs=4", "ppo.num_steps=16", "ppo.num_minibatches=2",
       "ppo.epochs=1", "explorer.buffer_size=16", "ensemble.size=2"]

# What the stages and tests/test_device.py import, what needs it, and the package that provides it
# (docs/offline-gpu.md lists how to bring them to a node without internet access).
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
    "stable_baselines3": "engine=sb3 and tests/test_sb3_engine.py; not used by the suite",
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


# Every test file with CUDA cases (selected by ``-k cuda``: their names or parameters say cuda).
# None of them imports Ray or SB3, so the suite runs where neither is installed.
DEVICE_TESTS = ["tests/test_device.py", "tests/test_precision.py", "tests/test_recurrent.py", "tests/test_explorer.py",
                "tests/test_episodes.py", "tests/test_members_update.py"]


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


def shares(breakdown: dict[str, float]) -> dict[str, float]:
    """An iteration's phases (full_run.measure's breakdown) as fractions of its total."""
    return {p: seconds / breakdown["total"] for p, seconds in breakdown.items() if p != "total"}


def members_fp32_pop10(ctx: Context) -> None:
    r = measure_one(ctx, "members", None, ["network.precision=fp32"], breakdown=True)
    ctx.save(summary={"members_fp32_pop10_sps": r["sps"], "members_fp32_pop10_peak_gib": r.get("peak_gib"),
                      "members_iteration_share": shares(r["breakdown"])})


def members_fp32_pop1(ctx: Context) -> None:
    r = measure_one(ctx, "members", 1, ["network.precision=fp32"], breakdown=False)
    whole = ctx.previous("members_fp32_pop10").get("members", {}).get("sps")
    gain = whole / r["sps"] if whole else None  # the population against as many single runs, one after another
    ctx.save(summary={"members_fp32_pop1_sps": r["sps"], "population_vs_single_runs": gain})


def explorer_fp32(ctx: Context) -> None:
    """The explorer alone under the config's defaults (fp32 as configs/maze.yaml trains), with the
    breakdown of its iteration (env, inference, transfer, kNN reward, update, other)."""
    r = measure_one(ctx, "explorer", 0, ["network.precision=fp32"], breakdown=True)
    ctx.save(summary={"explorer_fp32_sps": r["sps"], "explorer_fp32_peak_gib": r.get("peak_gib"),
                      "explorer_iteration_share": shares(r["breakdown"])})


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
    heldout_each = {n: c["seconds_each"] for n, c in costs.items()}  # one evaluation per job, side by side
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
                          "heldout_h": heldout_h, "heldout_each_s": heldout_each,
                          "one_by_one_wall_h": one_by_one / 3600})
    else:
        reason = f"no projection: alone speeds missing for {sorted(set(budget) - set(alone))}"
        print(reason)
        ctx.save(budget=budget, alone=alone, heldout=costs, projected_wall_s=None, reason=reason,
                 summary={"together_sps": together, "projected_wall_h": None, "heldout_h": heldout_h,
                          "heldout_each_s": heldout_each})


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


# ---- the members' update, the explorer's GRU replay, the learning check, the projection -------------

def device_sync(device: Any) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timed(fn: Callable[[], Any], seconds: float, sync: Callable[[], None]) -> list[float]:
    """Wall seconds of each call of ``fn`` (the device synchronised before and after), after one
    warm-up call (cuDNN autotuning, the allocator), calling until ``seconds`` have passed (once at least)."""
    fn()
    sync()
    times: list[float] = []
    while not times or sum(times) < seconds:
        begin = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - begin)
    return times


def flop_per_frame(network: Any) -> float:
    """FLOP of one member network's forward and backward pass per frame, as PPO's update computes
    them for each frame of a minibatch (the frames need no gradient), counted on a CPU batch by
    ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, two FLOP per
    multiply-add; element-wise work is not counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    frames = 4
    obs = torch.zeros((frames, 64, 64, 3), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        sum(t.float().sum() for t in network(obs)).backward()
    return counter.get_total_flops() / frames


# The members' update per forward mode and precision, the CUDA default first. Precisions as
# benchmarks/precision_check.py defines them: fp32 (IEEE everywhere), tf32 (fp32 weights, TF32 tensor
# cores), bf16 (the trunk in bf16 autocast, network.tf32=false: every other op IEEE fp32).
FORWARD_MODES = ("vmap", "loop")
UPDATE_PRECISIONS = ("fp32", "tf32", "bf16")


def time_update(ctx: Context, cfg: Any, members: int) -> dict[str, Any]:
    """The members' update of ``cfg`` timed (``members_update``): a fresh learner in this process
    collects one rollout, updates once to warm up, then updates on the same rollout for
    ``--seconds`` (at least once); freed before it returns."""
    import gc

    import torch

    from benchmarks.full_run import job_threads
    from core.runtime import Runtime
    from launch.jobs import Job, build_learner

    job = Job("members", tuple(range(members)))
    torch.set_num_threads(job_threads(cfg, job))
    runtime = Runtime.from_config(cfg)
    cuda = runtime.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    learner = build_learner(cfg, job, runtime)
    try:
        learner.algorithm.set_lr(learner.lr_schedule(0))
        learner.collect()
        times = timed(learner.learn, ctx.seconds, device_sync(runtime.device))
    finally:
        learner.close()
        del learner
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()  # the next combination starts from an empty cache
    return {"runtime": runtime.describe(), "update_s": sum(times) / len(times), "updates": len(times),
            "update_s_each": times, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def members_update(ctx: Context) -> None:
    """The members' PPO update alone (``learn``: GAE, then ppo.epochs x ppo.num_minibatches
    minibatch steps for the whole population), per ``population.forward_mode`` x precision, each
    a fresh learner (``time_update``); a combination that runs out of device memory is recorded and
    the others still measured. Achieved TFLOP/s = FLOP per update / seconds per update, FLOP per
    update = ``flop_per_frame`` x members x frames per update (env.num_envs x ppo.num_steps) x
    ppo.epochs (configs/maze.yaml: 180.1 MFLOP x 10 x 16,384 x 3 = 88.5 TFLOP)."""
    import torch

    from agents.networks import NetworkSpec
    from benchmarks.precision_check import PRECISION_OVERRIDES

    base = ctx.config()
    if base.member.algo != "ppo":
        raise StageFailed(f"the FLOP count assumes PPO members; {CONFIG.name} has member.algo={base.member.algo}")
    members = base.ensemble.size
    frames = members * base.steps_per_update * base.ppo.epochs  # member-frames through forward and backward
    per_frame = flop_per_frame(NetworkSpec.from_config(base.network).build())  # a PPO member's network
    flop = per_frame * frames  # per update
    ctx.save(flop_per_frame=per_frame, flop_per_update=flop,
             flop_formula=f"flop_per_frame x members x env.num_envs x ppo.num_steps x ppo.epochs = {per_frame:.4g} "
                          f"x {members} x {base.env.num_envs} x {base.ppo.num_steps} x {base.ppo.epochs}")
    results: dict[str, Any] = {}
    for mode in FORWARD_MODES:
        for precision in UPDATE_PRECISIONS:
            overrides = [f"population.forward_mode={mode}", *PRECISION_OVERRIDES[precision]]
            entry: dict[str, Any] = {"forward_mode": mode, "precision": precision, "overrides": overrides}
            results[f"{mode}/{precision}"] = entry
            try:
                timing = time_update(ctx, ctx.config(*overrides), members)
            except torch.cuda.OutOfMemoryError as e:
                entry["error"] = f"OutOfMemoryError: {str(e).splitlines()[0]}"
                print(f"members' update, {mode:<4} {precision:<4}: {entry['error']}", flush=True)
                ctx.save(updates=results)
                continue
            entry.update(timing, tflops=flop / timing["update_s"] / 1e12)
            ctx.save(updates=results)
            print(f"members' update, {mode:<4} {precision:<4}: {entry['update_s']:.3f} s ({entry['updates']} timed), "
                  f"{entry['tflops']:.3g} TFLOP/s ({entry['runtime']})", flush=True)
    done = {k: r for k, r in results.items() if "update_s" in r}
    iteration = ctx.previous("members_fp32_pop10").get("members", {}).get("breakdown")
    ctx.save(summary={"members_update_s": {k: r["update_s"] for k, r in done.items()},
                      "members_update_tflops": {k: r["tflops"] for k, r in done.items()},
                      "members_update_tflop": flop / 1e12,
                      "members_update_share_of_iteration": iteration["update"] / iteration["total"] if iteration else None})
    failed = [k for k, r in results.items() if "error" in r]
    if failed:
        raise StageFailed(f"out of device memory: {', '.join(failed)} (the others are measured)")


def gru_replay(ctx: Context) -> None:
    """One replay of the explorer's update at T = ppo.num_steps (512 in configs/maze.yaml): a minibatch
    of whole sequences (env.num_envs / explorer.ppo.num_minibatches of them), forward and backward, in
    the config's fp32: the GRU alone (``networks.gru_sequence``, episode starts as a mask), torch's
    multi-step GRU at the same sizes without resets (cuDNN's fused kernels on CUDA: what a fused call
    would cost), and the whole network (trunk over all T x B frames, GRU, heads). Per update the
    explorer replays explorer.ppo.epochs x num_minibatches of them."""
    import torch

    from agents.networks import NetworkSpec, gru_sequence
    from benchmarks.full_run import job_threads
    from core.runtime import Runtime
    from launch.jobs import Job

    cfg = ctx.config("network.precision=fp32")
    runtime = Runtime.from_config(cfg)
    device, sync = runtime.device, device_sync(runtime.device)
    torch.set_num_threads(job_threads(cfg, Job("explorer")))
    steps, ppo = cfg.ppo.num_steps, cfg.explorer.ppo
    sequences = cfg.env.num_envs // ppo.num_minibatches
    net = NetworkSpec.from_config(cfg.network, recurrent=True).build(runtime.bf16).to(device)
    hidden = net.spec.hidden
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, sequences, hidden, generator=gen).to(device).requires_grad_()
    state = torch.zeros(sequences, hidden, device=device)
    starts = (torch.rand(steps, sequences, generator=gen) < 0.01).float().to(device)  # the cost is the same for any
    obs = torch.randint(0, 256, (steps, sequences, 64, 64, 3), generator=gen, dtype=torch.uint8).to(device)
    fused = torch.nn.GRU(hidden, hidden).to(device)
    g = net.gru

    def gru_alone() -> None:
        x.grad = None
        net.zero_grad(set_to_none=True)
        out, _ = gru_sequence(x, state, starts, [g.weight_ih, g.weight_hh, g.bias_ih, g.bias_hh])
        out.sum().backward()

    def torch_gru() -> None:
        x.grad = None
        fused.zero_grad(set_to_none=True)
        out, _ = fused(x, state[None])
        out.sum().backward()

    def whole() -> None:
        net.zero_grad(set_to_none=True)
        out = net(obs, state, starts)
        (out.logits.sum() + out.values.sum()).backward()

    replays = ppo.epochs * ppo.num_minibatches
    ctx.save(steps=steps, sequences=sequences, hidden=hidden, replays_per_update=replays, runtime=runtime.describe())
    seconds = {}
    for name, fn in (("gru_sequence", gru_alone), ("torch_gru", torch_gru), ("network", whole)):
        times = timed(fn, ctx.seconds, sync)
        seconds[name] = sum(times) / len(times)
        ctx.save(replay_s=seconds, calls={**ctx.result.get("calls", {}), name: len(times)})
        print(f"one replay at T={steps}, {sequences} sequences, forward and backward: {name} "
              f"{1000 * seconds[name]:.1f} ms ({len(times)} timed)", flush=True)
    update = ctx.previous("explorer_fp32").get("explorer", {}).get("breakdown", {}).get("update")
    gru_per_update = replays * seconds["gru_sequence"]
    ctx.save(gru_per_update_s=gru_per_update, summary={
        "gru_replay_ms": {k: 1000 * v for k, v in seconds.items()},
        "gru_share_of_explorer_update": gru_per_update / update if update else None})


# The learning check: members only (the explorer does not change how members learn: it only plays at
# evaluation), the paper config otherwise. GPU: 4 members x 16 updates (262,144 steps each), held-out
# curves every 4 updates on 32 episodes per split (5 points), both runs at once on the one GPU: a
# few minutes. Dry run: DRY's tiny members, 4 updates, a point every 2 updates on one episode.
LEARNING = ["explorer.enabled=false", "logging.eval_splits=[train,test]"]
LEARNING_GPU = ["ensemble.size=4", "ppo.total_steps=262144", "logging.eval_interval=4", "logging.eval_episodes=32"]
LEARNING_DRY = ["ppo.total_steps=256", "logging.eval_interval=2", "logging.eval_episodes=1"]


def chosen_precision(ctx: Context) -> tuple[str, str]:
    """The precision the learning check trains against fp32, and why: ``--precision``, else the one
    of tf32 and bf16 whose members' update was fastest (members_update), else bf16."""
    given = ctx.suite.get("learning_precision")
    if given:
        return given, "--precision"
    best: dict[str, float] = {}  # each precision's fastest update over the forward modes
    for r in ctx.previous("members_update").get("updates", {}).values():
        if r["precision"] != "fp32" and "update_s" in r:
            best[r["precision"]] = min(r["update_s"], best.get(r["precision"], float("inf")))
    if not best:
        return "bf16", "the default: members_update measured nothing"
    name = min(best, key=best.get)
    return name, f"the faster members' update in members_update ({', '.join(f'{p} {s:.3f} s' for p, s in best.items())})"


def learning_run(cfg: Any) -> dict[str, Any]:
    """Train ``cfg``'s run as train.py does (launch.run.train_run), with its job's torch threads."""
    import torch

    from benchmarks.full_run import job_threads
    from launch.jobs import plan
    from launch.run import train_run

    torch.set_num_threads(job_threads(cfg, plan(cfg)[0]))
    return train_run(cfg)


def learning_check(ctx: Context) -> None:
    """The paper config trained in fp32 and in the chosen precision (``chosen_precision``), same
    seeds, both at once on the device (forked like the stages, or spawned where the suite could not
    fork), each with held-out evaluation on train and test levels; then their held-out curves side
    by side, from the members' TensorBoard: per evaluation step each member's return under both
    precisions and the paired differences (chosen - fp32, member by member: same seed)."""
    import multiprocessing

    import numpy as np
    import torch

    from benchmarks.curves import scalars
    from benchmarks.precision_check import PRECISION_OVERRIDES

    chosen, why = chosen_precision(ctx)
    precisions = ("fp32", chosen)
    sizes = LEARNING_DRY if ctx.dry else LEARNING_GPU
    overrides = {p: [*LEARNING, *sizes, *PRECISION_OVERRIDES[p], f"name=learning_{p}"] for p in precisions}
    cfgs = {p: ctx.config(*o) for p, o in overrides.items()}
    forked = (ctx.suite.get("preload") or {}).get("stages") == "forked" and not torch.cuda.is_initialized()
    ctx.save(precision=chosen, chosen_by=why, overrides=overrides, seeds=cfgs["fp32"].member_seeds,
             start="forked" if forked else "spawned")
    print(f"learning check: fp32 against {chosen} ({why}), members {cfgs['fp32'].member_seeds}, "
          f"{cfgs['fp32'].final_step()} steps each", flush=True)
    with multiprocessing.get_context("fork" if forked else "spawn").Pool(len(cfgs)) as pool:
        pending = {p: pool.apply_async(learning_run, (cfg,)) for p, cfg in cfgs.items()}
        runs = {p: r.get() for p, r in pending.items()}
    ctx.save(runs={p: {"wall_s": r["wall_s"], "steps": [a["steps"] for a in r["agents"]]} for p, r in runs.items()})
    members = range(cfgs["fp32"].ensemble.size)
    curves, final = {}, {}
    for split in cfgs["fp32"].logging.eval_splits:
        tag = f"eval/{split}_return"
        points = {p: [dict(scalars(cfgs[p].layout.member(m).tb).get(tag, [])) for m in members] for p in precisions}
        steps = sorted(set.intersection(*(set(s) for p in precisions for s in points[p])))
        if not steps:
            raise StageFailed(f"no held-out {split} curve in both runs' TensorBoard ({tag})")
        rows = []
        for step in steps:
            values = {p: [points[p][m][step] for m in members] for p in precisions}
            differences = np.subtract(values[chosen], values["fp32"])
            rows.append({"step": step, **{p: float(np.mean(values[p])) for p in precisions},
                         "difference": float(differences.mean()),
                         "difference_sd": float(differences.std(ddof=1)) if len(differences) > 1 else None,
                         **{f"{p}_members": values[p] for p in precisions}})
        curves[split] = rows
        final[split] = {k: rows[-1][k] for k in ("step", *precisions, "difference", "difference_sd")}
        print(f"held-out {split} return (mean of {len(members)} members; {chosen} - fp32, paired by seed, "
              "and its sd over seeds):", flush=True)
        for r in rows:
            sd = "no spread: one seed" if r["difference_sd"] is None else f"sd {r['difference_sd']:.2f}"
            print(f"  step {r['step']:>9,}: fp32 {r['fp32']:6.2f}  {chosen} {r[chosen]:6.2f}  "
                  f"difference {r['difference']:+.2f} ({sd})", flush=True)
    ctx.save(curves=curves, summary={"learning_check": {"precision": chosen, "seeds": len(members), "final": final}})


# What the project aims at on one GPU (configs/maze.yaml, population of 10, held-out evaluation included).
TARGETS = {"members_pop10_sps": 35_000.0, "explorer_sps": 12_000.0, "projected_wall_with_heldout_h": 3.0}
PROJECTION_FORMULA = (
    "full_run.project: every job trains side by side at its together speed (side_by_side_fp32) and "
    "spends its held-out seconds (evaluations x the seconds of one, measured side by side) spread evenly "
    "over its training, so job j alone would take T_j = budget_j / together_sps_j + heldout_s_j; when "
    "the first job ends, the other has the fraction 1 - t / T_j of its work left and finishes it at its "
    "alone speed: wall = t_first + (1 - t_first / T_other) x (budget_other / alone_sps_other + heldout_s_other); "
    "heldout_s_j = (1 + updates_j // logging.eval_interval + (1 if updates_j % logging.eval_interval else 0)) "
    "x seconds of one evaluation")


def projection(ctx: Context) -> None:
    """The suite's last word: the projected wall time of configs/maze.yaml (10 x 25M member steps and
    100M explorer steps, side by side on this one GPU, held-out evaluation included) under the
    config's defaults, how it was computed and from which measurements, and the measured speeds
    against the project's targets (``TARGETS``)."""
    from core.config import load_config

    side = ctx.previous("side_by_side_fp32")
    if side.get("projected_wall_with_heldout_s") is None:
        raise StageFailed("side_by_side_fp32 projected nothing: " + (side.get("reason") or "no held-out evaluation"))
    defaults = load_config(CONFIG, ["ray=false", "device=cpu"], name="gpu_suite")  # only its settings are read
    members = ctx.previous("members_fp32_pop10").get("members", {})
    explorer = ctx.previous("explorer_fp32").get("explorer", {})
    measured = {"members_pop10_sps": members.get("sps"), "explorer_sps": explorer.get("sps"),
                "projected_wall_with_heldout_h": side["projected_wall_with_heldout_s"] / 3600}
    targets = {k: {"target": t, "measured": measured[k],
                   "met": None if measured[k] is None else
                   (measured[k] <= t if k.endswith("_h") else measured[k] >= t)} for k, t in TARGETS.items()}
    ctx.save(config=str(CONFIG.relative_to(ROOT)), budget=side["budget"], alone_sps=side["alone"],
             together_sps=side["summary"]["together_sps"],
             heldout={n: {k: c[k] for k in ("evaluations", "seconds_each", "total_s")} for n, c in side["heldout"].items()},
             measured_with={"network.precision": "fp32", "network.tf32": defaults.network.tf32,
                            "network.acting": defaults.network.acting, "env.pipeline": defaults.env.pipeline,
                            "population.forward_mode": defaults.population.forward_mode},
             config_precision=defaults.network.precision, under_config_defaults=defaults.network.precision == "fp32",
             formula=PROJECTION_FORMULA, targets=targets, dry_run=ctx.dry,
             projected_wall_s=side["projected_wall_s"], projected_wall_with_heldout_s=side["projected_wall_with_heldout_s"],
             projected_wall_with_heldout_h=side["projected_wall_with_heldout_s"] / 3600)
    for k, t in targets.items():
        measured = "not measured" if t["measured"] is None else f"{t['measured']:,.4g}"
        print(f"{k}: {measured} against the target {t['target']:,g}: "
              f"{ {True: 'met', False: 'not met', None: 'unknown'}[t['met']] }", flush=True)
    print(f"projected wall time of {CONFIG.name} on this GPU, held-out evaluation included: "
          f"{side['projected_wall_with_heldout_s'] / 3600:.2f} h", flush=True)
    ctx.save(summary={"targets_met": {k: t["met"] for k, t in targets.items()}})


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    run: Callable[[Context], None]
    estimate_s: float  # on the GPU: about what it takes; with --budget-s, skipped when less than this is left
    limit_s: float  # on the GPU: stopped after this (or when --budget-s ends, if sooner)
    dry_estimate_s: float  # the same in a dry run (a 2-core CPU)
    dry_limit_s: float
    needs: tuple[str, ...] = ("imports",)  # skipped if one of these ran and did not pass
    requires: tuple[str, ...] = ()  # skipped unless each of these ran and passed (what it reads)

    def estimate(self, dry: bool) -> float:
        return self.dry_estimate_s if dry else self.estimate_s

    def limit(self, dry: bool) -> float:
        return self.dry_limit_s if dry else self.limit_s


# Priority order: the checks, then the measurements docs/performance.md reports, most telling first;
# the projection last (it only reads the stages before it). GPU estimates: the times on one H200
# (16-core Intel Xeon) of 2026-11-30 (docs/performance.md), plus the held-out evaluation
# side_by_side_fp32 has since gained; those of members_update, gru_replay and learning_check are
# reckoned from those times (6 learners of a rollout and 2-3 updates each; two 4-member runs of
# 16 updates at once), not yet measured.
STAGES = [
    Stage("imports", "imports, CUDA and one procgen step", check_imports, 10, 60, 3, 90, needs=()),
    Stage("tests", f"{' '.join(DEVICE_TESTS)} on CUDA (-k cuda)", run_device_tests, 60, 180, 5, 180),
    Stage("members_fp32_pop10", "members alone, population of 10, fp32", members_fp32_pop10, 70, 120, 4, 120),
    Stage("members_fp32_pop1", "one member alone, fp32", members_fp32_pop1, 25, 60, 4, 120),
    Stage("explorer_fp32", "explorer alone, fp32", explorer_fp32, 30, 100, 4, 120),
    Stage("side_by_side_fp32", "members and explorer side by side, held-out evaluation; projected maze.yaml time",
          side_by_side_fp32, 100, 170, 30, 180),
    Stage("members_update", "members' update (10) per forward mode (vmap, loop) x precision (fp32, tf32, bf16)",
          members_update, 210, 420, 15, 150),
    Stage("gru_replay", "one replay of the explorer's update at T=ppo.num_steps: GRU, torch's GRU, whole network",
          gru_replay, 40, 90, 3, 60),
    Stage("learning_check", "the paper config trained in fp32 and the chosen precision, held-out curves side by side",
          learning_check, 240, 480, 25, 180),
    Stage("bf16", "members (10) and explorer alone, bf16 trunk", bf16, 65, 150, 6, 150),
    Stage("pipeline", "members (10) and explorer alone, the other env.pipeline schedule", pipeline, 85, 170, 8, 150),
    Stage("acting", "members (10) and explorer alone, eager acting (the fp32 stages: auto)", acting, 75, 160, 8, 150),
    Stage("projection", "projected wall time of configs/maze.yaml, held-out evaluation included; the targets",
          projection, 1, 30, 1, 30, requires=("side_by_side_fp32",)),
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
