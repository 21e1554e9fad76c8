"""The one training loop: a learner composed with TensorBoard, held-out curves, checkpoints,
progress and the trial reporter.

One iteration, read top to bottom in ``train``: the learner collects and updates
(``iterate``) -> metrics to TensorBoard -> held-out evaluation every ``logging.eval_interval``
updates -> checkpoint every ``logging.checkpoint_interval`` -> progress and report -> the
callbacks installed in ``training.callbacks.after_update``. The same loop trains native
populations, the explorer and the SB3 and RLlib engines.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from core.config import Config
from core.runtime import Runtime
from core.sections import LoggingConfig
from training import callbacks, checkpointing
from training.heldout import Heldout, evaluate_heldout
from training.interrupt import DeferredInterrupt
from training.learner import IterationResult, Learner, NonFiniteError

# The loss terms every engine reports; explained variance is left out (SB3 reports NaN for
# constant returns, which is no fault).
LOSS_TERMS = ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm")


class Progress:
    """What the loop tells whoever watches: a progress bar (launch/progress.py) or nothing."""

    def advance(self, steps: int, sps: float, mean_return: float | None) -> None:
        pass


def train(learner: Learner, cfg: Config, runtime: Runtime, progress: Progress = Progress(),
          on_iteration: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``learner`` until its step budget. Ctrl-C finishes and checkpoints the iteration in
    flight, then raises ``KeyboardInterrupt`` (``DeferredInterrupt``).

    ``on_iteration`` receives, after every update, the agents' steps, SPS, mean episodic return,
    held-out returns and whether a checkpoint was written (Ray Tune reports these). Then every
    callback in ``training.callbacks.after_update`` is called with ``learner``.
    """
    log = cfg.logging
    # purge_step: a run resumed from a checkpoint at step S hides the events that an interrupted
    # run logged after S, so curves have neither gaps nor repeated steps. A job starting at step 0
    # (new, or killed before its first checkpoint) purges from 0: its held-out point at step 0 is
    # logged again.
    purge = learner.global_step + 1 if learner.global_step else 0
    writers = [SummaryWriter(a.tb, purge_step=purge) for a in learner.agents]
    members = [a.member for a in learner.agents if a.member is not None]
    # A population of several members also gets summary curves across its members.
    summary = SummaryWriter(cfg.layout.population_tb(members), purge_step=purge) if len(members) > 1 else None
    last_heldout: dict[str, list[float]] = {}
    heldout_clock = HeldoutClock()

    def run_heldout() -> None:
        nonlocal last_heldout
        with heldout_clock:
            pop, seeds = learner.acting_population()
            heldout = evaluate_heldout(cfg, pop, seeds, learner.update, runtime.device)
        log_heldout(writers, heldout, learner.global_step)
        last_heldout = {split: h.returns.mean(1).tolist() for split, h in heldout.items()}

    try:
        with DeferredInterrupt() as interrupt:
            if log.eval_interval and learner.update == 0:
                run_heldout()  # the untrained policy: where every held-out curve starts
            while learner.update < learner.num_updates:
                start = time.perf_counter()
                result = learner.iterate()
                elapsed = time.perf_counter() - start
                check_finite(learner, result)
                heldout_clock.training += elapsed
                sps = learner.steps_per_update * len(writers) / elapsed
                step = learner.global_step
                log_iteration(writers, result, sps, step)
                if summary is not None:
                    log_population(summary, result, sps, step, len(writers))
                last = learner.update == learner.num_updates
                if log.eval_interval and (learner.update % log.eval_interval == 0 or last):
                    run_heldout()
                    heldout_clock.warn_if_dominant(learner.agents[0].name, log)
                saved = learner.update % log.checkpoint_interval == 0 or last or interrupt.requested
                if saved:
                    flush(writers, summary)  # a process killed after the save has its curves up to it
                    checkpointing.save(learner, last_heldout)
                mean_return = result.episodes.means("charts/episodic_return")
                progress.advance(learner.steps_per_update, sps, mean_return)
                if on_iteration is not None:
                    on_iteration({"steps": step, "sps": sps, "episodic_return": mean_return,
                                  "heldout": last_heldout, "checkpoint": saved, "done": last})
                if interrupt.requested:  # also a Ctrl-C that came after this iteration's save decision
                    if not saved:
                        flush(writers, summary)
                        checkpointing.save(learner, last_heldout)
                    raise KeyboardInterrupt
                for callback in callbacks.after_update:
                    callback(learner)
    finally:
        for w in writers + ([summary] if summary else []):
            w.close()
    return {"agents": [a.name for a in learner.agents], "steps": learner.global_step,
            "heldout": last_heldout}


