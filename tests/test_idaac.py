"""IDAAC and DAAC members against the reference (rraileanu/idaac at 2fe3020, ppo_daac_idaac/):
network sizes, the networks on ProcGen frames against a transcription of model.py, the per-game
table, the pairing rule, the optimiser-step schedule, each loss term and
every parameter after one discriminator, one policy and one value step (a line-by-line
transcription of algo/idaac.py ``IDAAC.update`` below), and the population, checkpoint and
config contracts through the real learner.
"""
from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from agents.algorithm import UpdateInput
from agents.idaac import DAACAlgorithm, IDAACAlgorithm, IDAACSpec, draw_pairs, frame_labels, idaac_settings
from agents.minibatches import Batch, Minibatch, SampleMinibatches
from agents.networks import NetworkSpec, build_trunk, run_trunk
from agents.population import Population
from agents.registry import member_spec, spec_from_dict
from agents.rollout import ReturnScaler
from core.checkpoint import CheckpointError, load_latest, save_checkpoint
from core.config import ConfigError, load_config
from envs.games import GAMES, IDAACSettings
from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv
from launch.run import train_run
from tests.helpers import member_network

pytestmark = pytest.mark.usefixtures("one_thread")

# hyperparams.py of the reference, as it is written there (rraileanu/idaac, hyperparams.py).
REF_VALUE_EPOCH = {'plunder': 1, 'chaser': 1, 'miner': 9, 'climber': 9, 'bigfish': 9, 'dodgeball': 9,
                   'maze': 9, 'leaper': 9, 'fruitbot': 9, 'bossfight': 9, 'jumper': 9, 'ninja': 9,
                   'starpilot': 9, 'coinrun': 9, 'heist': 9, 'caveflyer': 9}
REF_VALUE_FREQ = {'plunder': 8, 'chaser': 1, 'miner': 32, 'climber': 1, 'bigfish': 32, 'dodgeball': 32,
                  'maze': 1, 'leaper': 1, 'fruitbot': 1, 'bossfight': 1, 'jumper': 1, 'ninja': 1,
                  'starpilot': 1, 'coinrun': 1, 'heist': 1, 'caveflyer': 1}
REF_ADV_LOSS_COEF = {'plunder': 0.3, 'chaser': 0.15, 'miner': 0.25, 'climber': 0.05, 'bigfish': 0.05,
                     'dodgeball': 0.25, 'maze': 0.25, 'leaper': 0.25, 'fruitbot': 0.25, 'bossfight': 0.25,
                     'jumper': 0.25, 'ninja': 0.25, 'starpilot': 0.25, 'coinrun': 0.25, 'heist': 0.25,
                     'caveflyer': 0.25}
REF_ORDER_LOSS_COEF = {'plunder': 0.1, 'chaser': 0.001, 'miner': 0.1, 'climber': 0.001, 'bigfish': 0.01,
                       'dodgeball': 0.001, 'maze': 0.001, 'leaper': 0.001, 'fruitbot': 0.001,
                       'bossfight': 0.001, 'jumper': 0.001, 'ninja': 0.001, 'starpilot': 0.001,
                       'coinrun': 0.001, 'heist': 0.001, 'caveflyer': 0.001}
REF_CLF_HIDDEN_SIZE = {'plunder': 4, 'chaser': 4, 'miner': 64, 'climber': 64, 'bigfish': 4, 'dodgeball': 64,
                       'maze': 4, 'leaper': 4, 'fruitbot': 4, 'bossfight': 4, 'jumper': 4, 'ninja': 4,
                       'starpilot': 4, 'coinrun': 4, 'heist': 4, 'caveflyer': 4}
REF_NONLIN_ENVS = ['miner', 'bigfish', 'dodgeball', 'climber']


def cfg_of(*overrides: str):
    return load_config(None, ["device=cpu", "ray=false", "network.kind=small", "member.algo=idaac",
                              "explorer.enabled=false", *overrides])


def build(cls, cfg, minibatches, seeds=(7,)):
    """``cls`` (IDAAC or DAAC) with ``cfg``'s idaac settings in force, on the CPU."""
    settings = idaac_settings(cfg.idaac, cfg.env.game)
    return cls(settings, cls.member_spec(cfg.network, settings), list(seeds), "loop", False, torch.device("cpu"),
               minibatches)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_reference():
    net = IDAACSpec().build()  # IMPALA 16-32-32, 256 features, 15 actions
    assert (n_params(net.policy), n_params(net.value), n_params(net.discriminator)) == (626_271, 622_401, 1_026)
    assert n_params(IDAACSpec(discriminator_hidden=4).build().discriminator) == 2_062
    assert n_params(IDAACSpec(discriminator_hidden=64).build().discriminator) == 32_962
    assert not hasattr(IDAACSpec(algo="daac", discriminator_hidden=-1).build(), "discriminator")


# model.py of the reference (rraileanu/idaac, 2fe3020, ppo_daac_idaac/), its networks as written
# there (initialisation left out: the weights are loaded from ours). Note BasicBlock.forward: its
# ReLU is in place, so it rewrites x, which ``identity`` also names.
class Conv2d_tf(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super(Conv2d_tf, self).__init__(*args, **kwargs)
        self.padding = kwargs.get("padding", "SAME")

    def _compute_padding(self, input, dim):
        input_size = input.size(dim + 2)
        filter_size = self.weight.size(dim + 2)
        effective_filter_size = (filter_size - 1) * self.dilation[dim] + 1
        out_size = (input_size + self.stride[dim] - 1) // self.stride[dim]
        total_padding = max(0, (out_size - 1) * self.stride[dim] + effective_filter_size - input_size)
        additional_padding = int(total_padding % 2 != 0)
        return additional_padding, total_padding

    def forward(self, input):
        if self.padding == "VALID":
            return F.conv2d(input, self.weight, self.bias, self.stride, padding=0, dilation=self.dilation,
                            groups=self.groups)
        rows_odd, padding_rows = self._compute_padding(input, dim=0)
        cols_odd, padding_cols = self._compute_padding(input, dim=1)
        if rows_odd or cols_odd:
            input = F.pad(input, [0, cols_odd, 0, rows_odd])
        return F.conv2d(input, self.weight, self.bias, self.stride, padding=(padding_rows // 2, padding_cols // 2),
                        dilation=self.dilation, groups=self.groups)


class BasicBlock(nn.Module):
    def __init__(self, n_channels, stride=1):
        super(BasicBlock, self).__init__()
        self.conv1 = Conv2d_tf(n_channels, n_channels, kernel_size=3, stride=1, padding=(1, 1))
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = Conv2d_tf(n_channels, n_channels, kernel_size=3, stride=1, padding=(1, 1))
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(x)
        out = self.conv1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out += identity
        return out


class RefFlatten(nn.Module):
    def forward(self, x):
        return x.reshape(x.size(0), -1)


class RefResNet(nn.Module):
    """``PolicyResNetBase`` (``num_actions`` > 0) or ``ValueResNet`` (``num_actions`` = 0)."""

    def __init__(self, num_inputs, hidden_size=256, channels=(16, 32, 32), num_actions=0):
        super().__init__()
        self.num_actions = num_actions
        self.layer1 = self._make_layer(num_inputs, channels[0])
        self.layer2 = self._make_layer(channels[0], channels[1])
        self.layer3 = self._make_layer(channels[1], channels[2])
        self.flatten = RefFlatten()
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2048, hidden_size)
        self.critic_linear = nn.Linear(hidden_size + num_actions, 1)

    def _make_layer(self, in_channels, out_channels, stride=1):
        layers = []
        layers.append(Conv2d_tf(in_channels, out_channels, kernel_size=3, stride=1))
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        layers.append(BasicBlock(out_channels))
        layers.append(BasicBlock(out_channels))
        return nn.Sequential(*layers)

    def forward(self, inputs, actions=None):
        x = inputs
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.relu(self.flatten(x))
        x = self.relu(self.fc(x))
        if self.num_actions == 0:  # ValueResNet
            return self.critic_linear(x)
        if actions is None:
            onehot_actions = torch.zeros(x.shape[0], self.num_actions).to(x.device)
        else:
            onehot_actions = F.one_hot(actions.squeeze(1), self.num_actions).float()
        gae_inputs = torch.cat((x, onehot_actions), dim=1)
        return self.critic_linear(gae_inputs), x


def reference_names(ours: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """Our trunk + head names -> model.py's: trunk.s.conv -> layer{s+1}.0, trunk.s.res{r}.conv{c} ->
    layer{s+1}.{2+r}.conv{c+1}, trunk.5 (the Linear) -> fc, ``head`` -> critic_linear."""
    out = {}
    for name, value in ours.items():
        parts = name.split(".")
        if parts[0] == head:
            out["critic_linear." + parts[1]] = value
        elif parts[1] == "5":
            out["fc." + parts[2]] = value
        elif parts[2] == "conv":
            out[f"layer{int(parts[1]) + 1}.0.{parts[3]}"] = value
        elif parts[0] == "trunk":
            block, conv = int(parts[2][3:]), int(parts[3][4:])
            out[f"layer{int(parts[1]) + 1}.{2 + block}.conv{conv + 1}.{parts[4]}"] = value
    return out


def procgen_frames(game: str, envs: int = 8, steps: int = 7) -> np.ndarray:
    """(envs x (steps + 1), 64, 64, 3) uint8 frames of ``game``'s training levels under random actions."""
    env = ProcgenVecEnv(game, envs, get_split("train"), rand_seed=5)
    rng = np.random.default_rng(5)
    try:
        frames = [env.reset(seed=5)[0]]
        for _ in range(steps):
            frames.append(env.step(rng.integers(0, 15, envs))[0])
    finally:
        env.close()
    return np.concatenate(frames)


def reference_networks(member: nn.Module) -> tuple[RefResNet, RefResNet]:
    """model.py's ``PolicyResNetBase`` and ``ValueResNet`` holding ``member``'s weights."""
    policy, value = RefResNet(3, num_actions=15), RefResNet(3)
    ours = member.policy.state_dict()
    policy.load_state_dict(reference_names({k: v for k, v in ours.items() if not k.startswith("actor.")}, "advantage"))
    value.load_state_dict(reference_names(member.value.state_dict(), "critic"))
    return policy, value


def reference_input(obs: np.ndarray) -> torch.Tensor:
    """envs.py ``VecPyTorchProcgen``: NHWC uint8 -> NCHW float / 255."""
    return torch.from_numpy(obs.transpose(0, 3, 1, 2)).float() / 255.


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x - reference).detach().norm() / reference.detach().norm())


def assert_round_off(x: torch.Tensor, reference: torch.Tensor, bound: float, msg: str = "") -> None:
    """Equal to float32 round-off: relative L2 and every element within ``bound`` of the reference's
    scale (the two sum convolutions in other orders: channels-last input here, contiguous there)."""
    assert (r := relative_l2(x, reference)) < bound, f"{msg} relative L2 {r:.3g} >= {bound}"
    torch.testing.assert_close(x, reference, rtol=0, atol=bound * float(reference.detach().abs().max()), msg=msg)


@pytest.mark.parametrize("game", ["maze", "heist", "jumper", "bigfish"])
def test_trunks_compute_the_references_networks_on_procgen_frames(game):
    """Initial weights (the reference's init, zero biases), real frames: the policy's features and
    advantages and the value network's values equal model.py's; PPO members' trunk (the ExpGen
    authors' residual block, x on the skip connection) on the same weights is far from them.
    Measured (CPU, torch 2.13; 64 frames), relative L2 of the features to model.py's, IDAAC's trunk /
    PPO's: maze 5.4e-7 / 0.587, heist 5.6e-7 / 0.565, jumper 5.7e-7 / 0.562, bigfish 6.2e-7 / 0.664."""
    obs = procgen_frames(game)
    torch.manual_seed(0)
    member = IDAACSpec().build()
    ref_policy, ref_value = reference_networks(member)
    actions = torch.randint(0, 15, (len(obs),), generator=torch.Generator().manual_seed(0))
    x = torch.from_numpy(obs)
    with torch.no_grad():
        ours = member(x, actions, head="policy")
        want_adv, want_features = ref_policy(reference_input(obs), actions.view(-1, 1))
        values, want_values = member(x, head="value"), ref_value(reference_input(obs))
        ppo_trunk = build_trunk(NetworkSpec())
        ppo_trunk.load_state_dict(member.policy.trunk.state_dict())
        ppo_features = run_trunk(ppo_trunk, x, False)
    assert_round_off(ours.features, want_features, 2e-6)
    # one number per frame, sums of 256 products that largely cancel: a larger relative round-off
    assert_round_off(ours.advantages, want_adv.squeeze(1), 3e-5)
    assert_round_off(values, want_values.squeeze(1), 3e-5)
    assert relative_l2(ppo_features, want_features) > 0.4


