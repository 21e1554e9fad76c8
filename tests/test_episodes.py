"""Tests of evaluation/episodes.py:run_episodes and the held-out curves built on it
(training/heldout.py): env batches stepped in worker threads with one stacked copy of the frames
per step give, bit for bit, what stepping the batches one after another gives; the quota layout;
``skip_levels``.

The reference is the straightforward serial loop, written out here: reset every batch with the
seed, then per step act on all frames and step batch 0, 1, ... in turn, recording each env's first
``quota[j]`` episodes and telling the policy after each batch which envs finished.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.acting import ActionPicker, PopulationActor
from agents.networks import NetworkSpec
from agents.population import Population
from envs.make import make_env
from evaluation.episodes import episode_slots, quotas, run_episodes
from tests.helpers import make_small_cfg
from training.heldout import evaluate_heldout

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def serial_episodes(act, envs, episodes: int, device: torch.device, seed: int, ended) -> dict[str, np.ndarray]:
    """The reference: batches stepped one after another, one device copy per step."""
    g_count, n = len(envs), envs[0].num_envs
    quota = quotas(episodes, n)
    start = np.concatenate([[0], np.cumsum(quota)[:-1]])
    count = np.zeros((g_count, n), np.int64)
    out = {k: np.zeros((g_count, episodes), dt) for k, dt in
           [("returns", np.float32), ("lengths", np.int64), ("level_seeds", np.int64), ("successes", bool)]}
    obs = np.stack([env.reset(seed=seed)[0] for env in envs])
    while not (count >= quota).all():
        actions = act(torch.from_numpy(obs).to(device)).cpu().numpy()
        for g, env in enumerate(envs):
            obs[g], _, term, _, info = env.step(actions[g])
            ended(g, term)
            for j in np.flatnonzero(term):
                if count[g, j] < quota[j]:
                    i = start[j] + count[g, j]
                    out["returns"][g, i] = info["episode_return"][j]
                    out["lengths"][g, i] = info["episode_length"][j]
                    out["level_seeds"][g, i] = info["prev_level_seed"][j]
                    out["successes"][g, i] = info["level_complete"][j]
                count[g, j] += 1
    return out


def small_cfg(tmp_path, *overrides: str):
    # bigfish: untrained agents end its episodes in ~100-200 steps (maze: up to 500)
    return make_small_cfg(tmp_path, "env.game=bigfish", "env.num_envs=2", "logging.eval_episodes=2",
                          "logging.eval_splits=[test]", *overrides)


def recurrent_population(members: int, device: str) -> Population:
    """Untrained GRU agents: their actions depend on the episode starts they are told of."""
    torch.manual_seed(0)
    return Population(NetworkSpec(kind="small", recurrent=True), list(range(members)), "loop").eval().to(device)


class CountingPolicy:
    """A cheap stateful policy: the action depends on the frames and on how long each env's
    episode has run, which only the episode ends it is told of reset (as a GRU's state)."""

    def __init__(self, groups: int, envs: int, device: torch.device) -> None:
        self.steps = torch.zeros(groups, envs, dtype=torch.int64, device=device)
        self.group = torch.arange(groups, device=device).unsqueeze(1)  # each group its own policy

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return (obs[..., ::7, ::5, :].sum((2, 3, 4)) // 3 + self.steps * (5 + self.group)) % 15

    def ended(self, group, terminated: np.ndarray) -> None:
        self.steps[group] *= torch.as_tensor(~terminated, device=self.steps.device)


@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()
def test_threaded_episodes_match_the_serial_loop(tmp_path, device: str) -> None:
    """Three batches, threaded, against the serial reference: the same returns, lengths, levels and
    successes, exactly."""
    cfg, dev, groups, episodes, seed = small_cfg(tmp_path), torch.device(device), 3, 7, 77

    def play(threaded: bool) -> dict[str, np.ndarray]:
        policy = CountingPolicy(groups, 4, dev)
        envs = [make_env(cfg.env, 4, "test", rand_seed=seed) for _ in range(groups)]
        try:
            if threaded:
                stats = run_episodes(policy.act, envs, episodes, dev, seed,
                                     on_steps=lambda ends: policy.ended(slice(None), ends))
                return {k: getattr(stats, k) for k in ("returns", "lengths", "level_seeds", "successes")}
            return serial_episodes(policy.act, envs, episodes, dev, seed, policy.ended)
        finally:
            for env in envs:
                env.close()

    reference, threaded = play(False), play(True)
    for key in reference:
        np.testing.assert_array_equal(threaded[key], reference[key], err_msg=key)
    assert (reference["lengths"] > 0).all()
    assert not (reference["lengths"] == reference["lengths"][0]).all()  # the groups played differently
    # every group meets the same levels in the same slots: what paired comparisons rely on
    assert (reference["level_seeds"] == reference["level_seeds"][0]).all()


@torch.no_grad()
def test_heldout_matches_the_serial_loop(tmp_path) -> None:
    """training/heldout.py's curves (threaded, recurrent agents) against the same evaluation
    done serially (on the training levels: no level is left out there)."""
    cfg, dev = small_cfg(tmp_path, "logging.eval_splits=[train]"), torch.device("cpu")
    pop, seeds, update = recurrent_population(2, "cpu"), [5, 6], 4
    heldout = evaluate_heldout(cfg, pop, seeds, update, dev)["train"]
    actor = PopulationActor(pop, 2, ActionPicker(seeds, dev, salt=3 + update), dev)
    envs = [make_env(cfg.env, 2, "train", rand_seed=10_000 + update) for _ in seeds]
    try:
        reference = serial_episodes(lambda obs: actor(obs)[0], envs, 2, dev, 10_000 + update, actor.episode_ended)
    finally:
        for env in envs:
            env.close()
    np.testing.assert_array_equal(heldout.returns, reference["returns"])
    np.testing.assert_array_equal(heldout.successes, reference["successes"])


def random_act(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda obs: torch.randint(0, 15, obs.shape[:2], generator=gen)


def test_quota_layout_and_episode_indices(tmp_path) -> None:
    cfg = small_cfg(tmp_path)
    env_slots, env_episodes = episode_slots(6, 4)
    assert env_slots.tolist() == [0, 0, 1, 1, 2, 3] and env_episodes.tolist() == [0, 1, 0, 1, 0, 0]
    seen: list[tuple[int, int]] = []

    def on_step(info: dict) -> None:
        seen.extend((info["group"], int(i)) for i in info["episode"] if i >= 0)
        assert ((info["episode"] >= 0) <= info["terminated"]).all()  # only episodes that just ended

    envs = [make_env(cfg.env, 4, "test", rand_seed=3) for _ in range(2)]  # 4 envs: uneven quotas
    try:
        stats = run_episodes(random_act(0), envs, 6, torch.device("cpu"), 3, on_step)
    finally:
        for env in envs:
            env.close()
    assert sorted(seen) == [(g, i) for g in range(2) for i in range(6)]  # each episode reported once
    assert stats.env_slots.tolist() == env_slots.tolist()
    assert stats.env_episodes.tolist() == env_episodes.tolist()


def test_skip_levels_leaves_those_episodes_out(tmp_path) -> None:
    """Env j's counted levels with ``skip_levels`` are its levels without them: the env plays on."""
    cfg, cpu = small_cfg(tmp_path), torch.device("cpu")

    def levels(episodes: int, skip=None) -> np.ndarray:
        env = make_env(cfg.env, 4, "test", rand_seed=11)  # 4 envs (the config's 2 do not matter here)
        try:
            return run_episodes(random_act(1), [env], episodes, cpu, 11, skip_levels=skip).level_seeds[0]
        finally:
            env.close()

    long = levels(16).reshape(4, 4)  # 4 episodes per env; an env's levels do not depend on actions
    skip = {int(long[0, 0]), int(long[1, 1])}
    short = levels(8, skip).reshape(4, 2)
    for j in range(4):
        kept = [s for s in long[j] if s not in skip]
        assert short[j].tolist() == kept[:2], j
    assert not set(short.ravel().tolist()) & skip
