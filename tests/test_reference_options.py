"""The options that reproduce the authors' code: whole-sequence minibatches for the reward agents,
their initialisation, their controller lookup for an anchor action in no class, the test split
derived from the training range."""
from __future__ import annotations

import math

import pytest
import torch

from agents.controller import FOUR_CLASSES, ExpGenController, reference_votes
from agents.minibatches import Batch, SequenceMinibatches
from agents.networks import NetworkSpec
from agents.population import Population
from agents.ppo import ppo_loss
from agents.sampling import make_generators
from core.sections import ConfigError, ExpGenConfig, PPOConfig
from envs.levels import LevelRange, get_split
from tests.helpers import member_network

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny batches on a shared 2-core CPU


def _batch(m: int, t: int, n: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    f = lambda: torch.randn(m, t, n, generator=g)
    return Batch(obs=torch.randint(0, 256, (m, t, n, 64, 64, 3), generator=g, dtype=torch.uint8),
                 actions=torch.randint(0, 15, (m, t, n), generator=g), logprobs=-torch.rand(m, t, n, generator=g) * 3,
                 values=f(), advantages=f(), returns=f(), episode_starts=(torch.rand(m, t, n, generator=g) < 0.1).float())


def test_sequence_minibatch_loss_equals_the_loss_of_the_same_samples():
    """A minibatch of whole env sequences is a set of samples: per member, PPO's loss on it equals
    the loss on those samples picked from the flat (M, T*N) batch by index."""
    m, t, n, k = 2, 5, 8, 4
    pop = Population(NetworkSpec(kind="small", hidden=32), [0, 1], "loop")
    batch, cfg = _batch(m, t, n), PPOConfig(norm_adv="minibatch")
    strategy = SequenceMinibatches(make_generators([0, 1], "cpu", salt=2))
    seen = torch.zeros(m, n, dtype=torch.long)
    with torch.no_grad():
        for mb in strategy(batch, epochs=1, num_minibatches=k):
            assert mb.batch.actions.shape == (m, t, n // k)
            flat = mb.batch.flat()
            _, terms = ppo_loss(*pop(flat.obs), flat, cfg)
            # the same samples, by index into the flat batch: sample (t, e) is t * N + e
            idx = (torch.arange(t).view(1, t, 1) * n + mb.envs.unsqueeze(1)).flatten(1)
            ref = batch.flat().select(idx)
            _, ref_terms = ppo_loss(*pop(ref.obs), ref, cfg)
            for key in terms:
                torch.testing.assert_close(terms[key], ref_terms[key], rtol=1e-5, atol=1e-6)
            seen.scatter_add_(1, mb.envs, torch.ones_like(mb.envs))
    assert (seen == 1).all()  # every env sequence of every member exactly once per epoch


def test_each_member_draws_its_own_sequence_order():
    batch = _batch(2, 3, 8)
    orders = [mb.envs for mb in SequenceMinibatches(make_generators([0, 1], "cpu", salt=2))(batch, 1, 2)]
    alone = [mb.envs for mb in SequenceMinibatches(make_generators([1], "cpu", salt=2))(
        Batch(*(getattr(batch, f)[1:] for f in batch.__dataclass_fields__)), 1, 2)]
    for both, one in zip(orders, alone):
        assert torch.equal(both[1:], one)  # member 1's order does not depend on member 0


def test_reference_init_statistics():
    spec = NetworkSpec(kind="impala", recurrent=True)
    net = member_network(Population(spec, [3], init="reference"), 0)
    default = member_network(Population(spec, [3]), 0)
    for layer in net.trunk.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.count_nonzero(layer.bias) == 0
            fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert layer.weight.abs().max() <= bound + 1e-6
            assert layer.weight.std() > 0.5 * bound / math.sqrt(3)  # uniform on [-b, b]: std b/sqrt(3)
    for name, p in net.gru.named_parameters():
        if name.startswith("bias"):
            assert torch.count_nonzero(p) == 0
        else:  # (3H, H): orthonormal columns
            torch.testing.assert_close(p.T @ p, torch.eye(p.shape[1]), atol=1e-4, rtol=0)
    # heads keep their orthogonal init: identical to the default network's heads' statistics
    assert torch.count_nonzero(net.actor.bias) == 0
    torch.testing.assert_close(net.actor.weight.norm(), default.actor.weight.norm(), rtol=0.05, atol=0)
    # default torch init has non-zero trunk biases: the option really changes something
    assert any(torch.count_nonzero(l.bias) for l in default.trunk.modules() if isinstance(l, torch.nn.Conv2d))


def test_reference_init_is_seeded():
    spec = NetworkSpec(kind="small")
    a = Population(spec, [5], init="reference").member_state_dict(0)
    b = Population(spec, [5], init="reference").member_state_dict(0)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("actions, up_votes, exact_votes", [
    ([4, 5, 5], 2, 1),  # anchor noop: the authors count the members choosing "up"
    ([4, 4, 1], 0, 2),  # ... which can be zero even when others copy the anchor exactly
    ([9, 9, 5], 1, 2),  # a special key is in no 4-class class either
    ([7, 6, 5], 2, 2),  # a classed anchor ("right") is unaffected by the option
])
def test_unclassed_anchor_votes(actions, up_votes, exact_votes):
    a = torch.tensor(actions).unsqueeze(1)  # (M, 1)
    assert reference_votes(a, FOUR_CLASSES, "up").item() == up_votes
    assert reference_votes(a, FOUR_CLASSES, "exact").item() == exact_votes


def test_unclassed_anchor_executes_the_anchor_action_on_consensus():
    ctrl = ExpGenController(ExpGenConfig(threshold=2, unclassed_anchor="up"), 1, game="maze")  # 4 classes
    out = ctrl.step(torch.tensor([[4], [5], [5]]), torch.tensor([1]))
    assert bool(out.consensus) and not bool(out.explored) and out.action.item() == 4


@pytest.mark.parametrize("start, num, test", [(0, 200, (201, 200)), (0, 500, (501, 500)),
                                              (1000, 50, (1051, 50)), (7, 1, (9, 1))])
def test_test_split_follows_the_training_range(start, num, test):
    train = LevelRange(start, num)
    split = get_split("test", train)
    assert (split.start_level, split.num_levels) == test
    assert not any(train.contains(s) for s in (split.start_level, split.start_level + split.num_levels - 1))
    assert split.start_level == start + num + 1  # the authors' one-level gap


def test_no_test_split_when_training_on_every_level(small_cfg):
    with pytest.raises(ConfigError, match="env.num_levels=0"):
        small_cfg("env.num_levels=0")
    with pytest.raises(ConfigError, match="eval.split=test"):
        small_cfg("env.num_levels=0", "logging.eval_splits=[train]")
    # every level is a training level: test-full holds unseen levels only under the raw seed rule
    with pytest.raises(ConfigError, match="eval.unseen=none"):
        small_cfg("env.num_levels=0", "logging.eval_splits=[train]", "eval.split=test-full")
    small_cfg("env.num_levels=0", "logging.eval_splits=[train]", "eval.split=test-full", "eval.unseen=none")


def test_sequences_need_whole_env_minibatches(small_cfg):
    with pytest.raises(ConfigError, match="ppo.minibatch=sequences"):
        small_cfg("ppo.minibatch=sequences", "env.num_envs=6", "ppo.num_minibatches=4")
    with pytest.raises(ConfigError, match="native engine"):
        small_cfg("ppo.minibatch=sequences", "engine=sb3")
