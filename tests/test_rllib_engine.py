"""Tests of ``engine: rllib`` (training/engines/rllib.py, envs/rllib_env.py).

One tiny run on bigfish (random agents finish episodes within tens of steps there, so episode
metrics appear after a few updates): 4 envs x 8 steps, 3 updates, small CNN, fp32. RLlib is built
for the run, once more to resume it and once for one iteration on jumper levels that end on their
first step (procgen's SAME_STEP autoreset against RLlib's runner); Ray is shut down at the end of
the module.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.networks import NetworkSpec
from agents.population import seeded_network
from core.checkpoint import checkpoint_steps, load_latest
from core.config import Config, rllib_runner_layout
from core.run_layout import AgentDir
from core.runtime import Runtime
from envs.make import make_env
from envs.procgen_vec import ProcgenVecEnv
from evaluation.evaluate import evaluate_run
from launch.run import train_run
from tests.helpers import make_small_cfg
from training import checkpointing
from training.loop import train

ray = pytest.importorskip("ray")
from ray.rllib.algorithms.ppo import PPOConfig  # noqa: E402

from training.engines.rllib import RLlibLearner, SameStepEnvRunner  # noqa: E402  (needs Ray)

RLLIB = ["engine=rllib", "env.game=bigfish", "network.precision=fp32", "ppo.total_steps=96"]
CLEANRL = ("charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
           "losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
           "losses/clipfrac", "losses/explained_variance")
# Jumper levels 99, 100, 101: 99 and 101 end on their first step whatever the action (reward 0 and
# 10), 100 does not. One iteration of the size (16 envs x 64 steps).
JUMPER_FIRST_STEP_ENDS = ["engine=rllib", "env.game=jumper", "env.start_level=99", "env.num_levels=3",
                          "network.precision=fp32", "env.num_envs=16", "ppo.num_steps=64",
                          "ppo.total_steps=1024"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One torch thread (tiny batches on a shared 2-core machine); Ray shut down at the end."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Member 0 trained for 3 updates through the runner, as train.py does."""
    cfg = make_small_cfg(tmp_path_factory.mktemp("runs"), *RLLIB, name="rl")
    train_run(cfg)
    return cfg


@pytest.fixture(scope="module")
def resumed(run: Config):
    """The run re-opened with a budget of one more update (the 'extend a finished run' flow)."""
    cfg = make_small_cfg(run.runs_dir, *RLLIB, "ppo.total_steps=128", name=run.name)
    trainer = RLlibLearner(cfg, 0, Runtime.resolve("cpu", cfg.network.precision))
    assert checkpointing.restore(trainer)
    yield trainer
    trainer.close()


def real_observations(cfg: Config, steps: int = 5) -> torch.Tensor:
    env = make_env(cfg.env, 4, "train", rand_seed=7)
    obs, _ = env.reset(seed=7)
    frames = [obs]
    for _ in range(steps):
        obs = env.step(np.random.default_rng(0).integers(0, 15, 4))[0]
        frames.append(obs)
    env.close()
    return torch.from_numpy(np.concatenate(frames))


def load_agent_network(agent: AgentDir) -> tuple[torch.nn.Module, dict]:
    """The newest checkpoint of an agent and its network, in eval mode."""
    ckpt = load_latest(agent.checkpoints)
    assert ckpt is not None, f"no readable checkpoint in {agent.checkpoints}"
    net = NetworkSpec.from_dict(ckpt["network"]).build()
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def scalars(agent: AgentDir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(agent.tb)).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_train_run_writes_checkpoints_and_cleanrl_metrics(run: Config) -> None:
    agent = run.layout.member(0)
    assert checkpoint_steps(agent.checkpoints) == [96, 64, 32]
    net, ckpt = load_agent_network(agent)
    assert ckpt["update"] == 3 and ckpt["network"]["kind"] == "small" and "rllib" in ckpt
    tags = scalars(agent)
    missing = [t for t in CLEANRL if t not in tags]
    assert not missing, f"missing TensorBoard scalars {missing}; have {sorted(tags)}"
    assert [s for s, _ in tags["losses/policy_loss"]] == [32, 64, 96]
    assert tags["charts/learning_rate"][0][1] == pytest.approx(run.ppo.lr)


@pytest.mark.slow
def test_exported_network_matches_rllib_module(run: Config, resumed: RLlibLearner) -> None:
    """The checkpoint's plain ActorCritic and RLlib's modules (learner and env runner, the latter
    after the weights sync of a resume) give the same action probabilities on real frames."""
    obs = real_observations(run)
    net, ckpt = load_agent_network(run.layout.member(0))
    initial = seeded_network(net.spec, run.member_seeds[0], run.network.init).state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in ckpt["model"].items()), "not trained"
    with torch.no_grad():
        logits = net(obs)[0]
        learner = resumed.module.forward_inference({"obs": obs})["action_dist_inputs"]
        runner = resumed.algo.env_runner.module.forward_exploration({"obs": obs})["action_dist_inputs"]
    for theirs in (learner, runner):
        # Logits, not only probabilities: the actor head's gain of 0.01 makes every policy near uniform.
        torch.testing.assert_close(theirs, logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.softmax(theirs, -1), torch.softmax(logits, -1), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_resume_continues_the_run(run: Config, resumed: RLlibLearner) -> None:
    assert resumed.update == 3 and resumed.global_step == 96
    train(resumed, resumed.cfg, resumed.runtime)
    agent = run.layout.member(0)
    assert checkpoint_steps(agent.checkpoints)[0] == 128
    assert [s for s, _ in scalars(agent)["losses/policy_loss"]] == [32, 64, 96, 128]


@pytest.mark.slow
def test_eval_evaluates_rllib_run(run: Config) -> None:
    results = evaluate_run(run.layout.root, ["eval.modes=[member,vote]", "eval.episodes=4",
                                         "eval.num_envs=4", "device=cpu"])
    assert list(results["modes"]) == ["member", "vote"]
    assert [m["member"] for m in results["modes"]["member"]["members"]] == [0]
    assert results["modes"]["vote"]["episodes"] == 4


def test_runner_layout_splits_the_envs(tmp_path: Path) -> None:
    assert rllib_runner_layout(make_small_cfg(tmp_path, *RLLIB)) == (1, 4)
    assert rllib_runner_layout(make_small_cfg(tmp_path, *RLLIB, "rllib.num_env_runners=2")) == (2, 2)
    with pytest.raises(ValueError, match="num_envs_per_env_runner"):  # a ConfigError, raised by validation
        rllib_runner_layout(make_small_cfg(tmp_path, *RLLIB, "rllib.num_env_runners=3"))
    cfg = make_small_cfg(tmp_path, *RLLIB)
    cfg.rllib.num_env_runners = 3  # past validation: the layout function itself refuses it
    with pytest.raises(ValueError, match="num_envs_per_env_runner"):
        rllib_runner_layout(cfg)


def episode_key(episode: Any) -> tuple[bytes, int, float]:
    """An RLlib episode chunk as (first frame, length, return)."""
    return np.asarray(episode.get_observations(0)).tobytes(), len(episode), float(episode.get_return())


def procgen_episodes(cfg: Config, seed: int, actions: list[np.ndarray]) -> tuple[Counter, Counter]:
    """Replays ``actions`` on a fresh ``ProcgenVecEnv`` reset with ``seed``: the episodes procgen
    finished and the unfinished ones, each as (first frame, length, return) from its rewards and
    ``terminated`` flags alone."""
    e = cfg.env
    env = ProcgenVecEnv(e.game, e.num_envs, e.train_levels, e.distribution_mode, use_backgrounds=e.use_backgrounds)
    obs, _ = env.reset(seed=seed)
    first, length, ret = [o.tobytes() for o in obs], [0] * e.num_envs, [0.0] * e.num_envs
    finished, unfinished = Counter(), Counter()
    for a in actions:
        obs, reward, terminated, _, _ = env.step(a)
        for i in range(e.num_envs):
            length[i] += 1
            ret[i] += float(reward[i])
            if terminated[i]:  # SAME_STEP: obs[i] is already the next episode's first frame
                finished[(first[i], length[i], ret[i])] += 1
                first[i], length[i], ret[i] = obs[i].tobytes(), 0, 0.0
    env.close()
    unfinished.update((first[i], length[i], ret[i]) for i in range(e.num_envs) if length[i])
    return finished, unfinished


@pytest.mark.slow
def test_every_episode_procgen_finishes_is_logged_and_trained_on(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's input: jumper levels that end on their first step. RLlib's runner would take the
    step after each episode end as a reset and lose it; every episode procgen finishes must reach
    the logged returns and lengths, and every env step, with its reward, the train batch."""
    cfg = make_small_cfg(tmp_path, *JUMPER_FIRST_STEP_ENDS)
    learner = RLlibLearner(cfg, 0, Runtime.resolve("cpu", cfg.network.precision))
    try:
        runner = learner.algo.env_runner  # num_env_runners=0: sampling happens in this process
        env = runner.env.unwrapped
        seeds, actions, sampled = [], [], []
        reset, step, sample = env.reset, env.step, runner.sample

        def recording_reset(*, seed: int | None = None, options: dict | None = None) -> Any:
            seeds.append(seed)
            return reset(seed=seed, options=options)

        def recording_step(a: np.ndarray) -> Any:
            actions.append(np.array(a))
            return step(a)

        def recording_sample(*args: Any, **kwargs: Any) -> list:
            # Read at once: the learner's connectors append a bootstrap step to these episodes.
            episodes = sample(*args, **kwargs)
            sampled.extend((e.is_terminated, e.is_done, episode_key(e)) for e in episodes)
            return episodes

        monkeypatch.setattr(env, "reset", recording_reset)
        monkeypatch.setattr(env, "step", recording_step)
        monkeypatch.setattr(runner, "sample", recording_sample)
        result = learner.iterate()
    finally:
        learner.close()

    assert len(seeds) == 1 and seeds[0] is not None
    finished, unfinished = procgen_episodes(cfg, seeds[0], actions)
    one_step = sum(n for (_, length, _), n in finished.items() if length == 1)
    assert one_step >= 16 and any(r == 10 for (_, length, r) in finished if length == 1), \
        "the input no longer has one-step episodes with reward 10"

    # Logged: one return and one length per episode procgen finished (count, mean, values).
    returns = result.episodes.values["charts/episodic_return"]
    lengths = result.episodes.values["charts/episodic_length"]
    expected_returns = sorted(r for (_, _, r), n in finished.items() for _ in range(n))
    assert sorted(np.concatenate(returns).tolist()) == expected_returns
    assert sorted(np.concatenate(lengths).tolist()) == sorted(
        length for (_, length, _), n in finished.items() for _ in range(n))
    assert result.episodes.means("charts/episodic_return") == pytest.approx(np.mean(expected_returns))

    # Trained on: RLlib's episodes are procgen's, frame for frame at their starts, with every
    # step's reward (the first steps' included) and procgen's episode ends.
    assert len(actions) * cfg.env.num_envs == cfg.steps_per_update  # no env step spent on a reset
    assert sum(length for _, _, (_, length, _) in sampled) == cfg.steps_per_update
    assert Counter(key for terminated, _, key in sampled if terminated) == finished
    assert Counter(key for _, done, key in sampled if not done) == unfinished


@pytest.mark.slow
def test_same_step_runner_refuses_next_step_envs() -> None:
    """Gymnasium's own vector envs reset on the NEXT step: the runner must not treat them as procgen."""
    config = (PPOConfig().environment("CartPole-v1")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=2, gym_env_vectorize_mode="sync"))
    with pytest.raises(ValueError, match="SAME_STEP"):
        SameStepEnvRunner(config=config)


@pytest.mark.slow
def test_annealed_run_with_a_new_budget_warns_about_rllibs_schedule(tmp_path: Path, caplog) -> None:
    """RLlib's lr schedule runs over its env-step counter and the new budget: the user is told
    that it does not continue from the last rate as the native engines do."""
    import logging

    anneal = [*RLLIB, "ppo.anneal_lr=true", "ppo.total_steps=64"]
    cfg = make_small_cfg(tmp_path, *anneal, name="anneal")
    first = RLlibLearner(cfg, 0, Runtime.resolve("cpu", cfg.network.precision))
    try:
        first.update = 1  # as after one update: the schedule saved is that of a 2-update budget
        checkpointing.save(first, {})
    finally:
        first.close()
    longer = make_small_cfg(tmp_path, *anneal, "ppo.total_steps=128", name="anneal")
    second = RLlibLearner(longer, 0, Runtime.resolve("cpu", cfg.network.precision))
    try:
        with caplog.at_level(logging.WARNING, logger="expgen"):
            assert checkpointing.restore(second)
    finally:
        second.close()
    assert "member_0: the budget changed from 2 to 4 updates; RLlib anneals" in caplog.text
