"""The native engine's TensorBoard curves (training/loop.py): which tags each writer gets, at which
steps, each exactly once, and the annealed learning rate.

One tiny in-process run trains two members together (3 updates) and the explorer (2 updates), with
held-out evaluation before training and every 2 updates (so at 0, 2 and the last update, 3) and
``ppo.anneal_lr``;
every test reads its event files back.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from core.runtime import Runtime
from launch.run import train_run
from tests.helpers import make_small_cfg
from training.heldout import evaluate_heldout
from training.population_learner import PopulationLearner

MEMBER_UPDATES, EXPLORER_UPDATES, EVAL_INTERVAL = 3, 2, 2
LR = 1e-3
LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance",
          "grad_norm")
EVAL_TAGS = ("eval/train_return", "eval/train_success", "eval/test_return", "eval/test_success")


pytestmark = pytest.mark.usefixtures("one_thread")
# The tests on the trained run (``run``: a run with held-out evaluations) are marked slow.


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    cfg = make_small_cfg(
        tmp_path_factory.mktemp("runs"),
        "env.game=bigfish",  # untrained agents finish bigfish episodes quickly (held-out eval)
        "ensemble.size=2",
        f"ppo.total_steps={MEMBER_UPDATES * 32}",
        "explorer.enabled=true",
        f"explorer.total_steps={EXPLORER_UPDATES * 32}",
        "explorer.buffer_size=16",
        f"logging.eval_interval={EVAL_INTERVAL}",
        "logging.eval_episodes=1",
        "logging.eval_splits=[train,test]",
        "ppo.anneal_lr=true",
        f"ppo.lr={LR}",
    )
    assert cfg.steps_per_update == 32
    train_run(cfg)
    return cfg


def read_scalars(tb: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event under ``tb`` as (step, value), in file order; nothing purged or sampled."""
    files = list(tb.glob("events.out.tfevents.*"))
    assert len(files) == 1, f"one event file per writer expected in {tb}, found {files}"
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def steps_of(scalars: dict, tag: str) -> list[int]:
    assert tag in scalars, f"{tag} missing; logged: {sorted(scalars)}"
    return [s for s, _ in scalars[tag]]


def check_once_at(scalars: dict, tag: str, expected: list[int]) -> None:
    steps = steps_of(scalars, tag)
    dup = [s for s, c in Counter(steps).items() if c > 1]
    assert not dup, f"{tag} logged more than once at steps {dup}"
    assert sorted(steps) == expected, f"{tag}: steps {steps}, expected {expected}"


def update_steps(cfg, updates: int) -> list[int]:
    return [u * cfg.steps_per_update for u in range(1, updates + 1)]


def eval_steps(cfg, updates: int) -> list[int]:
    """Held-out evaluation: before training, every ``eval_interval`` updates and after the last one."""
    return [u * cfg.steps_per_update for u in range(updates + 1)
            if u % EVAL_INTERVAL == 0 or u == updates]


def check_agent_tags(scalars, every: list[int], evals: list[int]) -> None:
    """The tags every agent logs: loss terms, SPS and learning rate each update, held-out curves."""
    for name in LOSSES:
        check_once_at(scalars, f"losses/{name}", every)
    for tag in ("charts/SPS", "charts/learning_rate"):
        check_once_at(scalars, tag, every)
    for tag in EVAL_TAGS:
        check_once_at(scalars, tag, evals)


@pytest.mark.slow
def test_member_tags(run) -> None:
    cfg = run
    every, evals = update_steps(cfg, MEMBER_UPDATES), eval_steps(cfg, MEMBER_UPDATES)
    assert evals == [0, 64, 96]
    for m in (0, 1):
        scalars = read_scalars(cfg.layout.member(m).tb)
        check_agent_tags(scalars, every, evals)
        for tag in ("charts/episodic_return", "charts/episodic_length"):  # only when episodes end
            if tag in scalars:
                steps = steps_of(scalars, tag)
                assert len(set(steps)) == len(steps) and set(steps) <= set(every), (tag, steps)
        assert not [t for t in scalars if t.startswith(("explore/", "population/"))]
        for tag in ("eval/train_success", "eval/test_success"):
            assert all(0.0 <= v <= 1.0 for _, v in scalars[tag])
        assert all(v > 0 for _, v in scalars["charts/SPS"])


@pytest.mark.slow
def test_explorer_tags(run) -> None:
    cfg = run
    every, evals = update_steps(cfg, EXPLORER_UPDATES), eval_steps(cfg, EXPLORER_UPDATES)
    scalars = read_scalars(cfg.layout.explorer.tb)
    check_once_at(scalars, "explore/intrinsic_reward_per_step", every)
    assert all(v >= 0 for _, v in scalars["explore/intrinsic_reward_per_step"])
    check_agent_tags(scalars, every, evals)
    assert not [t for t in scalars if t.startswith("population/")]


