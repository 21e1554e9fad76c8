"""The member-algorithm seam (agents/algorithm.py): an algorithm added by one file and one
registration (tests/a2c.py, A2C) is trained by the population learner exactly as an independent
A2C step computes it, resumes from its checkpoint state, and gets from collection what it declares
(its reward transform, nothing by default) rather than what its name would have implied."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from agents.networks import NetworkSpec
from agents.registry import ALGORITHMS
from agents.rollout import ReturnScaler
from core.config import Config
from core.runtime import Runtime
from core.sections import ALGOS, IDAACConfig
from tests.a2c import A2CAlgorithm
from training.population_learner import PopulationLearner

pytestmark = pytest.mark.usefixtures("one_thread")


class ScaledA2C(A2CAlgorithm):
    """A2C that declares a reward transform: the reference's return scaling."""

    name = "a2c_scaled"
    reward_transform = ReturnScaler


@pytest.fixture
def registered(monkeypatch):
    """The one registration of each test-only algorithm; removed again after the test."""
    for cls in (A2CAlgorithm, ScaledA2C):
        monkeypatch.setitem(ALGORITHMS, cls.name, cls)


def learner_of(cfg: Config, algo: str, members: list[int]) -> PopulationLearner:
    # member.algo's choices (core/sections.py:Algo) are the built-in algorithms, which
    # test_registry_and_config_list_the_same_algorithms holds to the registry; a test-only one is
    # set on the loaded config.
    cfg.member.algo = algo
    return PopulationLearner(cfg, members, Runtime.resolve("cpu", "fp32"))


def gae(rewards, values, starts, next_value, next_start, gamma, lam):
    """CleanRL's GAE for one member's (T, N) rollout, in float64: advantages and returns."""
    T = len(rewards)
    adv, last = np.zeros_like(rewards), 0.0
    for t in reversed(range(T)):
        nonterminal = 1.0 - (next_start if t == T - 1 else starts[t + 1])
        next_v = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        adv[t] = last = delta + gamma * lam * nonterminal * last
    return adv, adv + values


def reference_a2c_step(net: nn.Module, obs, actions, adv, returns, s) -> dict[str, float]:
    """One A2C step written with torch.distributions and torch's own clipping and Adam."""
    logits, values = net(obs)
    dist = torch.distributions.Categorical(logits=logits)
    policy = -(adv * dist.log_prob(actions)).mean()
    value = 0.5 * ((values - returns) ** 2).mean()
    entropy = dist.entropy().mean()
    opt = torch.optim.Adam(net.parameters(), lr=s.lr, eps=s.adam_eps)
    opt.zero_grad()
    (policy - s.ent_coef * entropy + s.vf_coef * value).backward()
    nn.utils.clip_grad_norm_(net.parameters(), s.max_grad_norm)
    opt.step()
    return {"policy_loss": policy.item(), "value_loss": value.item(), "entropy": entropy.item()}


def test_registry_and_config_list_the_same_algorithms():
    assert tuple(ALGORITHMS) == ALGOS
    sections = {f.name for f in dataclasses.fields(Config)}
    for name, cls in ALGORITHMS.items():
        assert cls.name == name and cls.section in sections, name
    assert set(IDAACConfig.members) == {n for n, cls in ALGORITHMS.items() if cls.section == "idaac"}


def test_population_learner_trains_a_test_only_algorithm(small_cfg, registered):
    cfg = small_cfg("ensemble.size=2", "ppo.lr=1e-3", "ppo.max_grad_norm=0.1", "ppo.ent_coef=0.05")
    learner = learner_of(cfg, "a2c", [0, 1])
    spec = NetworkSpec.from_config(cfg.network)
    before = [learner.pop.member_state_dict(m) for m in range(2)]
    metrics = learner.iterate().metrics  # collect, GAE, the update
    ro, s = learner.ro, cfg.ppo
    for m in range(2):
        net = spec.build()
        net.load_state_dict(before[m])
        with torch.no_grad():  # the stored values came from these weights: the rollout's data
            next_value = net(learner.next_obs[m]).values
        adv, ret = gae(*(x[m].double().numpy() for x in (ro.rewards, ro.values, ro.episode_starts)),
                       next_value.double().numpy(), learner.next_episode_starts[m].double().numpy(),
                       s.gamma, s.gae_lambda)
        flat = lambda x: torch.as_tensor(x, dtype=torch.float32).flatten()
        expected = reference_a2c_step(net, ro.obs[m].flatten(0, 1), ro.actions[m].flatten(), flat(adv), flat(ret), s)
        for k, v in expected.items():
            assert metrics[k][m] == pytest.approx(v, rel=1e-4, abs=1e-6), (m, k)
        trained = learner.pop.member_state_dict(m)
        for k, v in net.state_dict().items():
            torch.testing.assert_close(trained[k], v, rtol=1e-4, atol=1e-6, msg=f"member {m} {k}")
            assert not torch.equal(trained[k], before[m][k]), f"member {m} {k} did not move"
    # Its checkpoint state: its name, its one optimiser in PPO's format, nothing IDAAC collects.
    state = learner.state(0)
    assert state["algo"] == "a2c" and isinstance(state["optimizer"], list)
    assert "reward_scaling" not in state and "frame_labels" not in state
    learner.close()


def test_test_only_algorithm_resumes_exactly(small_cfg, registered):
    straight = learner_of(small_cfg(), "a2c", [0])
    cut = learner_of(small_cfg(), "a2c", [0])
    for _ in range(2):
        straight.iterate()
    cut.iterate()
    resumed = learner_of(small_cfg(), "a2c", [0])
    resumed.load_state(0, {**cut.state(0), "update": cut.update})
    resumed.update = cut.update
    resumed.iterate()
    for (k, a), b in zip(straight.pop.member_state_dict(0).items(), resumed.pop.member_state_dict(0).values()):
        assert torch.equal(a, b), k
    for learner in (straight, cut, resumed):
        learner.close()


def test_collection_applies_the_declared_reward_transform_only(small_cfg, registered):
    """Same seeds, same first rollout: the algorithm without a transform stores the game's rewards
    (IDAAC's reward scaling, on in the config, is not applied to it); the one declaring
    ``ReturnScaler`` stores them scaled, step by step, per member."""
    overrides = ("env.game=chaser", "ensemble.size=2")
    raw = learner_of(small_cfg(*overrides), "a2c", [0, 1])
    scaled = learner_of(small_cfg(*overrides), "a2c_scaled", [0, 1])
    assert raw.cfg.idaac.reward_scaling
    raw.collect()
    scaled.collect()
    assert torch.equal(raw.ro.actions, scaled.ro.actions) and (raw.ro.rewards != 0).any()
    for m in range(2):
        transform = ReturnScaler(raw.cfg.env.num_envs)
        rewards, starts = raw.ro.rewards[m].numpy(), raw.ro.episode_starts[m].numpy()  # float32, as the game gives them
        ends = np.concatenate((starts[1:], raw.next_episode_starts[m, None].numpy()))  # the step ended an episode
        want = np.stack([transform(r, e) for r, e in zip(rewards, ends)])
        assert torch.equal(scaled.ro.rewards[m], torch.as_tensor(want, dtype=torch.float32)), m
    assert "reward_scaling" in scaled.state(0)
    for learner in (raw, scaled):
        learner.close()
