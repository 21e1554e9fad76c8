"""Held-out evaluation beside training (``logging.eval_overlap``, training/heldout.py:HeldoutEvaluator).

One tiny run of one member, 4 updates of 32 steps, held-out evaluations at updates 0, 2 and 4 and
checkpoints at 3 and 4, trains twice: with evaluations inline and overlapped. In the overlapped
run a gate in the evaluation holds the evaluation of update 2 until training has finished update
3 (events, no sleeps), so it is certainly in flight while training changes the weights and when
the checkpoint of update 3 is due. The tests check that the two runs log the same numbers bit for
bit, that the checkpoint holds the evaluation it waited for, that the evaluation played update 2's
weights, and that the failures of either thread surface without losing an evaluation.
"""
from __future__ import annotations

import copy
import os

# Deterministic cuBLAS needs this before CUDA starts in this process (the CUDA test starts it).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import signal  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from agents.networks import NetworkSpec  # noqa: E402
from agents.population import Population  # noqa: E402
from core.checkpoint import checkpoint_steps, load_latest  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from launch.run import train_run  # noqa: E402
from tests.helpers import make_small_cfg  # noqa: E402
from training import heldout  # noqa: E402
from training.heldout import HeldoutEvaluator, evaluate_heldout  # noqa: E402
from training.population_learner import PopulationLearner  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

GATED = 2  # the update whose evaluation the gate holds
RUN = ["env.game=bigfish",  # untrained agents finish bigfish episodes quickly
       "ppo.total_steps=128", "logging.eval_interval=2", "logging.checkpoint_interval=3",
       "logging.eval_episodes=2", "logging.eval_splits=[train,test]"]
SPU = 32  # env steps per update: 4 envs x 8 steps
RELEASE_TIMEOUT_S = 300.0  # only a broken loop (one that never trains on) waits this long


@dataclass
class Gate:
    """Holds the evaluation of update ``GATED`` until training has finished update ``GATED + 1``;
    keeps the weights and seeds of update ``GATED``, the threads that played held-out episodes and,
    per thread, the actions that evaluations of update ``GATED`` took, step by step."""

    release: threading.Event = field(default_factory=threading.Event)
    weights: Population | None = None
    seeds: list[int] | None = None
    threads: set[str] = field(default_factory=set)
    actions: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def install(self, mp: pytest.MonkeyPatch, stop: str | None = None) -> None:
        """``stop``: ``error``: training raises in update ``GATED + 1`` instead of finishing it;
        ``ctrl-c``: a SIGINT arrives as update ``GATED + 1`` finishes."""
        play, iterate = heldout.run_episodes, PopulationLearner.iterate

        def gated_episodes(act, *args, seed: int, **kwargs):
            thread = threading.current_thread().name
            self.threads.add(thread)
            if seed != 10_000 + GATED:
                return play(act, *args, seed=seed, **kwargs)
            if not self.release.wait(RELEASE_TIMEOUT_S):
                raise RuntimeError(f"training never finished update {GATED + 1}")
            taken = self.actions.setdefault(thread, [])

            def recorded(obs: torch.Tensor) -> torch.Tensor:
                actions = act(obs)
                taken.append(actions.cpu().numpy().copy())
                return actions

            return play(recorded, *args, seed=seed, **kwargs)

        def gated_iterate(learner: PopulationLearner):
            if stop == "error" and learner.update == GATED:
                self.release.set()
                raise RuntimeError("training failed")
            result = iterate(learner)
            if learner.update == GATED:
                self.weights, self.seeds = copy.deepcopy(learner.pop), list(learner.seeds)
            if learner.update == GATED + 1:
                self.release.set()
                if stop == "ctrl-c":
                    signal.raise_signal(signal.SIGINT)
            return result

        mp.setattr(heldout, "run_episodes", gated_episodes)
        mp.setattr(PopulationLearner, "iterate", gated_iterate)