def flush(writers: list[SummaryWriter], summary: SummaryWriter | None) -> None:
    for w in writers + ([summary] if summary else []):
        w.flush()


def check_finite(learner: Learner, result: IterationResult) -> None:
    """Stop the run, before the update is logged or checkpointed, at the first agent whose loss
    terms or parameters are not finite: training on would only spread NaN, and the newest
    checkpoint stays the last good state."""
    finite = learner.finite_parameters()
    for i, agent in enumerate(learner.agents):
        bad = [k for k in LOSS_TERMS if k in result.metrics and not np.isfinite(result.metrics[k][i])]
        bad += [] if finite[i] else ["parameters"]
        if bad:
            raise NonFiniteError.of(learner, i, ", ".join(bad))


class HeldoutClock:
    """Wall time spent in held-out evaluation against training, to warn when curves cost more than
    the training they describe. ``logging.eval_interval`` counts updates, so a small
    ``ppo.num_steps`` makes evaluations frequent while each still plays whole episodes."""

    def __init__(self) -> None:
        self.training = 0.0
        self.heldout = 0.0
        self.warned = False
        self._start = 0.0

    def __enter__(self) -> "HeldoutClock":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.heldout += time.perf_counter() - self._start

    def warn_if_dominant(self, job: str, log: LoggingConfig) -> None:
        if self.warned or self.heldout <= self.training:
            return
        self.warned = True
        print(f"warning: {job}: held-out evaluation has taken {self.heldout:.0f} s against "
              f"{self.training:.0f} s of training; evaluate less often (logging.eval_interval="
              f"{log.eval_interval} updates) or on fewer episodes (logging.eval_episodes="
              f"{log.eval_episodes})", flush=True)


def log_iteration(writers: list[SummaryWriter], result: IterationResult, sps: float, step: int) -> None:
    for i, w in enumerate(writers):
        for k, v in result.metrics.items():
            w.add_scalar(k if "/" in k else f"losses/{k}", float(v[i]), step)
        w.add_scalar("charts/SPS", sps / len(writers), step)
        w.add_scalar("charts/learning_rate", result.lr, step)
        for name in result.episodes.values:
            value = result.episodes.means(name, i)
            if value is not None:
                w.add_scalar(name, value, step)


def log_population(w: SummaryWriter, result: IterationResult, sps: float, step: int, size: int) -> None:
    """Aggregate SPS and the spread of the members' curves (mean, min, max over members)."""
    w.add_scalar("charts/SPS", sps, step)
    per_member = [result.episodes.means("charts/episodic_return", i) for i in range(size)]
    returns = np.array([r for r in per_member if r is not None])
    if len(returns):
        for name, fn in (("mean", np.mean), ("min", np.min), ("max", np.max)):
            w.add_scalar(f"population/episodic_return_{name}", float(fn(returns)), step)
    for k in ("value_loss", "approx_kl", "grad_norm"):
        if k in result.metrics:
            w.add_scalar(f"population/{k}_max", float(result.metrics[k].max()), step)


def log_heldout(writers: list[SummaryWriter], heldout: dict[str, Heldout], step: int) -> None:
    for split, h in heldout.items():
        for i, w in enumerate(writers):
            w.add_scalar(f"eval/{split}_return", float(h.returns[i].mean()), step)
            w.add_scalar(f"eval/{split}_success", float(h.successes[i].mean()), step)
