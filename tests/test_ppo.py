"""GAE and the PPO loss against references written independently of the implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.minibatches import Batch
from agents.ppo import explained_variance, normalise, policy_loss, ppo_loss, value_loss
from agents.rollout import compute_gae
from core.sections import PPOConfig


# ---- GAE ----------------------------------------------------------------------------------------
def gae_reference(rewards, values, dones, next_value, next_done, gamma, lam):
    """Per env, per t: A_t = sum_k (gamma lam)^k delta_{t+k}, summed until the episode ends.

    ``dones[t]`` says obs[t] starts a new episode, so the step t -> t+1 ends an episode when
    dones[t+1] (or next_done after the last step) is set.
    """
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    for idx in np.ndindex(rewards.shape[1:]):
        r = [rewards[(t, *idx)] for t in range(T)]
        v = [values[(t, *idx)] for t in range(T)] + [next_value[idx]]
        ends = [dones[(t + 1, *idx)] for t in range(T - 1)] + [next_done[idx]]
        for t in range(T):
            total, coef = 0.0, 1.0
            for k in range(t, T):
                bootstrap = 0.0 if ends[k] else gamma * v[k + 1]
                total += coef * (r[k] + bootstrap - v[k])
                if ends[k]:
                    break
                coef *= gamma * lam
            adv[(t, *idx)] = total
    return adv, adv + values


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_gae_matches_reference(dtype, tol):
    rng = np.random.default_rng(0)
    M, T, N = 2, 12, 3  # member-major rollouts: time is axis 1
    rewards = rng.normal(size=(M, T, N))
    values = rng.normal(size=(M, T, N))
    dones = (rng.random((M, T, N)) < 0.2).astype(np.float64)
    next_value = rng.normal(size=(M, N))
    next_done = (rng.random((M, N)) < 0.5).astype(np.float64)
    assert dones[:, 1:].sum() > 3 and 0 < next_done.sum() < M * N  # both paths are exercised

    t = lambda x: torch.tensor(x, dtype=dtype)
    adv, ret = compute_gae(rewards=t(rewards), values=t(values), episode_starts=t(dones), next_value=t(next_value),
                           next_episode_starts=t(next_done), gamma=0.99, gae_lambda=0.95)
    time_major = lambda x: np.moveaxis(x, 1, 0)  # the reference runs along axis 0
    ref_adv, ref_ret = gae_reference(time_major(rewards), time_major(values), time_major(dones),
                                     next_value, next_done, 0.99, 0.95)
    ref_adv, ref_ret = np.moveaxis(ref_adv, 0, 1), np.moveaxis(ref_ret, 0, 1)
    assert adv.shape == (M, T, N) and ret.shape == (M, T, N)
    np.testing.assert_allclose(adv.numpy(), ref_adv, atol=tol, rtol=0)
    np.testing.assert_allclose(ret.numpy(), ref_ret, atol=tol, rtol=0)


def test_gae_single_step_by_hand():
    # one step, no episode end: A = r + gamma * V' - V;  with an end: A = r - V
    # (M, T, N) = (1, 1, 2); next_value and next_episode_starts are (M, N)
    r, v, nv = torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[0.5, 0.5]]]), torch.tensor([[2.0, 2.0]])
    adv, ret = compute_gae(rewards=r, values=v, episode_starts=torch.zeros(1, 1, 2), next_value=nv,
                           next_episode_starts=torch.tensor([[0.0, 1.0]]), gamma=0.9, gae_lambda=0.95)
    np.testing.assert_allclose(adv.numpy(), [[[1.0 + 0.9 * 2.0 - 0.5, 1.0 - 0.5]]], atol=1e-6)
    np.testing.assert_allclose(ret.numpy(), [[[1.0 + 0.9 * 2.0, 1.0]]], atol=1e-6)


# ---- the PPO loss on a hand-made batch -----------------------------------------------------------
LOGITS = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 2.0, 0.0], [-1.0, 0.0, 1.0]]
ACTIONS = [0, 2, 1, 2]
RATIOS = [1.5, 0.6, 1.1, 1.3]  # new / old probability of the taken action
ADV = [1.0, -2.0, 0.5, -1.0]
OLD_VALUES = [0.0, 1.0, 2.0, -1.0]
NEW_VALUES = [0.5, 0.9, 3.0, -1.1]
RETURNS = [1.0, 0.0, 2.5, 0.0]


def log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def hand_batch() -> tuple[torch.Tensor, torch.Tensor, Batch]:
    old_logp = [log_softmax(l)[a] - math.log(r) for l, a, r in zip(LOGITS, ACTIONS, RATIOS)]
    f = lambda x: torch.tensor([x], dtype=torch.float32)
    mb = Batch(
        obs=torch.zeros(1, 4, 1), actions=torch.tensor([ACTIONS]), logprobs=f(old_logp),
        values=f(OLD_VALUES), advantages=f(ADV), returns=f(RETURNS), episode_starts=torch.zeros(1, 4),
    )
    return f(LOGITS), f(NEW_VALUES), mb


def entropy_ref() -> float:
    ents = []
    for row in LOGITS:
        lp = log_softmax(row)
        ents.append(-sum(math.exp(x) * x for x in lp))
    return sum(ents) / len(ents)


def cfg(**kw) -> PPOConfig:
    base = dict(clip_coef=0.2, ent_coef=0.01, vf_coef=0.5, clip_vloss=True, norm_adv="none")
    return PPOConfig(**{**base, **kw})


def pg_ref(adv, clip=0.2) -> float:
    terms = [max(-a * r, -a * min(max(r, 1 - clip), 1 + clip)) for a, r in zip(adv, RATIOS)]
    return sum(terms) / len(terms)


def test_ppo_loss_terms_by_hand():
    logits, values, mb = hand_batch()
    loss, terms = ppo_loss(logits, values, mb, cfg())
    # policy: max(-A r, -A clip(r)) per sample:
    #   A=1,  r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped);   A=-2, r=0.6 -> max(1.2, 1.6) = 1.6 (clipped)
    #   A=.5, r=1.1 -> -0.55 (inside the clip range);      A=-1, r=1.3 -> max(1.3, 1.2) = 1.3 (pessimistic)
    expected_pg = (-1.2 + 1.6 - 0.55 + 1.3) / 4
    assert expected_pg == pytest.approx(pg_ref(ADV))
    # value, clipped: squared errors max(unclipped, clipped) = [.64, .81, .25, 1.21]
    expected_v = 0.5 * (0.64 + 0.81 + 0.25 + 1.21) / 4
    expected_kl = np.mean([(r - 1) - math.log(r) for r in RATIOS])
    expected_ent = entropy_ref()
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
        assert terms[k].shape == (1,), k
    assert terms["policy_loss"].item() == pytest.approx(expected_pg, abs=1e-5)
    assert terms["value_loss"].item() == pytest.approx(expected_v, abs=1e-5)
    assert terms["entropy"].item() == pytest.approx(expected_ent, abs=1e-5)
    assert terms["approx_kl"].item() == pytest.approx(expected_kl, abs=1e-5)
    assert terms["clipfrac"].item() == pytest.approx(0.75)  # |r - 1| > 0.2 for 1.5, 0.6, 1.3
    total = expected_pg - 0.01 * expected_ent + 0.5 * expected_v
    assert loss.item() == pytest.approx(total, abs=1e-5)


def test_ppo_loss_without_value_clipping():
    logits, values, mb = hand_batch()
    loss, terms = ppo_loss(logits, values, mb, cfg(clip_vloss=False))
    expected_v = 0.5 * (0.25 + 0.81 + 0.25 + 1.21) / 4
    assert terms["value_loss"].item() == pytest.approx(expected_v, abs=1e-5)
    total = pg_ref(ADV) - 0.01 * entropy_ref() + 0.5 * expected_v
    assert loss.item() == pytest.approx(total, abs=1e-5)


def test_ppo_loss_minibatch_advantage_normalisation():
    logits, values, mb = hand_batch()
    _, terms = ppo_loss(logits, values, mb, cfg(norm_adv="minibatch"))
    a = np.array(ADV)
    normed = (a - a.mean()) / (a.std(ddof=1) + 1e-8)
    assert terms["policy_loss"].item() == pytest.approx(pg_ref(normed.tolist()), abs=1e-5)
    # "batch" normalisation happens in PPOAlgorithm.update, not in the loss: the loss sees raw advantages
    _, raw = ppo_loss(logits, values, mb, cfg(norm_adv="batch"))
    assert raw["policy_loss"].item() == pytest.approx(pg_ref(ADV), abs=1e-5)


def test_policy_and_value_terms_alone_by_hand():
    """The terms other algorithms reuse (IDAAC): the advantages as given, the value clip optional."""
    logits, values, mb = hand_batch()
    doubled = torch.tensor([[2 * a for a in ADV]])
    pi = policy_loss(logits, mb, doubled, clip_coef=0.05)
    assert pi.loss.item() == pytest.approx(pg_ref([2 * a for a in ADV], clip=0.05), abs=1e-5)
    assert pi.entropy.item() == pytest.approx(entropy_ref(), abs=1e-5)
    assert pi.clipfrac.item() == pytest.approx(1.0)  # every |r - 1| > 0.05
    # clipped at 0.05: the stored values move at most 0.05 towards the new ones
    clipped = [o + max(-0.05, min(0.05, n - o)) for o, n in zip(OLD_VALUES, NEW_VALUES)]
    expected = 0.5 * np.mean([max((n - r) ** 2, (c - r) ** 2) for n, c, r in zip(NEW_VALUES, clipped, RETURNS)])
    assert value_loss(values, mb, 0.05).item() == pytest.approx(expected, abs=1e-5)
    assert value_loss(values, mb, None).item() == pytest.approx(
        0.5 * np.mean([(n - r) ** 2 for n, r in zip(NEW_VALUES, RETURNS)]), abs=1e-5)


def test_ppo_loss_gradient_matches_hand_derivative():
    # d(loss)/d(value_s) for the unclipped value loss is vf_coef * (v_s - R_s) / B
    logits, values, mb = hand_batch()
    values.requires_grad_(True)
    loss, _ = ppo_loss(logits, values, mb, cfg(clip_vloss=False))
    loss.backward()
    expected = 0.5 * (np.array(NEW_VALUES) - np.array(RETURNS)) / 4
    np.testing.assert_allclose(values.grad[0].numpy(), expected, atol=1e-6)


def test_ppo_loss_is_sum_of_member_losses():
    logits, values, mb = hand_batch()
    loss_a, terms_a = ppo_loss(logits, values, mb, cfg())
    loss_b, terms_b = ppo_loss(logits, values + 1.0, mb, cfg())  # a member with other values
    two = Batch(*(torch.cat([t, t]) for t in vars(mb).values()))
    loss, terms = ppo_loss(torch.cat([logits, logits]), torch.cat([values, values + 1.0]), two, cfg())
    assert loss.item() == pytest.approx(loss_a.item() + loss_b.item(), abs=1e-5)
    assert loss_a.item() != pytest.approx(loss_b.item())
    for k in terms_a:
        torch.testing.assert_close(terms[k], torch.cat([terms_a[k], terms_b[k]]))


# ---- helpers ---------------------------------------------------------------------------------------
def test_normalise_is_per_member():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, generator=g) * torch.tensor([[1.0], [10.0], [0.1]]) + torch.tensor([[0.0], [5.0], [-3.0]])
    y = normalise(x)
    for m in range(3):
        row = x[m].numpy().astype(np.float64)
        ref = (row - row.mean()) / (row.std(ddof=1) + 1e-8)
        np.testing.assert_allclose(y[m].numpy(), ref, atol=1e-5)
    x2 = x.clone()
    x2[1] *= 1000.0  # another member's scale must not matter
    torch.testing.assert_close(normalise(x2)[0], y[0])
    torch.testing.assert_close(normalise(x2)[2], y[2])


def test_explained_variance_matches_numpy():
    rng = np.random.default_rng(3)
    returns = rng.normal(size=(3, 40))
    values = returns + rng.normal(scale=[[0.1], [1.0], [3.0]], size=(3, 40))
    ev = explained_variance(torch.tensor(values), torch.tensor(returns)).numpy()
    ref = [1 - np.var(returns[m] - values[m]) / np.var(returns[m]) for m in range(3)]
    np.testing.assert_allclose(ev, ref, atol=1e-10)
    assert ev[0] > 0.9 and ev[2] < 0
    # perfect predictions: 1; constant returns are handled without dividing by zero
    assert explained_variance(torch.tensor(returns), torch.tensor(returns)).numpy() == pytest.approx(1.0)
    flat = explained_variance(torch.zeros(1, 5), torch.ones(1, 5))
    assert torch.isfinite(flat).all()
