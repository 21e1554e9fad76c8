"""The one training loop: a learner composed with TensorBoard, held-out curves, checkpoints,
progress and the trial reporter.

One iteration, read top to bottom in ``train``: the learner collects and updates
(``iterate``) -> metrics to TensorBoard -> the held-out evaluations that finished meanwhile to
TensorBoard -> checkpoint every ``logging.checkpoint_interval``, after the evaluations of earlier
updates -> a held-out evaluation every ``logging.eval_interval`` updates, of a snapshot of the
weights, beside the next updates (``logging.eval_overlap``; the last update's, and every inline
one, before its checkpoint) -> progress and report -> the callbacks installed in
``training.callbacks.after_update``. The same loop trains native
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
from training.heldout import Heldout, HeldoutEvaluator, logged_at
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
    evaluator = HeldoutEvaluator(cfg, runtime, log.eval_overlap)
    job = learner.agents[0].name

    def log_finished(wait: bool) -> None:
        """Log the held-out evaluations that have finished (``wait``: and the one in flight) at
        the steps of the updates they evaluated; raises what an evaluation raised."""
        nonlocal last_heldout
        for update, heldout in evaluator.finished(wait):
            log_heldout(writers, heldout, update * learner.steps_per_update)
            last_heldout = {split: h.returns.mean(1).tolist() for split, h in heldout.items()}

    def run_heldout() -> None:
        with heldout_clock:
            if evaluator.busy:
                heldout_clock.warn_waiting(job, log, evaluator.in_flight, learner.update)
            log_finished(wait=True)  # one evaluation in flight at a time
            pop, seeds = learner.acting_population()
            # A learner captures its own CUDA graphs in its first iteration, and a capture forbids
            # other threads the device meanwhile: an evaluation before it plays inline.
            evaluator.submit(pop, seeds, learner.update, background=iterated or not runtime.cudagraphs)
        log_finished(wait=False)  # an inline evaluation's results

    iterated = False
    try:
        with DeferredInterrupt() as interrupt:
            if log.eval_interval and (learner.update == 0 or missing_heldout(learner, log)):
                run_heldout()  # the untrained policy (where every curve starts), or one a stop lost
            while learner.update < learner.num_updates:
                start = time.perf_counter()
                result = learner.iterate()
                elapsed = time.perf_counter() - start
                iterated = True
                check_finite(learner, result)
                heldout_clock.training += elapsed
                sps = learner.steps_per_update * len(writers) / elapsed
                step = learner.global_step
                log_iteration(writers, result, sps, step)
                if summary is not None:
                    log_population(summary, result, sps, step, len(writers))
                log_finished(wait=False)
                last = learner.update == learner.num_updates
                heldout_due = log.eval_interval and (learner.update % log.eval_interval == 0 or last)
                saved = learner.update % log.checkpoint_interval == 0 or last or interrupt.requested
                # An overlapped evaluation due with a checkpoint starts after it, to run beside the
                # next updates (started before, the checkpoint would wait for it); the next
                # checkpoint holds it, and a run resumed from this one plays it again if it never
                # reached TensorBoard. The last update's comes first: the final checkpoint holds it.
                heldout_first = heldout_due and (last or not log.eval_overlap)
                if heldout_first:
                    run_heldout()
                if saved:
                    with heldout_clock:  # the checkpoint holds the evaluations of earlier updates
                        log_finished(wait=True)
                    flush(writers, summary)  # a process killed after the save has its curves up to it
                    checkpointing.save(learner, last_heldout)
                if heldout_due and not heldout_first:
                    run_heldout()
                if heldout_due:
                    heldout_clock.warn_if_dominant(job, log)
                mean_return = result.episodes.means("charts/episodic_return")
                progress.advance(learner.steps_per_update, sps, mean_return)
                if on_iteration is not None:
                    on_iteration({"steps": step, "sps": sps, "episodic_return": mean_return,
                                  "heldout": last_heldout, "checkpoint": saved, "done": last})
                if interrupt.requested:  # also a Ctrl-C that came after this iteration's save decision
                    if not saved:
                        with heldout_clock:
                            log_finished(wait=True)
                        flush(writers, summary)
                        checkpointing.save(learner, last_heldout)
                    raise KeyboardInterrupt
                for callback in callbacks.after_update:
                    callback(learner)
            log_finished(wait=True)  # one still in flight (the update-0 one of a run with no update to train)
    except BaseException as error:
        # Training stopped: the evaluation in flight (of an update that trained well) is still logged;
        # an error of its own does not hide the one that stopped training.
        try:
            log_finished(wait=True)
        except Exception as eval_error:  # noqa: BLE001 - reported with the error that stopped training
            error.add_note(f"the held-out evaluation in flight failed too: {eval_error!r}")
        raise
    finally:
        for w in writers + ([summary] if summary else []):
            w.close()
    return {"agents": [a.name for a in learner.agents], "steps": learner.global_step,
            "heldout": last_heldout}


def flush(writers: list[SummaryWriter], summary: SummaryWriter | None) -> None:
    for w in writers + ([summary] if summary else []):
        w.flush()


def missing_heldout(learner: Learner, log: LoggingConfig) -> bool:
    """Whether a resumed job's update was due a held-out evaluation that never reached TensorBoard:
    an overlapped evaluation starts after the checkpoint it is due with, and the process may have
    stopped before it finished. Read from the first agent's events (every agent's are logged at once)."""
    u = learner.update
    if not (log.eval_splits and 0 < u < learner.num_updates and u % log.eval_interval == 0):
        return False
    return not logged_at(learner.agents[0].tb, f"eval/{log.eval_splits[0]}_return", learner.global_step)


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
    """Wall time that training spent waiting for held-out evaluation against the time it trained,
    to warn when curves cost more than the training they describe. ``logging.eval_interval``
    counts updates, so a small ``ppo.num_steps`` makes evaluations frequent while each still plays
    whole episodes. Inline evaluations count whole; overlapped ones (``logging.eval_overlap``) only
    the snapshot and what training waits for them (the next evaluation or a checkpoint is due)."""

    def __init__(self) -> None:
        self.training = 0.0
        self.heldout = 0.0
        self.warned = False
        self.warned_waiting = False
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

    def warn_waiting(self, job: str, log: LoggingConfig, running: int, due: int) -> None:
        """Once: an overlapped evaluation outlasts the updates between two evaluations."""
        if self.warned_waiting:
            return
        self.warned_waiting = True
        print(f"warning: {job}: the held-out evaluation of update {running} is still running when "
              f"update {due}'s is due; training waits for it (one evaluation at a time). Evaluate less "
              f"often (logging.eval_interval={log.eval_interval} updates) or on fewer episodes "
              f"(logging.eval_episodes={log.eval_episodes})", flush=True)


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