def read_scalars(tb: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """The run inline and overlapped (gated), the overlapped run's gate, and a held-out evaluation
    (in this thread, its actions recorded by the gate too) of the copy of update ``GATED``."""
    root = tmp_path_factory.mktemp("heldout")
    inline = make_small_cfg(root, *RUN, "logging.eval_overlap=false", name="inline")
    train_run(inline)
    overlapped, gate = make_small_cfg(root, *RUN, "logging.eval_overlap=true", name="overlapped"), Gate()
    with pytest.MonkeyPatch.context() as mp:
        gate.install(mp)
        train_run(overlapped)
        reference = evaluate_heldout(overlapped, gate.weights, gate.seeds, GATED, torch.device("cpu"))
    return inline, overlapped, gate, reference


@pytest.mark.slow
def test_overlapped_evaluations_log_what_inline_ones_do(runs) -> None:
    """Every curve (held-out ones at updates 0, 2, 4 and the training ones) equal bit for bit;
    only the speed differs. The overlapped evaluations played in their own thread."""
    inline, overlapped, gate, _ = runs
    a, b = read_scalars(inline.layout.member(0).tb), read_scalars(overlapped.layout.member(0).tb)
    assert set(a) == set(b)
    for tag in set(a) - {"charts/SPS"}:
        assert a[tag] == b[tag], tag
    for tag in ("eval/train_return", "eval/test_return", "eval/train_success", "eval/test_success"):
        assert sorted(b[tag]) == [0, 2 * SPU, 4 * SPU], tag
    assert gate.threads == {"heldout-eval", "MainThread"}  # MainThread: the fixture's reference


@pytest.mark.slow
def test_checkpoint_holds_the_evaluation_in_flight(runs) -> None:
    """The checkpoint of update 3, due while the evaluation of update 2 was held, carries it:
    the same held-out returns as the inline run's checkpoint of update 3."""
    inline, overlapped, _, _ = runs
    a = load_latest(inline.layout.member(0).checkpoints, "cpu", max_step=3 * SPU)
    b = load_latest(overlapped.layout.member(0).checkpoints, "cpu", max_step=3 * SPU)
    assert a["update"] == b["update"] == 3
    assert set(b["heldout"]) == {"train", "test"}
    assert a["heldout"] == b["heldout"]


@pytest.mark.slow
def test_the_evaluation_plays_the_weights_of_its_update(runs) -> None:
    """Training changed the weights (update 3) before the evaluation of update 2 played; it still
    played update 2's: step for step the actions of a held-out evaluation of a copy taken at
    update 2, and its curves."""
    _, overlapped, gate, reference = runs
    ckpt = load_latest(overlapped.layout.member(0).checkpoints, "cpu", max_step=3 * SPU)
    at_gated = gate.weights.member_state_dict(0)
    assert any(not torch.equal(ckpt["model"][k], at_gated[k]) for k in at_gated)  # update 3 changed them
    played, replayed = gate.actions["heldout-eval"], gate.actions["MainThread"]
    assert len(played) == len(replayed) > 0
    for step, (a, b) in enumerate(zip(played, replayed)):
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
    logged = read_scalars(overlapped.layout.member(0).tb)
    for split, h in reference.items():
        assert logged[f"eval/{split}_return"][GATED * SPU] == np.float32(h.returns[0].mean())
        assert ckpt["heldout"][split] == float(h.returns[0].mean())


def test_an_evaluation_error_surfaces_in_train(tmp_path, monkeypatch) -> None:
    """An exception in the evaluation thread is raised by ``train``, before the next checkpoint
    (which would otherwise go without its evaluation)."""
    play, threads = heldout.run_episodes, []

    def failing(*args, seed: int, **kwargs):
        if seed == 10_000 + GATED:
            threads.append(threading.current_thread().name)
            raise RuntimeError("evaluation failed")
        return play(*args, seed=seed, **kwargs)

    monkeypatch.setattr(heldout, "run_episodes", failing)
    cfg = make_small_cfg(tmp_path, *RUN, "ppo.total_steps=96", "logging.checkpoint_interval=10",
                         "logging.eval_overlap=true")
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train_run(cfg)
    assert threads == ["heldout-eval"]
    assert load_latest(cfg.layout.member(0).checkpoints) is None


def test_a_training_error_keeps_the_evaluation_in_flight(tmp_path, monkeypatch) -> None:
    """Training fails in update 3 while the evaluation of update 2 is held: the error reaches the
    caller, and the evaluation is still logged at update 2's step."""
    cfg, gate = make_small_cfg(tmp_path, *RUN, "logging.eval_overlap=true"), Gate()
    gate.install(monkeypatch, stop="error")
    with pytest.raises(RuntimeError, match="training failed"):
        train_run(cfg)
    logged = read_scalars(cfg.layout.member(0).tb)
    assert sorted(logged["eval/test_return"]) == [0, GATED * SPU]


def test_ctrl_c_checkpoints_the_evaluation_in_flight(tmp_path, monkeypatch) -> None:
    """Ctrl-C as update 3 finishes, no checkpoint due, the evaluation of update 2 held until then:
    the interrupt's checkpoint of update 3 waits for that evaluation and holds it."""
    cfg, gate = make_small_cfg(tmp_path, *RUN, "logging.checkpoint_interval=10",
                               "logging.eval_overlap=true"), Gate()
    gate.install(monkeypatch, stop="ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg)
    ckpt = load_latest(cfg.layout.member(0).checkpoints, "cpu")
    assert ckpt["update"] == GATED + 1
    logged = read_scalars(cfg.layout.member(0).tb)
    for split in ("train", "test"):
        assert sorted(logged[f"eval/{split}_return"]) == [0, GATED * SPU]
        assert np.float32(ckpt["heldout"][split]) == logged[f"eval/{split}_return"][GATED * SPU]


def points(tb: Path, tag: str) -> list[int]:
    """Every step of ``tag`` TensorBoard shows, repeats included (purged events excluded)."""
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return sorted(e.step for e in acc.Scalars(tag))


@pytest.mark.slow
def test_an_evaluation_due_with_a_checkpoint_runs_after_it(tmp_path, monkeypatch, runs) -> None:
    """Evaluations and checkpoints both every 2 updates: the checkpoint of update 2 does not wait
    for update 2's evaluation (it starts after it and runs beside updates 3 and 4), so that
    checkpoint holds update 0's returns; the last checkpoint holds the last evaluation's. The
    curves are still those of the inline run, bit for bit."""
    inline, _, _, _ = runs
    started = []
    play = heldout.run_episodes

    def noted(*args, seed: int, **kwargs):
        started.append((seed - 10_000, sorted(checkpoint_updates(cfg))))
        return play(*args, seed=seed, **kwargs)

    monkeypatch.setattr(heldout, "run_episodes", noted)
    cfg = make_small_cfg(tmp_path, *RUN, "logging.checkpoint_interval=2", "logging.eval_overlap=true")
    train_run(cfg)
    # Each split's episodes start after the checkpoint of their update, the last one's before.
    assert [(u, saved) for u, saved in started[::2]] == [(0, []), (2, [2]), (4, [2])]
    at2 = load_latest(cfg.layout.member(0).checkpoints, "cpu", max_step=2 * SPU)
    last = load_latest(cfg.layout.member(0).checkpoints, "cpu")
    logged, reference = read_scalars(cfg.layout.member(0).tb), read_scalars(inline.layout.member(0).tb)
    for split in ("train", "test"):
        tag = f"eval/{split}_return"
        assert logged[tag] == reference[tag]
        assert np.float32(at2["heldout"][split]) == logged[tag][0]
        assert np.float32(last["heldout"][split]) == logged[tag][4 * SPU]


def checkpoint_updates(cfg) -> list[int]:
    return [step // SPU for step in checkpoint_steps(cfg.layout.member(0).checkpoints)]


@pytest.mark.slow
@pytest.mark.parametrize("logged_before_the_stop", [False, True])
def test_a_resumed_run_plays_an_evaluation_that_a_stop_lost(tmp_path, monkeypatch, runs,
                                                            logged_before_the_stop) -> None:
    """Training stops in update 3, after the checkpoint of update 2, while update 2's evaluation
    runs beside it. If that evaluation never reached TensorBoard (it failed here, as if the process
    had been killed), the resumed run plays it first, from the checkpoint's weights: the same
    numbers as the inline run. If it did, the resumed run does not log it twice."""
    inline, _, _, _ = runs
    cfg = make_small_cfg(tmp_path, *RUN, "logging.checkpoint_interval=2", "logging.eval_overlap=true")
    gate = Gate()
    with pytest.MonkeyPatch.context() as mp:
        gate.install(mp, stop="error")
        if not logged_before_the_stop:
            gated = heldout.run_episodes

            def lost(*args, seed: int, **kwargs):
                played = gated(*args, seed=seed, **kwargs)
                if seed == 10_000 + GATED:
                    raise RuntimeError("the evaluation never finished")
                return played

            mp.setattr(heldout, "run_episodes", lost)
        with pytest.raises(RuntimeError, match="training failed"):
            train_run(cfg)
    tb = cfg.layout.member(0).tb
    assert points(tb, "eval/test_return") == ([0, GATED * SPU] if logged_before_the_stop else [0])
    train_run(cfg)
    reference = read_scalars(inline.layout.member(0).tb)
    for split in ("train", "test"):
        tag = f"eval/{split}_return"
        assert points(tb, tag) == [0, 2 * SPU, 4 * SPU]
        assert read_scalars(tb)[tag] == reference[tag]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("recurrent", [False, True])
def test_captured_heldout_acting_equals_eager_on_cuda(tmp_path, recurrent) -> None:
    """On CUDA with captured acting: the evaluator's CUDA graph, replayed in its own thread on its
    own stream, plays the numbers of eager ``evaluate_heldout`` bit for bit, and the weights of
    the update it was given, although the training stream changes them right after ``submit``."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        device = torch.device("cuda")
        cfg = make_small_cfg(tmp_path, "device=cuda", "env.game=bigfish", "logging.eval_episodes=6",
                             "logging.eval_splits=[train,test]")
        spec = NetworkSpec(kind="small", recurrent=recurrent)
        seeds = [0] if recurrent else [0, 1]
        pop = Population(spec, seeds, "loop" if recurrent else "vmap").to(device)
        update = 7
        eager = evaluate_heldout(cfg, pop, seeds, update, device)
        evaluator = HeldoutEvaluator(cfg, Runtime(device, bf16=False, cudagraphs=True), overlap=True)
        evaluator.submit(pop, seeds, update)
        assert evaluator.in_flight == update
        with torch.no_grad():
            for p in pop.parameters():  # training goes on: the snapshot must not see this
                p.mul_(-1.0)
        [(done, captured)] = evaluator.finished(wait=True)
        assert done == update and evaluator.acting.step is not None and evaluator.acting.step.graph is not None
        for split in eager:
            np.testing.assert_array_equal(captured[split].returns, eager[split].returns, err_msg=split)
            np.testing.assert_array_equal(captured[split].successes, eager[split].successes, err_msg=split)
        # A second evaluation replays the same graph on the snapshot refreshed from ``pop``.
        graph = evaluator.acting.step.graph
        evaluator.submit(pop, seeds, update + 1)
        [(_, again)] = evaluator.finished(wait=True)
        reference = evaluate_heldout(cfg, pop, seeds, update + 1, device)
        assert evaluator.acting.step.graph is graph
        for split in reference:
            np.testing.assert_array_equal(again[split].returns, reference[split].returns, err_msg=split)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved
