"""Tests of ``engine: rllib`` (training/engines/rllib.py, envs/rllib_env.py).

One tiny run on bigfish (random agents finish episodes within tens of steps there, so episode
metrics appear after a few updates): 4 envs x 8 steps, 3 updates, small CNN, fp32. RLlib is built
for the run and once more to resume it; Ray is shut down at the end of the module.
"""
from __future__ import annotations

from pathlib import Path

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
from evaluation.evaluate import evaluate_run
from launch.run import train_run
from training import checkpointing
from training.loop import train
from tests.conftest import make_small_cfg

ray = pytest.importorskip("ray")
from training.engines.rllib import RLlibLearner  # noqa: E402  (needs Ray)

RLLIB = ["engine=rllib", "env.game=bigfish", "network.precision=fp32", "ppo.total_steps=96"]
CLEANRL = ("charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
           "losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
           "losses/clipfrac", "losses/explained_variance")


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
    # procgen really took at least the batch's steps in every iteration (envs/rllib_env.py)
    assert all(v >= 32 for _, v in tags["charts/env_steps_sampled"])


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


def test_resume_continues_the_run(run: Config, resumed: RLlibLearner) -> None:
    assert resumed.update == 3 and resumed.global_step == 96
    train(resumed, resumed.cfg, resumed.runtime)
    agent = run.layout.member(0)
    assert checkpoint_steps(agent.checkpoints)[0] == 128
    assert [s for s, _ in scalars(agent)["losses/policy_loss"]] == [32, 64, 96, 128]


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