def test_trunk_and_its_gradients_equal_the_references_at_random_weights():
    """Every weight and bias randomised (initial biases are zero and would hide a misplaced one):
    features and the gradient of a random projection of them w.r.t. every trunk parameter. Random
    frames: ProcGen's flat colour regions make exact ties in the max-pools, which round-off breaks
    one way here and another there, sending the gradient to different (equally valid) positions."""
    obs = torch.randint(0, 256, (16, 64, 64, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy()
    torch.manual_seed(1)
    member = IDAACSpec().build()
    with torch.no_grad():
        for p in member.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref_policy, _ = reference_networks(member)
    features = member(torch.from_numpy(obs), head="policy").features
    _, want = ref_policy(reference_input(obs))
    assert_round_off(features, want, 2e-6)
    direction = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    ours = dict(member.policy.trunk.named_parameters(prefix="trunk"))
    theirs = dict(ref_policy.named_parameters())
    names = reference_names(ours, "advantage")  # reference name -> our parameter
    grads = torch.autograd.grad((features * direction).sum(), list(names.values()))
    want_grads = torch.autograd.grad((want * direction).sum(), [theirs[k] for k in names])
    for k, g, w in zip(names, grads, want_grads):
        assert_round_off(g, w, 1e-5, msg=k)


def test_bf16_trunk_runs_in_autocast_like_the_reference():
    """``bf16``: the trunk runs under bf16 autocast (its features differ from float32's by bf16
    rounding, 6.5e-3 relative L2 here) and returns float32 features equal to model.py's under the
    same autocast (measured: identical on this CPU; bound: well under bf16 rounding)."""
    obs = procgen_frames("maze", envs=4, steps=3)
    torch.manual_seed(0)
    member = IDAACSpec().build(bf16=True)
    ref_policy, _ = reference_networks(member)
    with torch.no_grad():
        features = member(torch.from_numpy(obs), head="policy").features
        with torch.autocast("cpu", torch.bfloat16):
            _, want = ref_policy(reference_input(obs))
        _, float32 = ref_policy(reference_input(obs))
    assert features.dtype == torch.float32 and want.dtype == torch.bfloat16
    assert relative_l2(features, float32) > 1e-3
    assert relative_l2(features, want.float()) < 1e-4


@pytest.mark.slow  # trains an IMPALA run, then reloads and resumes it
def test_checkpoints_before_the_reference_trunk_evaluate_as_trained_and_refuse_to_resume(small_cfg):
    """A checkpoint written before IDAAC members had the reference's block has no ``trunk`` in its
    ``network``: it loads with PPO members' block (what it was trained with) and a resume refuses it."""
    cfg = small_cfg(*SMALL_IDAAC, "network.kind=impala", "ppo.total_steps=32", name="old")
    train_run(cfg)
    folder = cfg.layout.member(0).checkpoints
    ckpt = load_latest(folder)
    assert ckpt["network"]["trunk"] == "idaac"
    del ckpt["network"]["trunk"]  # the earlier format
    save_checkpoint(folder, ckpt.pop("step") + 1, {k: v for k, v in ckpt.items() if k != "format"})
    old = load_latest(folder)
    spec = spec_from_dict(old["network"])
    assert spec.trunk == "expgen"
    member = member_network(Population.from_state_dicts(spec, [old["model"]], "loop"), 0)
    ppo_trunk = build_trunk(NetworkSpec(kind="impala"))
    ppo_trunk.load_state_dict(member.policy.trunk.state_dict())
    obs = torch.from_numpy(procgen_frames("maze", envs=2, steps=1))
    with torch.no_grad():
        assert torch.equal(member(obs, head="policy").features, run_trunk(ppo_trunk, obs, False))
    with pytest.raises(CheckpointError, match="predates IDAAC's reference trunk"):
        train_run(small_cfg(*SMALL_IDAAC, "network.kind=impala", "ppo.total_steps=64", name="old"))


def test_small_cnn_checkpoints_keep_their_format():
    """The small CNN has no residual blocks: its spec stores no ``trunk`` and reads back equal."""
    spec = IDAACSpec(kind="small")
    assert "trunk" not in spec.to_dict() and IDAACSpec.from_dict(spec.to_dict()) == spec
    assert IDAACSpec.from_dict(IDAACSpec().to_dict()).trunk == "idaac"
    with pytest.raises(ValueError, match="unknown IDAAC trunk 'impala'"):
        IDAACSpec(trunk="impala")


def test_vmap_and_loop_populations_agree_on_every_head():
    spec = IDAACSpec(kind="small", discriminator_hidden=4)
    loop, vmapped = Population(spec, [0, 1], "loop"), Population(spec, [0, 1], "vmap")
    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (2, 3, 64, 64, 3), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 15, (2, 3), generator=g)
    pairs = torch.randn(2, 3, 512, generator=g)
    for args, head in [((obs,), "act"), ((obs, actions), "policy"), ((obs,), "value"), ((pairs,), "discriminator")]:
        a, b = loop(*args, head=head), vmapped(*args, head=head)
        for x, y in zip(*(o if isinstance(o, tuple) else (o,) for o in (a, b))):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=head)


def test_tuned_table_equals_the_references_for_all_games():
    assert set(GAMES) == set(REF_VALUE_EPOCH)
    for name, game in GAMES.items():
        s = game.idaac
        assert (s.value_epoch, s.value_freq, s.adv_loss_coef, s.order_loss_coef) == (
            REF_VALUE_EPOCH[name], REF_VALUE_FREQ[name], REF_ADV_LOSS_COEF[name], REF_ORDER_LOSS_COEF[name]), name
        assert s.nonlinear_discriminator == (name in REF_NONLIN_ENVS), name
        assert s.discriminator_hidden == REF_CLF_HIDDEN_SIZE[name], name


def test_use_best_hps_takes_the_games_settings_and_its_discriminator():
    assert idaac_settings(cfg_of().idaac, "bigfish").value_freq == 1  # the config's defaults
    tuned = cfg_of("env.game=bigfish", "idaac.use_best_hps=true", "idaac.epochs=2")
    s = idaac_settings(tuned.idaac, tuned.env.game)
    assert IDAACSettings(**{f.name: getattr(s, f.name) for f in fields(IDAACSettings)}) == GAMES["bigfish"].idaac
    assert s.epochs == 2 and s.reward_scaling  # what the table does not tune stays the config's
    assert member_spec(tuned).discriminator_hidden == 4  # non-linear, 4 units
    assert member_spec(cfg_of("env.game=plunder", "idaac.use_best_hps=true")).discriminator_hidden == 0
    assert DAACAlgorithm.member_spec(tuned.network, s).discriminator_hidden == -1


