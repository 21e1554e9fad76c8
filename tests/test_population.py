"""The stacked-parameter population: a member in a population of M is trained exactly as alone."""
from __future__ import annotations

import pytest
import torch

from agents.algorithm import UpdateInput
from agents.minibatches import Batch, SampleMinibatches
from agents.networks import NetworkSpec
from agents.population import Population, clip_grad_norms_
from agents.ppo import PPOAlgorithm
from agents.sampling import make_generators
from core.sections import PPOConfig
from tests.helpers import member_network

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny batches on a shared 2-core CPU

SMALL = NetworkSpec(kind="small")
SEEDS = [3, 7, 11]
SAMPLES = 64
STEPS = 8  # a rollout of STEPS x SAMPLES // STEPS envs per member


def frames(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*shape, 64, 64, 3), generator=g, dtype=torch.uint8)


def seeded(spec: NetworkSpec, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return spec.build()


def test_population_members_equal_separately_seeded_networks():
    pop = Population(SMALL, SEEDS, forward_mode="loop")
    obs = frames(3, 5)
    logits, values = pop(obs)
    assert logits.shape == (3, 5, 15) and values.shape == (3, 5)
    for m, s in enumerate(SEEDS):
        net = seeded(SMALL, s)
        ref_logits, ref_values = net(obs[m])
        torch.testing.assert_close(logits[m], ref_logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(values[m], ref_values, rtol=0, atol=1e-6)
        for k, v in net.state_dict().items():
            torch.testing.assert_close(pop.member_state_dict(m)[k], v, rtol=0, atol=0)
    # members differ from each other
    assert not torch.allclose(logits[0], logits[1])


def test_population_construction_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Population(SMALL, SEEDS)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("kind", ["small", "impala"])
def test_vmap_and_loop_forward_agree(kind):
    spec = NetworkSpec(kind=kind)
    loop = Population(spec, SEEDS, forward_mode="loop")
    vmapped = Population(spec, SEEDS, forward_mode="vmap")
    obs = frames(3, 2 if kind == "impala" else 6, seed=1)
    out_l, out_v = loop(obs), vmapped(obs)
    for a, b in zip(out_l, out_v):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # gradients agree too
    (out_l[0].square().sum() + out_l[1].sum()).backward()
    (out_v[0].square().sum() + out_v[1].sum()).backward()
    for p, q in zip(loop.member_params(), vmapped.member_params()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)


def test_member_state_dict_round_trip():
    pop = Population(SMALL, SEEDS)
    other = Population.from_state_dicts(SMALL, [pop.member_state_dict(m) for m in (2, 0)])
    obs = frames(3, 4, seed=2)
    torch.testing.assert_close(other(obs[[2, 0]])[0], pop(obs)[0][[2, 0]])
    net = member_network(pop, 1)
    torch.testing.assert_close(net(obs[1])[0], pop(obs)[0][1])
    with pytest.raises(ValueError, match="keys"):
        pop.load_member_state_dict(0, {"trunk.0.weight": torch.zeros(1)})


# ---- training equivalence and independence --------------------------------------------------------
def synthetic_batches(members: int, updates: int = 2) -> list[Batch]:
    """Different random data for every member and update, (M, T, N, ...) with T * N = SAMPLES."""
    out = []
    for u in range(updates):
        g = torch.Generator().manual_seed(100 + u)
        n = (members, STEPS, SAMPLES // STEPS)
        out.append(Batch(
            obs=frames(*n, seed=200 + u),
            actions=torch.randint(0, 15, n, generator=g),
            logprobs=torch.log(torch.full(n, 1 / 15)) + 0.1 * torch.randn(n, generator=g),
            values=torch.randn(n, generator=g),
            advantages=torch.randn(n, generator=g) * 2,
            returns=torch.randn(n, generator=g) * 3,
            episode_starts=torch.zeros(n),
        ))
    return out


def member_slice(batch: Batch, members: list[int]) -> Batch:
    return Batch(*(t[members].clone() for t in vars(batch).values()))


def ppo_cfg(**kw) -> PPOConfig:
    return PPOConfig(**{"epochs": 2, "num_minibatches": 4, "lr": 1e-3, "max_grad_norm": 0.5, **kw})


def train(seeds: list[int], batches: list[Batch], cfg: PPOConfig, mode: str = "loop"):
    """One PPO update per batch on a fresh population; returns (population, per-update metrics)."""
    algo = PPOAlgorithm(cfg, SMALL, seeds, mode, False, torch.device("cpu"),
                        SampleMinibatches(make_generators(seeds, "cpu", salt=2)))
    forward = lambda mb: algo.pop(mb.batch.flat().obs)
    metrics = [algo.update(UpdateInput(b, forward, u)) for u, b in enumerate(batches)]
    return algo.pop, metrics


@pytest.mark.parametrize("mode, norm_adv", [("loop", "batch"), ("loop", "minibatch"), ("vmap", "batch")])
def test_member_in_population_equals_member_alone(mode, norm_adv):
    cfg = ppo_cfg(norm_adv=norm_adv)
    data = synthetic_batches(3)
    pop, metrics = train(SEEDS, [member_slice(b, [0, 1, 2]) for b in data], cfg, mode)
    for m, s in enumerate(SEEDS):
        alone, alone_metrics = train([s], [member_slice(b, [m]) for b in data], cfg, "loop")
        for k, v in alone.member_state_dict(0).items():
            torch.testing.assert_close(pop.member_state_dict(m)[k], v, rtol=0, atol=1e-5, msg=f"member {m} {k}")
        for u in range(len(data)):
            for k, v in alone_metrics[u].items():
                torch.testing.assert_close(metrics[u][k][m], v[0], rtol=1e-5, atol=1e-5, msg=f"{k} update {u}")
    # and training did something
    start = Population(SMALL, SEEDS).member_state_dict(0)
    assert any(not torch.allclose(start[k], v) for k, v in pop.member_state_dict(0).items())


@pytest.mark.parametrize("mode", ["loop", "vmap"])
@pytest.mark.parametrize("poison", [float("nan"), 1e12])
def test_poisoned_member_does_not_affect_others(mode, poison):
    cfg = ppo_cfg(epochs=1)
    clean = synthetic_batches(3, updates=1)
    bad = [member_slice(b, [0, 1, 2]) for b in clean]
    bad[0].advantages[1] = poison
    bad[0].returns[1] = poison
    ref, ref_metrics = train(SEEDS, [member_slice(b, [0, 1, 2]) for b in clean], cfg, mode)
    got, got_metrics = train(SEEDS, bad, cfg, mode)
    for m in (0, 2):
        for k, v in ref.member_state_dict(m).items():
            torch.testing.assert_close(got.member_state_dict(m)[k], v, rtol=0, atol=1e-6, msg=f"member {m} {k}")
        for k, v in ref_metrics[0].items():
            torch.testing.assert_close(got_metrics[0][k][m], v[m], msg=k)
    # the poisoned member itself did see it
    assert not torch.allclose(got_metrics[0]["value_loss"][1], ref_metrics[0]["value_loss"][1], equal_nan=False)
    for m in (0, 2):
        assert all(torch.isfinite(p[m]).all() for p in got.member_params())


def test_clip_grad_norms_is_per_member():
    g = torch.Generator().manual_seed(0)
    a = torch.zeros(3, 4, 5, requires_grad=True)
    b = torch.zeros(3, 7, requires_grad=True)
    a.grad = torch.randn(3, 4, 5, generator=g)
    b.grad = torch.randn(3, 7, generator=g)
    a.grad[1] *= 1e12
    b.grad[2, 0] = float("nan")
    before_a, before_b = a.grad.clone(), b.grad.clone()
    norms = clip_grad_norms_([a, b], max_norm=0.5)
    for m in range(3):
        ref = torch.cat([before_a[m].flatten(), before_b[m].flatten()]).norm()
        if m == 2:
            assert torch.isnan(norms[m])
            continue
        torch.testing.assert_close(norms[m], ref, rtol=1e-5, atol=0)
        scale = min(1.0, 0.5 / (ref.item() + 1e-6))
        torch.testing.assert_close(a.grad[m], before_a[m] * scale)
        torch.testing.assert_close(b.grad[m], before_b[m] * scale)
    assert torch.cat([a.grad[1].flatten(), b.grad[1].flatten()]).norm().item() == pytest.approx(0.5, rel=1e-4)
    # a small gradient is left alone
    c = torch.zeros(2, 3, requires_grad=True)
    c.grad = torch.full((2, 3), 0.01)
    clip_grad_norms_([c], max_norm=0.5)
    torch.testing.assert_close(c.grad, torch.full((2, 3), 0.01))


def test_adam_after_poisoned_gradient_keeps_other_members():
    """clip_grad_norms_ + Adam: a NaN gradient in member 0 changes member 0 only."""

    def step(poison: bool) -> torch.Tensor:
        w = torch.nn.Parameter(torch.ones(3, 4))
        opt = torch.optim.Adam([w], lr=0.1)
        for i in range(3):
            opt.zero_grad()
            w.grad = torch.arange(12.0).view(3, 4) * (i + 1)
            if poison and i == 1:
                w.grad[0, 2] = float("nan")
            clip_grad_norms_([w], 0.5)
            opt.step()
        return w.detach()

    clean, poisoned = step(False), step(True)
    torch.testing.assert_close(poisoned[1:], clean[1:], rtol=0, atol=0)
    assert torch.isnan(poisoned[0]).any()
