"""The stages of ``benchmarks/gpu_suite.sh``: one short call on a lent GPU machine that checks the
device (imports, tests/test_device.py on CUDA) and measures what the README's Status still lacks,
most important first, within a fixed budget (8 minutes by default, wheel installs included).

    bash benchmarks/gpu_suite.sh [--dry-run] [--out DIR] [--budget S] [--seconds S] [--only A,B]
                                 [--limit NAME=S] [--wheels DIR] [--site DIR] [--exec-stages]

``suite`` (what gpu_suite.sh runs) installs the wheels of ``--wheels`` (``.whl/``) into ``--site``
(``pip --no-index --no-deps --target``; the GPU machines have no registry and no Ray), then runs
``STAGES`` in order, each in a fresh process in its own session with its own time limit: forked
from the suite after it imported torch and the project but before anything started CUDA, so each
stage starts its own CUDA context without paying torch's import again (``--exec-stages``, or if a
forked process cannot start CUDA: a new interpreter per stage, ``gpu_stages.py stage NAME``). A
stage runs only if its estimate fits in what is left of the budget (else it is skipped, saying
why), and is stopped at ``min(its limit, what is left)``.
After every stage, ``DIR/gpu_suite.json`` is rewritten (atomically) and the stage's output is
appended to ``DIR/gpu_suite.log``: a call killed from outside still returns what it measured. A
stage also saves its partial results as it goes, so a stage stopped at its limit keeps its
finished measurements. Exit status: 0 when no stage failed or timed out (skipped ones are fine).

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

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
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


# ---- the suite ------------------------------------------------------------------------------------
# Stages are forked from this process after it imported torch and the project (PRELOAD) but never
# touched CUDA: each stage is a fresh process that starts its own CUDA context, without paying
# torch's import again (several seconds on a small CPU). Should anything have started CUDA here,
# or with --exec-stages, each stage is a new interpreter instead (``gpu_stages.py stage NAME``).
PRELOAD = ["envs.procgen_vec", "torch", "torch._dynamo", "numpy", "procgen", "benchmarks.full_run", "launch.run",
           "training.population_learner", "training.explorer_learner", "envs.make", "pytest"]


def preload() -> dict[str, str]:
    """Import PRELOAD here, for the forked stages, and build (then close) one procgen batch: its
    first one in a process loads every game's assets (5 s on a 2-core CPU). What fails is left to
    the imports stage to report."""
    import importlib

    errors = {}
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            errors[name] = f"{type(e).__name__}: {e}"
    try:
        from envs.levels import get_split
        from envs.procgen_vec import ProcgenVecEnv

        ProcgenVecEnv("maze", 1, get_split("train")).close()  # its stepping thread ends with it
    except Exception as e:  # noqa: BLE001
        errors["procgen env"] = f"{type(e).__name__}: {e}"
    return errors


def cuda_started_here() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def fork_cannot_use_cuda() -> str | None:
    """Why a process forked from this one could not use CUDA (None: it can, or there is no GPU)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            import torch

            rc = 0 if not torch.cuda.is_available() or float(torch.ones(2, device="cuda").sum()) == 2.0 else 1
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(rc)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            return None if rc == 0 else f"a forked process could not start CUDA (exit {rc})"
        time.sleep(0.05)
    stop_group(pid)
    return "a forked process did not start CUDA within 60 s"


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def result_path(scratch: Path, name: str) -> Path:
    return scratch / f"{name}.result.json"


