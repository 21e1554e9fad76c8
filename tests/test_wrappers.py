"""Our envs under the standard wrappers users reach for: gymnasium's vector wrappers and SB3's."""
from __future__ import annotations

import numpy as np
from gymnasium.wrappers.vector import ClipReward, NormalizeReward, RecordEpisodeStatistics
from stable_baselines3.common.vec_env import VecFrameStack, VecMonitor

from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv
from envs.sb3_vec_env import ProcgenSB3VecEnv

GAME, N = "bigfish", 4  # random play ends bigfish episodes within a few hundred steps


def test_record_episode_statistics_counts_what_we_count_up_to_the_same_step_autoreset():
    """The wrapper runs over episode ends. It assumes NEXT_STEP autoreset, so after an env's first
    episode it skips each episode's first step: its lengths are then one short of ours, and its
    returns miss that first step's reward (zero here, as in nearly every ProcGen game)."""
    env = RecordEpisodeStatistics(ProcgenVecEnv(GAME, N, get_split("train"), rand_seed=1))
    rng, seen = np.random.default_rng(0), np.zeros(N, int)
    pairs = []
    try:
        env.reset(seed=1)
        for _ in range(600):
            _, _, term, _, info = env.step(rng.integers(0, 15, N))
            for i in np.flatnonzero(term):
                ours = (info["episode_return"][i], info["episode_length"][i])
                theirs = (info["episode"]["r"][i], info["episode"]["l"][i])
                pairs.append((seen[i], ours, theirs))
                seen[i] += 1
    finally:
        env.close()
    assert len(pairs) >= 8
    for index, (r, l), (wr, wl) in pairs:
        assert np.isclose(wr, r, atol=1e-4)
        assert wl == (l if index == 0 else l - 1)


def test_clip_and_normalize_reward_run_over_episode_ends():
    env = NormalizeReward(ClipReward(ProcgenVecEnv(GAME, N, get_split("train"), rand_seed=2), -1.0, 1.0))
    rng, ends = np.random.default_rng(1), 0
    try:
        env.reset(seed=2)
        for _ in range(400):
            _, rew, term, _, _ = env.step(rng.integers(0, 15, N))
            assert rew.shape == (N,) and np.isfinite(rew).all()
            ends += int(term.sum())
    finally:
        env.close()
    assert ends > 0


def test_sb3_monitor_and_frame_stack_over_episode_ends():
    venv = VecFrameStack(VecMonitor(ProcgenSB3VecEnv(ProcgenVecEnv(GAME, N, get_split("train"), rand_seed=3))), 4)
    rng, ends = np.random.default_rng(2), 0
    try:
        obs = venv.reset()
        assert obs.shape == (N, 64, 64, 12)  # 4 RGB frames stacked on the channel axis
        for _ in range(400):
            obs, _, dones, infos = venv.step(rng.integers(0, 15, N))
            for i in np.flatnonzero(dones):
                assert "episode" in infos[i] and infos[i]["episode"]["l"] > 0
                # the stack restarts with the new episode's first frame: older frames are zeroed
                assert not obs[i, ..., :9].any() and obs[i, ..., 9:].any()
                ends += 1
    finally:
        venv.close()
    assert ends > 0
