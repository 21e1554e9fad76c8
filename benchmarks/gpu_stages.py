"""What ``benchmarks/gpu_suite.sh`` checks and measures on a CUDA machine, in priority order
(``STAGES``): the checks, then configs/maze.yaml's jobs under the config's defaults and the
projection of its wall time against the project's targets, then the members' update, the
explorer's GRU replay and a short learning check, then the same jobs under other settings. The
runner that runs them, each in a fresh process and optionally within a time budget, is
``benchmarks/gpu_suite.py``.

The stages live by concern: gpu_context.py (what every stage shares: ``Context``, the config and
the dry run's sizes, timing), gpu_checks.py (imports, CUDA tests), gpu_jobs.py (the jobs,
full_run.py's measurements, the projection), gpu_update.py (members' update, GRU replay, learning
check). This module only orders them.

``--dry-run`` runs every stage on the CPU at tiny sizes (small CNN, 4 envs x 16 steps, 2 members)
through the same code: tests/test_gpu_suite.py runs it, so the suite cannot fail on the GPU for a
reason a CPU could have shown.

Adding a stage: write ``def my_stage(ctx: Context) -> None`` in the module of its concern (save
results with ``ctx.save``; headline numbers in ``ctx.save(summary={...})``), then insert a
``Stage`` into ``STAGES`` at its priority, with a GPU and a dry-run estimate and limit, and the
basis of the GPU estimate.
"""
from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmarks import gpu_checks, gpu_jobs, gpu_update
from benchmarks.gpu_context import TAIL_CHARS, Context, StageFailed


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    run: Callable[[Context], None]
    estimate_s: float  # on the GPU: about what it takes; with --budget-s, skipped when less than this is left
    limit_s: float  # on the GPU: stopped after this (or when --budget-s ends, if sooner)
    dry_estimate_s: float  # the same in a dry run (a 2-core CPU)
    dry_limit_s: float
    basis: str  # where the GPU estimate comes from: measured (which GPU, when) or reckoned (from what)
    needs: tuple[str, ...] = ("imports",)  # skipped if one of these ran and did not pass
    requires: tuple[str, ...] = ()  # skipped unless each of these ran and passed (what it reads)

    def estimate(self, dry: bool) -> float:
        return self.dry_estimate_s if dry else self.estimate_s

    def limit(self, dry: bool) -> float:
        return self.dry_limit_s if dry else self.limit_s


