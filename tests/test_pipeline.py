"""The rollout pipeline (``env.pipeline``): env batches split into slices play exactly the games of
the whole batch, and the overlapped schedule takes the same actions and sees the same rewards and
frames as the serial one, for reward agents and the explorer."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from agents.acting import ActionPicker
from core.config import ConfigError
from core.runtime import Runtime
from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv
from envs.split_batch import SplitBatch
from training.explorer_learner import ExplorerLearner
from training.native_learner import rollout_slices
from training.phases import PHASES
from training.population_learner import PopulationLearner

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["env.num_envs=8", "ppo.num_steps=24", "ensemble.size=2", "explorer.enabled=true",
        "explorer.buffer_size=16", "env.game=dodgeball"]  # ends and rewards within 48 steps


def test_slices_play_the_games_of_the_whole_batch() -> None:
    make = functools.partial(ProcgenVecEnv, "maze", levels=get_split("train"), rand_seed=5)
    whole, split = make(8), SplitBatch(make, 8, parts=2)
    frames = split.reset(seed=11)
    np.testing.assert_array_equal(frames, whole.reset(seed=11)[0])
    rng, ends = np.random.default_rng(0), 0
    for step in range(800):
        actions = rng.integers(0, 15, 8)
        obs, reward, term, _, info = whole.step(actions)
        parts = [split.step(p, actions[s]) for p, s in enumerate(split.slices)]
        np.testing.assert_array_equal(obs, np.concatenate([p[0] for p in parts]), err_msg=f"step {step}")
        np.testing.assert_array_equal(reward, np.concatenate([p[1] for p in parts]))
        np.testing.assert_array_equal(term, np.concatenate([p[2] for p in parts]))
        ends += term.sum()
        if step == 400:  # the state moves between the two layouts, mid-episode
            state = split.get_state()
            assert len(state["procgen"]) == 8
            np.testing.assert_array_equal(state["ep_length"], whole.get_state()["ep_length"])
            np.testing.assert_array_equal(whole.set_state(state), split.set_state(whole.get_state()))
    assert ends > 10  # episode ends (auto-resets onto new levels) were crossed in both slices
    with pytest.raises(ValueError, match="7 envs"):
        split.set_state(make(7).get_state())
    whole.close(), split.close()


def test_noise_drawn_once_samples_the_same_actions_on_slices() -> None:
    logits = torch.randn(2, 6, 15)
    whole = ActionPicker([3, 4], torch.device("cpu"), salt=1)(logits)
    sliced = ActionPicker([3, 4], torch.device("cpu"), salt=1)
    sliced.draw(2, 6, 15)
    actions = torch.cat([sliced.pick(logits[:, s], s) for s in (slice(0, 3), slice(3, 6))], dim=1)
    assert torch.equal(actions, whole)


def rollouts(cfg, make, iterations: int = 2) -> list[dict[str, torch.Tensor]]:
    """What each rollout stored, and the envs' state after it, under ``cfg``'s pipeline."""
    learner = make(cfg)
    out = []
    for _ in range(iterations):
        learner.collect()
        record = {k: v.clone() for k, v in vars(learner.ro).items() if v is not None}  # labels: IDAAC only
        record["next_obs"], record["next_episode_starts"] = learner.next_obs.clone(), learner.next_episode_starts.clone()
        if isinstance(learner, ExplorerLearner):
            record["knn"] = learner.knn.buffer.clone()
            record["gru"] = learner.actor.state.clone()
        out.append(record)
        learner.learn()  # the next rollout acts with updated weights
    learner.close()
    return out


@pytest.mark.parametrize("kind", ["members", "explorer"])
def test_overlapped_rollout_equals_the_serial_one(small_cfg, kind) -> None:
    runtime = Runtime.resolve("cpu", "fp32")
    make = (lambda cfg: PopulationLearner(cfg, [0, 1], runtime)) if kind == "members" else \
        (lambda cfg: ExplorerLearner(cfg, runtime))
    overlap_cfg = small_cfg(*TINY, "env.pipeline=overlap")
    assert len(make(overlap_cfg).slices) == 2
    serial = rollouts(small_cfg(*TINY, "env.pipeline=serial"), make)
    overlap = rollouts(overlap_cfg, make)
    for i, (a, b) in enumerate(zip(serial, overlap)):
        for key in a:
            if key in ("values", "logprobs", "gru"):
                # A network on half the batch may round differently (CPU kernels block by batch size).
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=f"rollout {i}: {key}")
            else:
                assert torch.equal(a[key], b[key]), f"rollout {i}: {key} differs"
    rewards = torch.stack([r["rewards"] for r in serial])
    assert rewards.abs().sum() > 0  # rewards (game or intrinsic) were really compared
    assert torch.stack([r["episode_starts"] for r in serial]).sum() > 0  # and episode ends


def test_pipeline_choice_and_validation(small_cfg) -> None:
    assert rollout_slices(small_cfg("env.num_envs=4").env) == 1  # auto: serial (measured, on CUDA too)
    assert rollout_slices(small_cfg("env.num_envs=4", "env.pipeline=overlap").env) == 2
    with pytest.raises(ConfigError, match="env.num_envs=5 is odd"):
        small_cfg("env.num_envs=5", "env.pipeline=overlap")
    with pytest.raises(ConfigError, match="env.pipeline"):
        small_cfg("env.pipeline=fast")


def test_phase_clock_breaks_an_iteration_down(small_cfg) -> None:
    learner = ExplorerLearner(small_cfg(*TINY), Runtime.resolve("cpu", "fp32"))
    learner.iterate()  # off by default: nothing recorded
    assert not learner.clock.seconds
    learner.clock.enabled = True
    learner.iterate()
    learner.close()
    assert set(learner.clock.seconds) == set(PHASES)
    assert all(s > 0 for s in learner.clock.seconds.values())