def test_frame_labels_reference_off_by_one_and_corrected():
    # Frames -1..T (T = 3) labelled 10..14 in one env: (M=1, T+2=5, N=1).
    x = torch.arange(10, 15).view(1, 5, 1)
    corrected, _ = frame_labels(x, x, "corrected")
    reference, _ = frame_labels(x, x, "reference")
    assert corrected.flatten().tolist() == [11, 12, 13, 14]  # rows 0..T: frames 0..T
    # IDAACRolloutStorage.insert: row 0 = frame -1 (after_update), row 1 = frame T, row p = frame p-1.
    assert reference.flatten().tolist() == [10, 14, 12, 13]


def reference_before_update_labels(levels: torch.Tensor, nsteps: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """storage.py ``before_update``'s labels for given partner draws ``other`` (flat rows)."""
    idx = torch.arange(len(other))  # the rows that were given partners
    orders = torch.zeros(len(other), dtype=torch.long)
    orders[nsteps[other] < nsteps[idx]] = 1
    return orders


def test_pairs_share_the_level_cover_all_candidates_and_label_the_order():
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 3, (1, 60), generator=g)
    steps = torch.randint(0, 20, (1, 60), generator=g)
    gens = [torch.Generator().manual_seed(1)]
    seen: dict[int, set] = {}
    for _ in range(200):
        partner, label = draw_pairs(levels, steps, 50, gens)
        assert (levels[0, partner[0]] == levels[0, :50]).all()  # same level, any row of the rollout
        assert torch.equal(label[0].long(), reference_before_update_labels(levels[0], steps[0], partner[0]))
        for q, p in enumerate(partner[0].tolist()):
            seen.setdefault(q, set()).add(p)
    for q in range(50):  # uniform among all same-level rows, itself included
        assert seen[q] == set(torch.nonzero(levels[0] == levels[0, q]).flatten().tolist())


def counting(opt: torch.optim.Optimizer, counter: dict[str, int], key: str) -> None:
    step = opt.step

    def counted(*a, **k):
        counter[key] = counter.get(key, 0) + 1
        return step(*a, **k)

    opt.step = counted