def install_wheels(wheels: Path, site: Path, env: dict[str, str]) -> dict[str, Any]:
    """pip-install every wheel of ``wheels`` into ``site`` (no index, no dependencies), as the GPU
    machines need; this process and the stages then import from there first."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    info: dict[str, Any] = {"folder": str(wheels), "wheels": [w.name for w in found], "target": str(site)}
    if not found:
        return {**info, "status": "none", "reason": f"no wheels in {wheels}"}
    began = time.monotonic()
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(site), *map(str, found)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        ok, output = done.returncode == 0, (done.stdout + done.stderr)[-TAIL_CHARS:]
    except subprocess.TimeoutExpired:
        ok, output = False, "pip did not finish within 240 s"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # spawned grandchildren (full_run, side by side) too
    sys.path.insert(0, str(site))
    return {**info, "status": "ok" if ok else "failed", "seconds": round(time.monotonic() - began, 1),
            "pythonpath": env["PYTHONPATH"], **({} if ok else {"error": output})}


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.dry = args, args.dry_run
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.json, self.log = self.out / JSON_NAME, self.out / LOG_NAME
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
        self.started = args.started or time.time()
        self.deadline = self.started + args.budget
        self.limits = dict(parse_limit(x) for x in args.limit)
        self.only = [s for s in args.only.split(",") if s] if args.only else []
        unknown = [s for s in [*self.only, *self.limits] if s not in BY_NAME]
        if unknown:
            raise SystemExit(f"gpu_suite: unknown stage(s) {unknown}; stages: {', '.join(BY_NAME)}")
        # torch.cuda.is_available() through NVML: a check in this process must not start CUDA,
        # which forked stages could then not use.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.fork = not args.exec_stages
        self.child: int | subprocess.Popen | None = None
        self.data: dict[str, Any] = {
            "suite": "benchmarks/gpu_suite.sh", "dry_run": self.dry, "out": str(self.out),
            "started_at": datetime.datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "budget_s": args.budget, "seconds_per_measurement": args.seconds, "config": str(CONFIG.relative_to(ROOT)),
            "commit": git_commit(), "python": sys.executable, "done": False, "elapsed_s": 0.0, "machine": None,
            "install": None, "preload": None, "summary": {},
            "stages": [{"name": s.name, "what": s.what, "status": "pending", "estimate_s": s.estimate(self.dry),
                        "limit_s": self.limits.get(s.name, s.limit(self.dry))} for s in STAGES],
        }

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.started, 1)
        summary: dict[str, Any] = {}
        for s in self.data["stages"]:
            summary.update((s.get("result") or {}).get("summary") or {})
        self.data["summary"] = summary
        write_json(self.json, self.data)

    def say(self, line: str) -> None:
        print(f"[gpu_suite {time.time() - self.started:6.1f} s] {line}", flush=True)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        os.chdir(ROOT)
        site = Path(self.args.site) if self.args.site else (self.scratch / "site" if self.dry else Path("/tmp/site"))
        wheels = Path(self.args.wheels) if self.args.wheels else ROOT / ".whl"
        self.write()
        self.data["install"] = install_wheels(wheels, site, self.env)
        self.say(f"wheels: {self.data['install']['status']} ({len(self.data['install']['wheels'])} in {wheels})")
        self.write()
        with self.log.open("w") as log:
            log.write(f"gpu_suite {'dry run ' if self.dry else ''}started {self.data['started_at']}\n"
                      f"install: {json.dumps(self.data['install'])}\n")
        for stage, entry in zip(STAGES, self.data["stages"]):
            self.run_stage(stage, entry)
            self.write()
        self.data["done"] = True
        self.write()
        shutil.rmtree(self.scratch, ignore_errors=True)
        bad = [s["name"] for s in self.data["stages"] if s["status"] in ("failed", "timeout")]
        self.say(f"done in {self.data['elapsed_s']:.0f} s; " + (f"not passed: {', '.join(bad)}" if bad else "no stage failed")
                 + f"; {self.json}")
        return 1 if bad else 0

    def prepare_forking(self) -> None:
        """Once, before the first stage that runs: preload, then check that a forked process can
        start CUDA (else every stage is a new interpreter)."""
        if self.data["preload"] is not None:
            return
        if not self.fork:
            self.data["preload"] = {"stages": "new interpreters (--exec-stages)"}
            return
        began = time.monotonic()
        errors = preload()
        why = "CUDA was started while preloading" if cuda_started_here() else fork_cannot_use_cuda()
        self.fork = why is None
        self.data["preload"] = {"seconds": round(time.monotonic() - began, 1), "errors": errors,
                                "stages": "forked" if self.fork else f"new interpreters: {why}"}
        self.say(f"preloaded in {self.data['preload']['seconds']} s, stages {self.data['preload']['stages']}"
                 + (f"; failed: {errors}" if errors else ""))
        with self.log.open("a") as log:
            log.write(f"preload: {json.dumps(self.data['preload'])}\n")

    def skip_reason(self, stage: Stage, entry: dict[str, Any], left: float) -> str | None:
        status = {s["name"]: s["status"] for s in self.data["stages"]}
        estimate = min(stage.estimate(self.dry), entry["limit_s"])
        blocked = [n for n in stage.needs if status.get(n) in ("failed", "timeout")]
        if self.only and stage.name not in self.only:
            return f"not selected (--only {','.join(self.only)})"
        if blocked:
            return f"needs {', '.join(blocked)}, which did not pass"
        if left < estimate:
            return f"would overrun: takes about {estimate:.0f} s, {max(left, 0.0):.0f} s of the {self.args.budget:.0f} s budget left"
        return None

    def run_stage(self, stage: Stage, entry: dict[str, Any]) -> None:
        left = self.deadline - time.time() - MARGIN_S
        reason = self.skip_reason(stage, entry, left)
        if reason:
            entry.update(status="skipped", reason=reason)
            self.say(f"{stage.name}: skipped, {reason}")
            return
        self.prepare_forking()
        left = self.deadline - time.time() - MARGIN_S
        limit = max(0.1, min(entry["limit_s"], left))
        entry.update(status="running", limit_s=round(limit, 1))
        self.write()
        self.say(f"{stage.name}: {stage.what} (limit {limit:.0f} s)")
        stage_log = self.scratch / f"{stage.name}.log"
        began = time.monotonic()
        rc = self.fork_stage(stage, stage_log, limit) if self.fork else self.exec_stage(stage, stage_log, limit)
        entry["seconds"] = round(time.monotonic() - began, 1)
        text = stage_log.read_text(errors="replace") if stage_log.exists() else ""
        with self.log.open("a") as log:
            log.write(f"\n===== {stage.name}: {stage.what} =====\n{text}")
        path = result_path(self.scratch, stage.name)
        entry["result"] = json.loads(path.read_text()) if path.exists() else {}
        entry["tail"] = text[-TAIL_CHARS:]
        if rc is None:
            entry.update(status="timeout", reason=f"stopped at its {limit:.3g} s limit")
        elif rc == 0:
            entry["status"] = "ok"
        else:
            last = [ln for ln in text.splitlines() if ln.strip()][-1:] or [f"exit status {rc}"]
            entry.update(status="failed", reason=entry["result"].get("error") or last[0])
        if stage.name == "imports" and entry["result"].get("machine"):
            self.data["machine"] = entry["result"]["machine"]
        self.say(f"{stage.name}: {entry['status']} in {entry['seconds']:.1f} s"
                 + (f" ({entry['reason']})" if entry.get("reason") else ""))

    def fork_stage(self, stage: Stage, log: Path, limit: float) -> int | None:
        """The stage in a forked child, its own session; its exit status, None if stopped at ``limit``."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the stage's process
            rc = 1
            try:
                os.setsid()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                rc = run_stage_here(stage.name, self.scratch, self.json, self.dry, self.args.seconds)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        self.child = pid
        end = time.monotonic() + limit
        rc: int | None = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > end:
                stop_group(pid)
                break
            time.sleep(0.1)
        kill_group(pid)  # whatever the stage left behind (a multiprocessing manager, say)
        self.child = None
        return rc

    def exec_stage(self, stage: Stage, log: Path, limit: float) -> int | None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "stage", stage.name, "--scratch", str(self.scratch),
               "--suite-json", str(self.json), "--seconds", str(self.args.seconds)] + (["--dry-run"] if self.dry else [])
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.child = proc
            try:
                rc: int | None = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                stop_group(proc.pid)
                rc = None
            kill_group(proc.pid)
            self.child = None
        return rc

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.child is not None:
            stop_group(self.child if isinstance(self.child, int) else self.child.pid)
        for s in self.data["stages"]:
            if s["status"] == "running":
                s.update(status="timeout", reason=f"the suite was stopped (signal {signum})")
        self.write()
        self.say(f"stopped by signal {signum}; {self.json}")
        os._exit(128 + signum)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(pid: int) -> None:
    """End a stage's process group (its session): SIGTERM, SIGKILL after 5 s; reap the stage."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)  # not yet its own group
            except ProcessLookupError:
                pass
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # already reaped (a Popen's wait)
                return
            if done:
                return
            time.sleep(0.1)


def parse_limit(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if not seconds:
        raise SystemExit(f"gpu_suite: --limit takes NAME=SECONDS, got {text!r}")
    return name, float(seconds)


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    suite = sub.add_parser("suite", help="run every stage (what gpu_suite.sh does)")
    suite.add_argument("--out", required=True, help="where gpu_suite.json and gpu_suite.log go")
    suite.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes")
    suite.add_argument("--budget", type=float, default=480.0, help="seconds for the whole call, installs included")
    suite.add_argument("--started", type=float, help="when the call began (epoch seconds; gpu_suite.sh passes it)")
    suite.add_argument("--seconds", type=float, help="timed window per measurement (10 on the GPU, 0.05 dry)")
    suite.add_argument("--only", help="comma-separated stages to run; the others are skipped")
    suite.add_argument("--limit", action="append", default=[], help="NAME=SECONDS: another time limit for a stage")
    suite.add_argument("--wheels", help="folder of wheels to install first (default: .whl/)")
    suite.add_argument("--site", help="where they are installed (default: /tmp/site; a scratch folder when dry)")
    suite.add_argument("--exec-stages", action="store_true", help="each stage a new interpreter instead of a fork")
    one = sub.add_parser("stage", help="run one stage in this process (the suite's --exec-stages calls this)")
    one.add_argument("name", choices=list(BY_NAME))
    one.add_argument("--scratch", required=True)
    one.add_argument("--suite-json", default="")
    one.add_argument("--seconds", type=float, default=10.0)
    one.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.command == "stage":
        return run_stage_here(args.name, Path(args.scratch), Path(args.suite_json), args.dry_run, args.seconds)
    if args.seconds is None:
        args.seconds = 0.05 if args.dry_run else 10.0
    return Suite(args).run()


if __name__ == "__main__":
    sys.exit(main())
