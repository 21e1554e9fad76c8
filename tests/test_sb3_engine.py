"""Tests of ``engine: sb3`` (training/engines/sb3.py) and the SB3 VecEnv adapter (envs/sb3_vec_env.py).

Runs use bigfish, whose episodes a random agent ends in tens of steps (maze's last 500), so a few
tiny updates already contain finished episodes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecMonitor, VecVideoRecorder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.networks import ActorCritic, NetworkSpec
from agents.population import Population
from core.checkpoint import list_checkpoints, load_checkpoint, load_latest
from core.run_layout import AgentDir
from core.runtime import Runtime
from envs.levels import LevelRange, get_split
from envs.procgen_vec import ProcgenVecEnv
from envs.sb3_vec_env import ProcgenSB3VecEnv
from evaluation.evaluate import evaluate_run
from launch.run import train_run
from training import checkpointing
from training.engines.sb3 import SB3Learner

SB3 = ["engine=sb3", "env.game=bigfish", "network.precision=fp32"]
LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance")


pytestmark = pytest.mark.usefixtures("one_thread")


def scalars(agent: AgentDir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of an agent's TensorBoard directory (all event files), as (step, value) lists."""
    acc = EventAccumulator(str(agent.tb))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def bigfish(num_envs: int, seed: int) -> ProcgenVecEnv:
    return ProcgenVecEnv("bigfish", num_envs, get_split("train", LevelRange(0, 200)), rand_seed=seed)


# ---- the engine in the shared training loop ------------------------------------------------------


@pytest.mark.slow
def test_train_run_writes_checkpoints_and_cleanrl_metrics(small_cfg) -> None:
    cfg = small_cfg(*SB3, "ppo.num_steps=32", "ppo.total_steps=384", "ppo.anneal_lr=true",
                    "logging.eval_interval=3", "logging.eval_episodes=2", "logging.eval_splits=[test]")
    train_run(cfg)
    agent = cfg.layout.member(0)
    steps = [128, 256, 384]
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(agent.checkpoints)] == steps[::-1]
    logged = scalars(agent)
    for tag in [f"losses/{k}" for k in LOSSES] + ["charts/SPS", "charts/learning_rate"]:
        assert [s for s, _ in logged[tag]] == steps, tag
    assert abs(logged["losses/entropy"][0][1] - np.log(15)) < 1e-3  # a fresh policy is near uniform
    # anneal_lr follows the native schedule lr * (1 - update / num_updates).
    lrs = [v for _, v in logged["charts/learning_rate"]]
    assert np.allclose(lrs, [cfg.ppo.lr * (1 - u / 3) for u in range(3)])
    assert logged["charts/episodic_return"] and logged["charts/episodic_length"]
    assert [s for s, _ in logged["eval/test_return"]] == [0, 384]


def test_checkpoint_is_our_actor_critic_with_sb3_probabilities(small_cfg) -> None:
    cfg = small_cfg(*SB3, "ppo.num_steps=16", "ensemble.seeds=[7]")
    trainer = SB3Learner(cfg, 0, Runtime.resolve("cpu", cfg.network.precision))
    try:
        # Untrained, the SB3 policy is exactly the native member of the same seed.
        native = Population(trainer.spec, [7]).member_state_dict(0)
        exported = trainer.policy.actor_critic_state()
        assert exported.keys() == native.keys()
        assert all(torch.equal(exported[k], native[k]) for k in native)
        trainer.iterate()  # one rollout and update
        assert trainer.update == 1
        checkpointing.save(trainer, {})
        obs = trainer.model._last_obs  # real ProcGen frames, uint8 HWC
        with torch.no_grad():
            sb3_probs = trainer.policy.get_distribution(torch.as_tensor(obs)).distribution.probs
            sb3_values = trainer.policy.predict_values(torch.as_tensor(obs)).squeeze(-1)
    finally:
        trainer.close()
    ckpt = load_latest(cfg.layout.member(0).checkpoints)
    net = ActorCritic(NetworkSpec(**ckpt["network"]))
    net.load_state_dict(ckpt["model"])  # strict: exactly ActorCritic's keys
    assert not all(torch.equal(ckpt["model"][k], native[k]) for k in native)  # it did learn
    with torch.no_grad():
        logits, values = net(torch.as_tensor(obs))
    torch.testing.assert_close(torch.softmax(logits, -1), sb3_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(values, sb3_values, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_eval_evaluates_sb3_trained_members(small_cfg) -> None:
    cfg = small_cfg(*SB3, "ensemble.size=2", "explorer.enabled=false", "ppo.total_steps=32")
    train_run(cfg)
    results = evaluate_run(cfg.layout.root, ["eval.modes=[member,vote]", "eval.episodes=4",
                                         "eval.num_envs=4", "device=cpu"])
    members = results["modes"]["member"]["members"]
    assert [m["member"] for m in members] == [0, 1] and [m["step"] for m in members] == [32, 32]
    assert "vote" in results["modes"]


@pytest.mark.slow
def test_resume_continues_the_step_counter_exactly(small_cfg) -> None:
    half = small_cfg(*SB3, "ppo.total_steps=64", name="resumed")
    train_run(half)
    train_run(small_cfg(*SB3, "ppo.total_steps=128", name="resumed"))
    straight = small_cfg(*SB3, "ppo.total_steps=128", name="straight")
    train_run(straight)
    resumed_dir, straight_dir = half.layout.member(0), straight.layout.member(0)
    assert [s for s, _ in scalars(resumed_dir)["losses/policy_loss"]] == [32, 64, 96, 128]
    # Optimiser, random generators, ProcGen's state and SB3's episode starts were all restored:
    # the resumed run ends with the very weights of a run that was never interrupted.
    resumed, uninterrupted = load_latest(resumed_dir.checkpoints), load_latest(straight_dir.checkpoints)
    assert resumed["step"] == uninterrupted["step"] == 128
    for k, v in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][k], v), k