def fixed_batch(m: int = 1, t: int = 4, n: int = 4, seed: int = 0) -> tuple[Batch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A rollout (M, T, N) with random frames, actions, logprobs, values and GAE advantages, the
    frame after it, and frame labels -1..T on 2 levels."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (m, t, n, 64, 64, 3), generator=g, dtype=torch.uint8)
    values = torch.randn(m, t, n, generator=g)
    adv = torch.randn(m, t, n, generator=g)
    batch = Batch(obs=obs, actions=torch.randint(0, 15, (m, t, n), generator=g),
                  logprobs=-2.7 + 0.1 * torch.randn(m, t, n, generator=g), values=values, advantages=adv,
                  returns=values + adv, episode_starts=torch.zeros(m, t, n))
    next_obs = torch.randint(0, 256, (m, n, 64, 64, 3), generator=g, dtype=torch.uint8)
    levels = torch.randint(0, 2, (m, t + 2, n), generator=g)
    steps = torch.randint(0, 10, (m, t + 2, n), generator=g)
    return batch, next_obs, levels, steps


class FixedMinibatches:
    """One epoch = one minibatch of all samples in a fixed order: the transcription indexes alike."""

    def __init__(self, order: torch.Tensor) -> None:
        self.order, self.generators = order, [torch.Generator()]

    def __call__(self, batch, epochs, num_minibatches):
        flat = batch.flat()
        for _ in range(epochs):
            yield Minibatch(flat.select(self.order.unsqueeze(0)))


class ReferenceIDAAC:
    """algo/idaac.py ``IDAAC.update`` transcribed for one minibatch per phase, on copies of one
    member's networks; ``evaluate_actions`` as model.py ``IDAACnet.evaluate_actions``. The
    reference passes one lr, eps and max_grad_norm to all three optimisers; here each takes its own
    (``opts``: policy, value, clf -> (lr, eps, max_grad_norm))."""

    def __init__(self, member: nn.Module, opts: dict[str, tuple[float, float, float]], clip_param: float, coefs: tuple):
        self.policy, self.value_net = copy.deepcopy(member.policy), copy.deepcopy(member.value)
        self.order_classifier = copy.deepcopy(getattr(member, "discriminator", None))
        self.clip_param = clip_param
        self.max_grad_norm = {k: v[2] for k, v in opts.items()}
        self.adv_loss_coef, self.order_loss_coef, self.entropy_coef = coefs
        self.policy_parameters = list(self.policy.parameters())
        self.value_parameters = list(self.value_net.parameters())
        adam = lambda params, k: torch.optim.Adam(params, lr=opts[k][0], eps=opts[k][1])
        self.policy_optimizer = adam(self.policy_parameters, "policy")
        self.value_optimizer = adam(self.value_parameters, "value")
        if self.order_classifier is not None:
            self.clf_optimizer = adam(self.order_classifier.parameters(), "clf")
        self.bce_loss = nn.BCELoss()

    def evaluate_actions(self, inputs, action):
        actor_features, logits, gae = self.policy(inputs, action)
        value = self.value_net(inputs)
        dist = torch.distributions.Categorical(logits=logits)
        return actor_features, gae.unsqueeze(1), value.unsqueeze(1), dist.log_prob(action).unsqueeze(1), dist.entropy().mean()

    def update(self, obs, actions, value_preds, returns, old_logp, other_obs, clf_order):
        advantages = returns - value_preds
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-5)
        adv_targ = advantages.view(-1, 1)
        out = {}
        emb, adv, _, action_log_probs, dist_entropy = self.evaluate_actions(obs, actions)
        if self.order_classifier is not None:
            other_emb, _, _, _, _ = self.evaluate_actions(other_obs, actions)
            emb_concat = torch.cat((emb, other_emb), dim=1)
            pred_order_clf = self.order_classifier(emb_concat.detach())
            clf_loss = self.bce_loss(pred_order_clf[:, 0], clf_order.squeeze().float())
            out["order_accuracy"] = (torch.argmax(pred_order_clf, dim=1) == clf_order.squeeze()).sum().item() / len(clf_order)
            self.clf_optimizer.zero_grad()
            clf_loss.backward()
            nn.utils.clip_grad_norm_(self.order_classifier.parameters(), self.max_grad_norm["clf"])
            self.clf_optimizer.step()
            pred_order = self.order_classifier(emb_concat)
            emb_order = torch.FloatTensor(size=clf_order.shape).fill_(0.5)
            order_loss = self.bce_loss(pred_order[:, 0], emb_order.squeeze())
            out["discriminator_loss"], out["order_loss"] = clf_loss, order_loss
        else:  # algo/daac.py
            order_loss = torch.zeros(())
        ratio = torch.exp(action_log_probs - old_logp.view(-1, 1))
        surr1 = ratio * adv_targ
        surr2 = torch.clamp(ratio, 1.0 - self.clip_param, 1.0 + self.clip_param) * adv_targ
        action_loss = -torch.min(surr1, surr2).mean()
        adv_loss = (adv - adv_targ).pow(2).mean()
        self.policy_optimizer.zero_grad()
        (order_loss * self.order_loss_coef + adv_loss * self.adv_loss_coef + action_loss
         - dist_entropy * self.entropy_coef).backward()
        nn.utils.clip_grad_norm_(self.policy_parameters, self.max_grad_norm["policy"])
        self.policy_optimizer.step()
        out.update(policy_loss=action_loss, adv_loss=adv_loss, entropy=dist_entropy)
        # value phase
        _, _, values, _, _ = self.evaluate_actions(obs, actions)
        value_preds_batch, return_batch = value_preds.view(-1, 1), returns.view(-1, 1)
        value_pred_clipped = value_preds_batch + (values - value_preds_batch).clamp(-self.clip_param, self.clip_param)
        value_losses = (values - return_batch).pow(2)
        value_losses_clipped = (value_pred_clipped - return_batch).pow(2)
        value_loss = 0.5 * torch.max(value_losses, value_losses_clipped).mean()
        self.value_optimizer.zero_grad()
        value_loss.backward()
        nn.utils.clip_grad_norm_(self.value_parameters, self.max_grad_norm["value"])
        self.value_optimizer.step()
        out["value_loss"] = value_loss
        return out


@pytest.mark.parametrize("algo, extra", [("idaac", []), ("idaac", ["idaac.nonlinear_discriminator=true"]),
                                         ("daac", [])])