# Priority order, so that a capped run (say --budget-s 540 on one H100 or H200) gets the headline: the checks; the jobs
# under the config's defaults and at once the projection that needs nothing else (the suite's
# headline; its result is the JSON's last key whenever it ran); the members' update matrix, the
# GRU replay and the learning check. Their GPU estimates add up to about 470 s with the preload
# (about 10 s). What follows runs only if time remains: compile, then the before (IEEE fp32) and
# the other settings. Measured times: the stages of that day on one H200 (16-core Intel Xeon),
# 2026-11-30, in fp32 with a 10 s window (docs/performance.md); everything else is reckoned from
# the figures its basis names (the defaults' stages have not run on a GPU yet).
H200 = "measured on one H200 (16-core Xeon), 2026-11-30"
STAGES = [
    Stage("imports", "imports, CUDA and one procgen step", gpu_checks.check_imports, 10, 60, 3, 90,
          basis=f"{H200}: 10 s", needs=()),
    Stage("tests", f"{' '.join(gpu_checks.DEVICE_TESTS)} on CUDA (-k cuda)", gpu_checks.run_device_tests,
          100, 240, 5, 180,
          basis=f"{H200}: 60 s for the test files of that day; reckoned 40 s more for tests/test_members_update.py's "
                "CUDA cases (one compiles a 3-member update)"),
    Stage("members", "members alone, population of 10, the config's defaults; iteration breakdown, auto's forward mode",
          gpu_jobs.members, 45, 120, 4, 120,
          basis="reckoned: 70 s on the H200 in fp32 (2026-11-30; 12.1-17.7 s per iteration: a warm-up, a 10 s "
                "window, a breakdown iteration, the start); under the defaults about 8 s per iteration (the update, "
                "8.8 s of the 12.1, faster in bf16 and TF32), a 5 s window, plus auto's forward-mode measurement"),
    Stage("explorer", "explorer alone, the config's defaults; iteration breakdown", gpu_jobs.explorer, 25, 90, 4, 120,
          basis="reckoned: 30 s on the H200 in fp32 (2026-11-30; 3.1-5.8 s per iteration, captured and eager "
                "acting); with a 5 s window about 4 iterations of 3 s and the start"),
    Stage("side_by_side", "members and explorer side by side, the config's defaults, one held-out evaluation each",
          gpu_jobs.side_by_side, 75, 170, 30, 180,
          basis="reckoned: two spawned jobs (start about 20 s), warm-up and 5 s window as above, one held-out "
                "evaluation per job (members: 10 agents x 100 episodes x 2 splits on 32 envs each, about 4,000 "
                "steps of acting at about 5 ms: 20 s)"),
    Stage("projection", "projected wall time of configs/maze.yaml, held-out evaluation included; the targets",
          gpu_jobs.projection, 1, 30, 1, 30, basis="reckoned: reads the JSON", requires=("side_by_side",)),
    Stage("members_update", "members' update (10) per forward mode (vmap, loop) x precision (fp32, tf32, bf16); "
          "auto's choice per precision", gpu_update.members_update, 100, 240, 15, 150,
          basis="reckoned from the H200's fp32 update (8.8 s): per precision one learner (start, auto's "
                "measurement and a rollout: about 8 s), then per mode a warm-up and one timed update; fp32 "
                "4 x 8.8 s, tf32 and bf16 at about half"),
    Stage("gru_replay", "one replay of the explorer's update at T=ppo.num_steps: GRU, torch's GRU, whole network",
          gpu_update.gru_replay, 15, 60, 3, 60,
          basis="reckoned: three timings of a warm-up and a 2 s window of replays of tens of ms, and the start"),
    Stage("learning_check", "the paper config's members trained in fp32 and the chosen precision, held-out curves "
          "side by side", gpu_update.learning_check, 90, 180, 60, 300,
          basis="reckoned: two 4-member runs at once, 8 updates each at about 6 s (a 4-member rollout and "
                "update, two jobs on the GPU), 3 held-out evaluations of 16 episodes, starts of about 15 s"),
    Stage("members_compile", "members' update with population.compile=true at members_update's fastest combination",
          gpu_update.members_compile, 90, 150, 60, 180,
          basis="reckoned: compilation of the forward, loss and backward (tens of seconds, agents/algorithm.py), "
                "a learner's start and rollout, then three updates", requires=("members_update",)),
    Stage("fp32_reference", "members (10) and explorer alone in IEEE fp32 (the before of the defaults)",
          gpu_jobs.fp32_reference, 75, 170, 8, 150,
          basis="reckoned from the H200 in fp32 with captured acting: members 12.1 s per iteration x 3 and the "
                "start (about 50 s), the explorer as above (25 s)"),
    Stage("members_pop1", "one member alone, the config's defaults", gpu_jobs.members_pop1, 25, 60, 4, 120,
          basis=f"{H200}: 25 s (one member in fp32)"),
    Stage("pipeline", "members (10) and explorer alone, the other env.pipeline schedule", gpu_jobs.pipeline,
          70, 170, 8, 150, basis=f"{H200}: 85 s in fp32 with a 10 s window; reckoned 70 s under the defaults"),
    Stage("acting", "members (10) and explorer alone, eager acting (the defaults: auto, captured on CUDA)",
          gpu_jobs.acting, 75, 160, 8, 150, basis=f"{H200}: 75 s (eager acting in fp32)"),
    Stage("bf16", "members (10) and explorer alone, bf16 trunk with IEEE fp32 elsewhere (tf32=false)",
          gpu_jobs.bf16, 55, 150, 6, 150, basis=f"{H200}: 65 s with a 10 s window; reckoned 55 s with 5 s"),
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