# ---- the VecEnv adapter alone --------------------------------------------------------------------


def test_vec_env_follows_sb3_contract() -> None:
    venv, twin = ProcgenSB3VecEnv(bigfish(4, seed=0)), bigfish(4, seed=3)
    monitor = VecMonitor(venv)
    assert monitor.seed(3)[0] == 3
    obs = monitor.reset()
    assert isinstance(obs, np.ndarray) and obs.shape == (4, 64, 64, 3) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, twin.reset(seed=3)[0])  # seed() took effect at reset
    rng, ours, theirs = np.random.default_rng(0), [], []
    for _ in range(300):
        actions = rng.integers(0, 15, 4)
        new_obs, rewards, dones, infos = monitor.step(actions)
        assert dones.dtype == bool and dones.shape == (4,) and rewards.dtype == np.float32
        assert isinstance(infos, list) and len(infos) == 4
        assert not any(info["TimeLimit.truncated"] for info in infos)
        for i in np.flatnonzero(dones):
            np.testing.assert_array_equal(infos[i]["terminal_observation"], obs[i])  # last frame seen
            assert isinstance(infos[i]["is_success"], bool)
            ours.append((infos[i]["episode"]["r"], infos[i]["episode"]["l"]))
        assert all("episode" not in infos[i] for i in np.flatnonzero(~dones))
        info = twin.step(actions)[4]
        if "episode_return" in info:
            mask = info["_episode_return"]
            theirs += list(zip(info["episode_return"][mask], info["episode_length"][mask]))
        obs = new_obs
    assert len(ours) >= 4 and ours == theirs  # VecMonitor's episodes are ProcGen's own
    assert monitor.get_attr("game") == ["bigfish"] * 4 and venv.env_is_wrapped(Monitor) == [False] * 4
    assert venv.render().shape == (128, 128, 3)  # 4 frames tiled 2 x 2
    with pytest.raises(ValueError, match="one batch"):
        venv.set_attr("game", "maze", indices=[0])
    monitor.close()
    twin.close()


def frame_stacked_steps(venv: VecEnv) -> None:
    """100 random steps of bigfish's 2 envs with 2 frames stacked: episodes end with stacked frames."""
    obs = venv.reset()
    assert obs.shape == (2, 64, 64, 6)
    for _ in range(100):
        _, _, dones, infos = venv.step(np.random.randint(0, 15, 2))
        for i in np.flatnonzero(dones):
            assert infos[i]["terminal_observation"].shape == (64, 64, 6)
    venv.close()


def test_sb3_video_recorder_over_stacked_frames(tmp_path: Path) -> None:
    # The recorded MP4 itself is checked in tests/test_wrappers.py::test_sb3_video_recorder_writes_a_real_mp4.
    pytest.importorskip("moviepy", reason="SB3's VecVideoRecorder needs moviepy, from the video extra: "
                        "pip install -e '.[dev,video]' (make test installs it)")
    venv = VecFrameStack(VecMonitor(ProcgenSB3VecEnv(bigfish(2, seed=0))), n_stack=2)
    frame_stacked_steps(VecVideoRecorder(venv, str(tmp_path), lambda step: step == 0, video_length=5))
    assert [p.name for p in tmp_path.glob("*.mp4")] == ["rl-video-step-0-to-step-5.mp4"]


def test_sb3_wrappers_and_algorithms_run_on_the_adapter() -> None:
    frame_stacked_steps(VecFrameStack(VecMonitor(ProcgenSB3VecEnv(bigfish(2, seed=0))), n_stack=2))
    # Any SB3 algorithm: the stock CNN policy, with SB3's own image transposing and scaling.
    model = PPO("CnnPolicy", VecMonitor(ProcgenSB3VecEnv(bigfish(2, seed=0))), n_steps=16, batch_size=16,
                n_epochs=1, seed=0, device="cpu").learn(64)
    assert model.num_timesteps == 64
    model.env.close()