def test_one_update_equals_the_reference_transcription(algo, extra):
    # Every phase's optimiser its own settings, each a value the others do not have (ppo's are not read).
    cfg = cfg_of(f"member.algo={algo}", "idaac.epochs=1", "idaac.num_minibatches=1", "idaac.value_epoch=1",
                 "idaac.policy.lr=1e-3", "idaac.value.lr=3e-4", "idaac.discriminator.lr=2e-3",
                 "idaac.value.adam_eps=1e-6", "idaac.policy.max_grad_norm=0.3", "idaac.value.max_grad_norm=0.2",
                 "idaac.discriminator.max_grad_norm=0.4", "idaac.clip_coef=0.15", "idaac.ent_coef=0.02",
                 "ppo.lr=1", "ppo.max_grad_norm=9", "ppo.clip_coef=0.9",
                 "idaac.order_loss_coef=0.5", *extra)  # a visible invariance term
    batch, next_obs, levels, steps = fixed_batch()
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    cls = IDAACAlgorithm if algo == "idaac" else DAACAlgorithm
    ours = build(cls, cfg, FixedMinibatches(order))
    s = ours.settings
    opts = {k: (p.lr, p.adam_eps, p.max_grad_norm) for k, p in
            (("policy", s.policy), ("value", s.value), ("clf", s.discriminator))}
    ref = ReferenceIDAAC(member_network(ours.pop, 0), opts, s.clip_coef, (s.adv_loss_coef, s.order_loss_coef, s.ent_coef))
    # The pairs our update will draw (a copy of its stream), as storage.py hands them over.
    gen = torch.Generator()
    gen.set_state(ours.pair_generators[0].get_state())
    lv, st = frame_labels(levels, steps, cfg.idaac.pair_labels)
    partner, label = draw_pairs(lv.flatten(1, 2), st.flatten(1, 2), 16, [gen])
    frames = torch.cat((batch.obs.flatten(1, 2), next_obs), 1)[0]

    metrics = ours.update(UpdateInput(batch, None, 0, next_obs, levels, steps))
    f = batch.flat()
    expected = ref.update(f.obs[0, order], f.actions[0, order], f.values[0, order], f.returns[0, order],
                          f.logprobs[0, order], frames[partner[0, order]], label[0, order].long().view(-1, 1))

    for k, v in expected.items():
        torch.testing.assert_close(metrics[k][0], torch.as_tensor(v, dtype=torch.float32), rtol=1e-5, atol=1e-6, msg=k)
    got = ours.pop.member_state_dict(0)
    want = {**{f"policy.{k}": v for k, v in ref.policy.state_dict().items()},
            **{f"value.{k}": v for k, v in ref.value_net.state_dict().items()},
            **({f"discriminator.{k}": v for k, v in ref.order_classifier.state_dict().items()}
               if ref.order_classifier is not None else {})}
    assert got.keys() == want.keys()
    start = build(cls, cfg, FixedMinibatches(order))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
        assert not torch.equal(got[k], start.pop.member_state_dict(0)[k]), f"{k} did not move"


@pytest.mark.parametrize("value_freq", [1, 3])
def test_optimizer_steps_per_update(value_freq):
    cfg = cfg_of("idaac.epochs=2", "idaac.num_minibatches=2", "idaac.value_epoch=3", f"idaac.value_freq={value_freq}")
    batch, next_obs, levels, steps = fixed_batch()
    algo = build(IDAACAlgorithm, cfg, SampleMinibatches([torch.Generator()]), seeds=[0])
    counts: dict[str, int] = {}
    for g, opt in algo.optimizers.items():
        counting(opt, counts, g)
    value_losses = []
    for u in range(4):
        before = dict(counts)
        m = algo.update(UpdateInput(batch, None, u, next_obs, levels, steps))
        value_losses.append(float(m["value_loss"][0]))
        made = {g: counts.get(g, 0) - before.get(g, 0) for g in algo.optimizers}
        due = u % value_freq == 0
        assert made == {"policy": 4, "discriminator": 4, "value": 6 if due else 0}, (u, made)
        if not due:  # a skipped value phase reports the previous value loss
            assert value_losses[-1] == value_losses[-2]


def test_each_phase_anneals_in_proportion_to_the_policy_schedule():
    cfg = cfg_of("idaac.policy.lr=1e-3", "idaac.value.lr=4e-4", "idaac.discriminator.lr=2e-3", "ppo.anneal_lr=true")
    algo = build(IDAACAlgorithm, cfg, SampleMinibatches([torch.Generator()]))
    lrs = lambda: {g: opt.param_groups[0]["lr"] for g, opt in algo.optimizers.items()}
    assert lrs() == {"policy": 1e-3, "value": 4e-4, "discriminator": 2e-3}
    assert algo.anneal_lr and algo.lr == 1e-3  # idaac.anneal_lr follows ppo's; the schedule is the policy's
    algo.set_lr(2.5e-4)  # a quarter of the budget left
    assert lrs() == pytest.approx({"policy": 2.5e-4, "value": 1e-4, "discriminator": 5e-4})
    algo.set_lr(1e-3)
    assert lrs() == {"policy": 1e-3, "value": 4e-4, "discriminator": 2e-3}