@pytest.mark.slow
def test_population_summary_tags(run) -> None:
    cfg = run
    every = update_steps(cfg, MEMBER_UPDATES)
    scalars = read_scalars(cfg.layout.population_tb([0, 1]))
    for tag in ("charts/SPS", "population/value_loss_max", "population/approx_kl_max",
                "population/grad_norm_max"):
        check_once_at(scalars, tag, every)
    # The summary's value_loss_max is the larger of the two members' value losses.
    members = [dict(read_scalars(cfg.layout.member(m).tb)["losses/value_loss"]) for m in (0, 1)]
    for step, value in scalars["population/value_loss_max"]:
        assert value == pytest.approx(max(members[0][step], members[1][step]), rel=1e-6)
    for name in ("mean", "min", "max"):  # only at updates where some member finished an episode
        tag = f"population/episodic_return_{name}"
        if tag in scalars:
            steps = steps_of(scalars, tag)
            assert len(set(steps)) == len(steps) and set(steps) <= set(every)
    # Only the two-member shard gets a summary writer; a single-agent job (the explorer) gets none.
    assert [p.parent.name for p in cfg.layout.root.glob("population_*/tb")] == ["population_0-1"]


def expected_lr(update: int, num_updates: int) -> float:
    """Reference: linear annealing, lr * (1 - u / N) for the update that starts after u updates."""
    return LR * (1.0 - update / num_updates)


@pytest.mark.slow
def test_annealed_learning_rate(run) -> None:
    cfg = run
    for tb, updates in [(cfg.layout.member(0).tb, MEMBER_UPDATES), (cfg.layout.member(1).tb, MEMBER_UPDATES),
                        (cfg.layout.explorer.tb, EXPLORER_UPDATES)]:
        logged = dict(read_scalars(tb)["charts/learning_rate"])
        # Update u (0-based) is logged at the step reached after it, (u + 1) * steps_per_update.
        want = {(u + 1) * cfg.steps_per_update: expected_lr(u, updates) for u in range(updates)}
        assert set(logged) == set(want)
        for step, lr in want.items():
            assert logged[step] == pytest.approx(lr, rel=1e-6), (tb, step)
    assert cfg.num_updates() == MEMBER_UPDATES and cfg.num_updates(explorer=True) == EXPLORER_UPDATES


@pytest.mark.slow
def test_first_heldout_point_is_the_untrained_policy(run) -> None:
    """The step-0 point is the seeded initial policy, evaluated before any update: it equals a
    held-out evaluation of a freshly built, never trained population."""
    cfg = run
    runtime = Runtime.resolve("cpu", cfg.network.precision)
    learner = PopulationLearner(cfg, [0, 1], runtime)
    try:
        pop, seeds = learner.acting_population()
        fresh = evaluate_heldout(cfg, pop, seeds, 0, runtime.device)
    finally:
        learner.close()
    for m in (0, 1):
        logged = dict(read_scalars(cfg.layout.member(m).tb)["eval/test_return"])
        assert logged[0] == pytest.approx(float(fresh["test"].returns[m].mean()), rel=1e-6)


@pytest.mark.slow
def test_warns_when_heldout_evaluation_costs_more_than_training(tmp_path, capsys) -> None:
    """Whole held-out episodes after every 8-step update: evaluation dominates, and the user is told.
    Inline (``logging.eval_overlap=false``): training waits for each evaluation whole."""
    cfg = make_small_cfg(tmp_path, "env.game=maze", "ppo.total_steps=64", "logging.eval_interval=1",
                         "logging.eval_episodes=4", "logging.eval_splits=[test]", "logging.eval_overlap=false")
    train_run(cfg)
    out = capsys.readouterr().out
    assert out.count("warning: member_0: held-out evaluation has taken") == 1
    assert "logging.eval_interval=1 updates" in out


def test_summary_table_names_the_held_out_splits_the_run_evaluates() -> None:
    """The quickstart evaluates test-full: train.py's final table shows it (it showed '-' under 'test')."""
    from rich.console import Console

    summary = {"run_dir": "runs/quickstart", "wall_s": 10.0, "ray": False, "agents": [
        {"agent": "member_0", "job": "member_0", "steps": 64, "job_wall_s": 5.0,
         "train_return": 9.5, "test-full_return": 2.25},
        {"agent": "explorer", "job": "explorer", "steps": 64, "job_wall_s": 0.0}]}
    console = Console(width=200, record=True)
    console.print(train.summary_table(summary))
    text = console.export_text()
    assert "train return" in text and "test-full return" in text and "test return" not in text
    assert "2.25" in text and "9.50" in text and "(already done)" in text
