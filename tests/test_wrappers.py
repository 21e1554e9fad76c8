"""Our envs under the standard wrappers users reach for: gymnasium's vector wrappers and SB3's."""
from __future__ import annotations

from pathlib import Path

# isort: off
# Our env modules before SB3: importing them silences gym's import banner (envs/procgen_vec.py).
from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv
from envs.sb3_vec_env import RENDER_FPS, ProcgenSB3VecEnv

import imageio.v3 as iio
import numpy as np
import pytest
from gymnasium.wrappers.vector import ClipReward, NormalizeReward, RecordEpisodeStatistics
from stable_baselines3.common.vec_env import VecFrameStack, VecMonitor, VecVideoRecorder
# isort: on

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


def test_sb3_video_recorder_writes_a_real_mp4(tmp_path: Path):
    """SB3's VecVideoRecorder on our adapter, with the real moviepy of the ``video`` extra (no stand-in):
    the MP4 holds the recorded frames, 2 envs' 64x64 observations tiled one above the other."""
    pytest.importorskip("moviepy", reason="SB3's VecVideoRecorder needs moviepy, from the video extra: "
                        "pip install -e '.[dev,video]' (make test installs it)")
    # 10 frames: moviepy 2.2 sums 1/fps per frame and truncates, so at 15 fps many other counts
    # (6, 7, 12-15, 24-31, ...) lose their last frame in the file; 10 is written whole
    length = 9
    venv = VecMonitor(ProcgenSB3VecEnv(ProcgenVecEnv(GAME, 2, get_split("train"), rand_seed=4)))
    recorder = VecVideoRecorder(venv, str(tmp_path), lambda step: step == 0, video_length=length, name_prefix="pg")
    rng, shown = np.random.default_rng(3), []
    try:
        recorder.seed(4)
        recorder.reset()
        shown.append(venv.render())
        for _ in range(length + 3):  # the recorder saves after length + 1 frames and records no more
            recorder.step(rng.integers(0, 15, 2))
            shown.append(venv.render())
    finally:
        recorder.close()
    (path,) = tmp_path.glob("*.mp4")
    assert path.name == f"pg-step-0-to-step-{length}.mp4"
    frames = iio.imread(path, plugin="pyav")  # decoded with PyAV, independently of moviepy
    meta = iio.immeta(path, plugin="pyav")
    assert frames.shape == (length + 1, 128, 64, 3) and frames.dtype == np.uint8
    assert meta["fps"] == RENDER_FPS
    # H.264 is lossy: each decoded frame is close to the frame shown at its step (a mean error of
    # 4-6 of 255), and far from it with the two envs' halves swapped (25-80)
    decoded, shown = frames.astype(np.float32), np.asarray(shown[: length + 1], np.float32)
    err = np.abs(decoded - shown).mean(axis=(1, 2, 3))
    swapped = np.abs(decoded - np.concatenate([shown[:, 64:], shown[:, :64]], axis=1)).mean(axis=(1, 2, 3))
    assert (err < 8).all() and (swapped > 3 * err).all(), (err.round(1), swapped.round(1))