def test_return_scaler_matches_vecnormalize():
    """baselines' VecNormalize reward path, written out with its RunningMeanStd."""
    rng = torch.Generator().manual_seed(0)
    rewards = torch.rand(30, 5, generator=rng).double().numpy() * 10
    ends = (torch.rand(30, 5, generator=rng) < 0.2).numpy()
    ours = ReturnScaler(5)
    ret, mean, var, count = torch.zeros(5, dtype=torch.float64).numpy(), 0.0, 1.0, 1e-4
    import numpy as np
    for r, d in zip(rewards, ends):
        ret = ret * 0.99 + r
        bm, bv, bc = np.mean(ret, axis=0), np.var(ret, axis=0), ret.shape[0]
        delta, tot = bm - mean, count + bc
        new_mean = mean + delta * bc / tot
        m2 = var * count + bv * bc + np.square(delta) * count * bc / tot
        mean, var, count = new_mean, m2 / tot, tot
        want = np.clip(r / np.sqrt(var + 1e-8), -10.0, 10.0)
        ret[d] = 0.0
        np.testing.assert_allclose(ours(r, d), want, rtol=1e-12)


SMALL_IDAAC = ["member.algo=idaac", "idaac.value_freq=2", "idaac.value_epoch=2"]


def final_models(cfg, members):
    return [load_latest(cfg.layout.member(m).checkpoints)["model"] for m in members]


@pytest.mark.slow  # trains several runs to compare them
def test_idaac_member_in_a_population_equals_it_alone(small_cfg):
    together = small_cfg(*SMALL_IDAAC, "ensemble.size=2", "ppo.total_steps=96", name="together")
    train_run(together)
    alone = small_cfg(*SMALL_IDAAC, "ensemble.size=1", "ensemble.seeds=[1]", "ppo.total_steps=96", name="alone")
    train_run(alone)
    a, b = final_models(together, [1])[0], final_models(alone, [0])[0]
    # Same envs, pairs, minibatches and losses; the parameters agree to float32 rounding only:
    # member 1's rows of the stacked advantage head (271 floats) are not 16-byte aligned, and CPU
    # reductions over them (gradient norms, Adam) round in another order than at offset 0 (measured:
    # 1.5e-8 after three updates). PPO's rows are multiples of 16 floats and stay bit-exact.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    initial = Population(member_spec(alone), [1]).member_state_dict(0)
    assert all(not torch.equal(initial[k], b[k]) for k in b), "every network trained"


@pytest.mark.slow  # trains several runs to compare them
def test_idaac_checkpoint_resume_is_exact(small_cfg):
    straight = small_cfg(*SMALL_IDAAC, "ppo.total_steps=128", name="straight")
    train_run(straight)
    cut = small_cfg(*SMALL_IDAAC, "ppo.total_steps=64", name="cut")
    train_run(cut)
    train_run(small_cfg(*SMALL_IDAAC, "ppo.total_steps=128", name="cut"))
    a, b = load_latest(straight.layout.member(0).checkpoints), load_latest(cut.layout.member(0).checkpoints)
    assert a["step"] == b["step"] == 128 and a["algo"] == "idaac"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for group in ("policy", "value", "discriminator"):
        for x, y in zip(a["optimizer"][group], b["optimizer"][group]):
            assert all(torch.equal(x[k], y[k]) for k in x), group
    assert torch.equal(a["reward_scaling"]["moments"], b["reward_scaling"]["moments"])


@pytest.mark.parametrize("override, key", [
    (["member.algo=a2c"], "member.algo"),
    (["member.algo=idaac", "engine=sb3"], "member.algo"),
    (["member.algo=idaac", "idaac.num_minibatches=3"], "idaac.num_minibatches"),
    (["member.algo=idaac", "idaac.value_freq=0"], "idaac.value_freq"),
    (["member.algo=idaac", "idaac.pair_labels=shifted"], "idaac.pair_labels"),
    (["member.algo=idaac", "env.pipeline=overlap"], "idaac.reward_scaling"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["explorer.enabled=false", *override])


def test_resuming_with_another_algorithm_is_refused(small_cfg):
    cfg = small_cfg("ppo.total_steps=32", name="r")
    train_run(cfg)
    with pytest.raises(ConfigError, match="member.algo"):
        train_run(small_cfg("member.algo=idaac", "ppo.total_steps=64", name="r"))


def test_maze_idaac_config_loads():
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "maze_idaac.yaml")
    assert cfg.member.algo == "idaac" and cfg.idaac.epochs == 1 and cfg.env.num_envs == 64


@pytest.mark.slow  # trains a run and evaluates it end to end
def test_expgen_evaluates_idaac_members(small_cfg):
    """eval.py reads IDAAC checkpoints (their spec names the algorithm) and the controller plays
    their policies beside the PPO explorer."""
    from evaluation.evaluate import evaluate_run

    cfg = small_cfg(*SMALL_IDAAC, "ensemble.size=2", "ppo.total_steps=32", "explorer.enabled=true",
                    "explorer.total_steps=32", name="expgen")
    train_run(cfg)
    results = evaluate_run(cfg.layout.root, ["eval.episodes=2", "eval.num_envs=2", "device=cpu",
                                             "eval.modes=[expgen]"])
    assert set(results["modes"]) == {"expgen"} and not results["skipped"]
