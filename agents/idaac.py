"""IDAAC and DAAC members (Raileanu & Fergus, ICML 2021, "Decoupling Value and Policy for
Generalization in Reinforcement Learning", arXiv 2102.10330), written from the reference code
``rraileanu/idaac`` (commit 2fe3020, folder ``ppo_daac_idaac/``: model.py, algo/idaac.py,
algo/daac.py, storage.py, train.py).

Networks (one member, all in ``IDAACMember`` so that a population stacks them like any network):
- policy: a trunk, an action head Linear(H, A) and an advantage head Linear(H + A, 1) on the
  features concatenated with the one-hot of the action (model.py ``PolicyResNetBase``);
  the IMPALA trunk is the reference's, whose residual blocks add relu(x) on the skip connection
  (``IDAACResidualBlock``), not x as PPO members' (the ExpGen authors') do;
- value: its own trunk + Linear(H, 1) (``ValueResNet``); no parameter is shared with the policy;
- order discriminator (IDAAC only): softmax(Linear(2H, 2)), or Linear(2H, h) + ReLU + Linear(h, 2),
  on the policy features of two frames (``LinearOrderClassifier``/``NonlinearOrderClassifier``).
Init as the reference's: convolutions Xavier-uniform with zero bias, the trunk's Linear orthogonal
with gain sqrt(2), heads orthogonal with gain 1 (action head 0.01), zero biases.

Update (``IDAACAlgorithm.update``, algo/idaac.py ``IDAAC.update``), three Adam optimisers each with
its own settings (``idaac.policy``, ``idaac.value``, ``idaac.discriminator``) and gradient-norm
clip: per policy minibatch a discriminator step on detached pair features, then a policy step on
PPO's clipped surrogate (agents/ppo.py ``policy_loss``) + adv_loss_coef x advantage regression +
order_loss_coef x invariance loss - ent_coef x entropy; every ``value_freq`` updates, a value
phase of ``value_epoch`` epochs of PPO's clipped value loss (``value_loss``). DAAC (algo/daac.py)
is the same without the discriminator and the invariance loss. Rewards are scaled as the
reference's ``VecNormalize`` does (``reward_transform``: agents/rollout.py ``ReturnScaler``).

The reference acts with a second policy pass for A(s, a_sampled), which it stores and no loss
reads: acting here skips it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from agents.algorithm import MemberAlgorithm, OptimiserSettings, UpdateInput
from agents.minibatches import Batch, Minibatch, MinibatchStrategy
from agents.networks import NetworkSpec, PolicyOutput, ResidualBlock, build_trunk, orthogonal_, run_trunk
from agents.ppo import policy_loss, value_loss
from agents.rollout import ReturnScaler
from agents.sampling import make_generators
from core.sections import IDAAC_PHASES, IDAACConfig, NetworkConfig
from envs.games import NUM_ACTIONS, get_game

PAIR_SALT = 3  # the pairing streams (action sampling uses 1, minibatch order 2)


class IDAACResidualBlock(ResidualBlock):
    """The reference's residual block (model.py ``BasicBlock``): (B, C, h, w) -> (B, C, h, w),
    relu(x) + conv1(relu(conv0(relu(x)))).

    ``BasicBlock.forward`` keeps ``identity = x`` and then applies ``nn.ReLU(inplace=True)`` to x,
    which rewrites x itself: the skip connection adds relu(x), where the ExpGen authors' block
    (``ResidualBlock``, PPO members) adds x. The parameters and their names are ``ResidualBlock``'s.
    The ReLU is out of place here: the same values, and nothing is written into the previous
    layer's output.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        return x + self.conv1(torch.relu(self.conv0(x)))


# ``IDAACSpec.trunk`` -> the IMPALA trunk's residual block. ``expgen``: what IDAAC checkpoints
# written before members had the reference's block were trained with (``IDAACSpec.from_dict``).
RESIDUAL_BLOCKS: dict[str, type[nn.Module]] = {"idaac": IDAACResidualBlock, "expgen": ResidualBlock}


@dataclass(frozen=True)
class IDAACSpec:
    """Everything needed to rebuild an IDAAC or DAAC member's networks: stored in checkpoints.

    ``discriminator_hidden``: -1 none (DAAC), 0 linear, h > 0 one hidden layer of h units.
    ``trunk``: the IMPALA trunk's residual blocks, ``idaac`` (the reference's, ``IDAACResidualBlock``)
    or ``expgen`` (PPO members' ``ResidualBlock``: only old checkpoints carry it). Raises
    ``ValueError`` for another name.
    """

    algo: str = "idaac"
    kind: str = "impala"
    channels: tuple[int, ...] = (16, 32, 32)
    hidden: int = 256
    num_actions: int = NUM_ACTIONS
    discriminator_hidden: int = 0
    trunk: str = "idaac"
    recurrent = False  # a class attribute, not a field: IDAAC members are feed-forward

    def __post_init__(self) -> None:
        if self.trunk not in RESIDUAL_BLOCKS:
            raise ValueError(f"unknown IDAAC trunk {self.trunk!r}; choose one of: {', '.join(RESIDUAL_BLOCKS)}")

    def build(self, bf16: bool = False) -> "IDAACMember":
        return IDAACMember(self, bf16)

    @property
    def trunk_spec(self) -> NetworkSpec:
        return NetworkSpec(kind=self.kind, channels=tuple(self.channels), hidden=self.hidden,
                           num_actions=self.num_actions)

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "channels": list(self.channels)}
        if self.kind != "impala":  # no residual blocks: such checkpoints keep their earlier format
            del d["trunk"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IDAACSpec":
        """A checkpoint's ``network`` entry. One without ``trunk`` was written before IDAAC members
        had the reference's block: its IMPALA members were trained with ``expgen`` and load with it,
        so they evaluate as trained (resuming one is refused: its entry differs from the config's)."""
        before = "expgen" if d["kind"] == "impala" else "idaac"
        return cls(**{"trunk": before, **d, "channels": tuple(d["channels"])})


def idaac_init_(trunk: nn.Module) -> nn.Module:
    """The reference's trunk init: convolutions Xavier-uniform (``apply_init_``), the Linear
    orthogonal with ReLU gain sqrt(2) (``init_relu_``, which ``apply_init_`` leaves alone)."""
    for layer in trunk.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            orthogonal_(layer, math.sqrt(2))
    return trunk


class PolicyHeads(NamedTuple):
    """The policy network's outputs: features (..., H), logits (..., A), advantages (...)."""

    features: torch.Tensor
    logits: torch.Tensor
    advantages: torch.Tensor


class PolicyNet(nn.Module):
    """Trunk (IMPALA residual blocks of class ``block``) -> features; action head; advantage head on
    [features, one-hot(action)]."""

    def __init__(self, spec: NetworkSpec, bf16: bool, block: type[nn.Module]) -> None:
        super().__init__()
        self.bf16, self.num_actions = bf16, spec.num_actions
        self.trunk = idaac_init_(build_trunk(spec, block))
        self.actor = orthogonal_(nn.Linear(spec.hidden, spec.num_actions), 0.01)
        self.advantage = orthogonal_(nn.Linear(spec.hidden + spec.num_actions, 1), 1.0)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor | None = None) -> PolicyHeads:
        """uint8 obs (B, 64, 64, 3), int64 actions (B,) or None (an all-zero one-hot, as the
        reference's ``PolicyResNetBase.forward`` without actions)."""
        h = run_trunk(self.trunk, obs, self.bf16)
        if actions is None:
            onehot = h.new_zeros(h.shape[0], self.num_actions)
        else:
            # A comparison rather than F.one_hot, which has no vmap rule (population.forward_mode=vmap).
            onehot = (actions.unsqueeze(-1) == torch.arange(self.num_actions, device=h.device)).to(h.dtype)
        # In a population, member m's advantage weight starts m x (H + A) floats into the stacked
        # tensor: not 16-byte aligned, and CPU matrix-vector kernels round differently on misaligned
        # operands (measured), so a member would differ from itself alone in the last bit. A copy
        # is aligned, like the weight of a network alone; it costs H + A floats.
        w = self.advantage.weight.clone()
        adv = F.linear(torch.cat((h, onehot), -1), w, self.advantage.bias).squeeze(-1)
        return PolicyHeads(h, self.actor(h), adv)


class ValueNet(nn.Module):
    def __init__(self, spec: NetworkSpec, bf16: bool, block: type[nn.Module]) -> None:
        super().__init__()
        self.bf16 = bf16
        self.trunk = idaac_init_(build_trunk(spec, block))
        self.critic = orthogonal_(nn.Linear(spec.hidden, 1), 1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (B, 64, 64, 3) -> values (B,)."""
        return self.critic(run_trunk(self.trunk, obs, self.bf16)).squeeze(-1)


def order_discriminator(hidden: int, units: int) -> nn.Sequential:
    """Pair features (B, 2 x hidden) -> softmax probabilities (B, 2); ``units`` 0 = linear."""
    if units == 0:
        return nn.Sequential(orthogonal_(nn.Linear(2 * hidden, 2), 1.0), nn.Softmax(-1))
    return nn.Sequential(orthogonal_(nn.Linear(2 * hidden, units), math.sqrt(2)), nn.ReLU(),
                         orthogonal_(nn.Linear(units, 2), 1.0), nn.Softmax(-1))


class IDAACMember(nn.Module):
    """One member's networks; ``forward``'s ``head`` picks what to compute (a population calls
    ``forward`` only, so every use is a head):

    - ``act``: obs -> ``PolicyOutput`` (logits of the policy, values of the value network);
    - ``policy``: obs, actions -> ``PolicyHeads``;
    - ``value``: obs -> values (B,);
    - ``discriminator``: pair features (B, 2H) -> probabilities (B, 2).
    """

    def __init__(self, spec: IDAACSpec, bf16: bool = False) -> None:
        super().__init__()
        self.spec = spec
        block = RESIDUAL_BLOCKS[spec.trunk]
        self.policy = PolicyNet(spec.trunk_spec, bf16, block)
        self.value = ValueNet(spec.trunk_spec, bf16, block)
        if spec.discriminator_hidden >= 0:
            self.discriminator = order_discriminator(spec.hidden, spec.discriminator_hidden)

    @property
    def bf16(self) -> bool:
        return self.policy.bf16

    @bf16.setter
    def bf16(self, value: bool) -> None:  # Population sets it on its structure-only copy
        self.policy.bf16 = self.value.bf16 = value

    def forward(self, x: torch.Tensor, actions: torch.Tensor | None = None, head: str = "act") -> Any:
        if head == "act":
            return PolicyOutput(self.policy(x).logits, self.value(x))
        if head == "policy":
            return self.policy(x, actions)
        if head == "value":
            return self.value(x)
        if head == "discriminator":
            return self.discriminator(x)
        raise ValueError(f"unknown head {head!r}; choose act, policy, value or discriminator")


def idaac_settings(section: IDAACConfig, game: str) -> IDAACConfig:
    """The ``idaac`` section in force for ``game``: with ``use_best_hps``, the game's five tuned
    settings (envs/games.py ``IDAACSettings``: value_epoch, value_freq, adv_loss_coef,
    order_loss_coef and the discriminator) replace the section's."""
    if not section.use_best_hps:
        return section
    return replace(section, **asdict(get_game(game).idaac))


def frame_labels(level_seeds: torch.Tensor, episode_steps: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (level, step) labels that pair the rollout's rows 0..T (frames 0..T-1 and the frame
    after the rollout): (M, T + 2, N) labels of frames -1..T -> (M, T + 1, N) each.

    ``corrected``: each row carries its own frame's labels. ``reference``: as the reference's
    ``IDAACRolloutStorage.insert`` writes them (it advances ``step`` before writing
    ``levels[step + 1]``): row 0 carries frame -1's, row 1 frame T's, row p >= 2 frame p-1's.
    """
    def shift(x: torch.Tensor) -> torch.Tensor:
        if mode == "corrected":
            return x[:, 1:]
        if mode == "reference":
            return torch.cat((x[:, :1], x[:, -1:], x[:, 2:-1]), 1)
        raise ValueError(f"unknown pair_labels {mode!r}; choose reference or corrected")

    return shift(level_seeds), shift(episode_steps)


def draw_pairs(levels: torch.Tensor, steps: torch.Tensor, queries: int,
               generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of the first ``queries`` rows of every member, a partner row drawn uniformly among
    that member's rows with the same level label (itself included), and the order label: 1 if the
    partner's step label is smaller (it came earlier in its episode), else 0 (storage.py
    ``before_update``). ``levels``, ``steps``: (M, R) int64. Returns partner indices (M, queries)
    int64 and labels (M, queries) float. Uniforms come from member m's own CPU generator.
    """
    partners = []
    for m, g in enumerate(generators):
        lv = levels[m]
        order = torch.argsort(lv, stable=True)
        ranked = lv[order]
        q = lv[:queries]
        start = torch.searchsorted(ranked, q)
        count = torch.searchsorted(ranked, q, right=True) - start
        u = torch.rand(queries, generator=g, dtype=torch.float64).to(lv.device)
        pick = start + torch.minimum((u * count).long(), count - 1)
        partners.append(order[pick])
    partner = torch.stack(partners)
    label = (steps.gather(1, partner) < steps[:, :queries]).float()
    return partner, label


@dataclass
class PairedBatch(Batch):
    """``Batch`` plus each sample's partner (an index into the rollout's frames 0..T, flat) and
    order label."""

    partner: torch.Tensor = None  # type: ignore[assignment]
    order: torch.Tensor = None  # type: ignore[assignment]


def normalised_advantages(adv: torch.Tensor, eps: float) -> torch.Tensor:
    """(M, S) -> per member (A - mean) / (std + eps), unbiased std (algo/idaac.py ``update``)."""
    return (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + eps)


def bce(p: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    """``nn.BCELoss`` per member: (M, b) probabilities -> (M,) means (log clamped at -100 as there)."""
    # contiguous: a strided view (a column of the softmax) would be reduced in an order that
    # depends on M, and a member in a population would then differ from itself alone in the last bit.
    p = p.contiguous()
    target = torch.as_tensor(target, dtype=p.dtype, device=p.device).expand_as(p)
    return F.binary_cross_entropy(p, target, reduction="none").mean(1)


class IDAACAlgorithm(MemberAlgorithm):
    """IDAAC members (module docstring); settings: the ``idaac`` section (``idaac_settings``).
    Checkpoints carry all three networks (``model``: the ``IDAACMember`` state dict), the three
    Adam states, the pairing stream and the last value loss."""

    name = "idaac"
    section = "idaac"
    spec_type = IDAACSpec
    needs_frame_labels = True
    invariance = True  # DAAC: False (no discriminator, no invariance loss)
    loss_compiles = False  # its loss takes the discriminator's step between two of its forwards
    passes_per_sample = 2  # the policy also runs over each sample's partner frame
    settings: IDAACConfig

    def __init__(self, settings: IDAACConfig, spec: IDAACSpec, seeds: list[int], forward_mode: str, bf16: bool,
                 device: torch.device, minibatches: MinibatchStrategy, init: str = "torch",
                 compile_loss: bool = False) -> None:
        super().__init__(settings, spec, seeds, forward_mode, bf16, device, minibatches, init, compile_loss)
        self.reward_transform = ReturnScaler if settings.reward_scaling else None
        self.pair_generators = make_generators(seeds, "cpu", salt=PAIR_SALT)
        self.value_loss = torch.zeros(len(seeds), device=device)  # reported when the phase is skipped

    @classmethod
    def configure(cls, section: IDAACConfig, game: str) -> IDAACConfig:
        return idaac_settings(section, game)

    @classmethod
    def member_spec(cls, network: NetworkConfig, settings: IDAACConfig) -> IDAACSpec:
        units = (settings.discriminator_hidden if settings.nonlinear_discriminator else 0) if cls.invariance else -1
        return IDAACSpec(cls.name, network.kind, tuple(network.channels), network.hidden, discriminator_hidden=units)

    def optimisers(self) -> dict[str, tuple[str, OptimiserSettings]]:
        """One per phase, by parameter-name prefix (DAAC's network has no ``discriminator.``)."""
        return {phase: (phase + ".", getattr(self.settings, phase)) for phase in IDAAC_PHASES}

    def paired(self, data: UpdateInput, batch: Batch) -> PairedBatch:
        """``batch`` (flat) with a partner and order label per sample (``draw_pairs``)."""
        levels, steps = frame_labels(data.level_seeds, data.episode_steps, self.settings.pair_labels)
        partner, order = draw_pairs(levels.flatten(1, 2), steps.flatten(1, 2), batch.actions.shape[1],
                                    self.pair_generators)
        return PairedBatch(*(getattr(batch, f.name) for f in fields(Batch)), partner=partner, order=order)

    @staticmethod
    def partner_frames(data: UpdateInput, partner: torch.Tensor) -> torch.Tensor:
        """(M, b) indices into the flat frames 0..T -> (M, b, 64, 64, 3) frames, from the rollout
        and ``next_obs`` without concatenating them."""
        obs = data.batch.obs.flatten(1, 2)
        rows = torch.arange(obs.shape[0], device=obs.device).unsqueeze(1)
        inside = partner < obs.shape[1]
        own = obs[rows, partner.clamp(max=obs.shape[1] - 1)]
        after = data.next_obs[rows, (partner - obs.shape[1]).clamp(min=0)]
        return torch.where(inside.view(*inside.shape, 1, 1, 1), own, after)

    def loss(self, data: UpdateInput, mb: Minibatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One policy minibatch (``mb.batch.advantages`` are the normalised targets): IDAAC first
        takes its discriminator step on the pairs' detached features, as the reference does; then
        the policy objective, surrogate + adv_loss_coef x advantage loss + order_loss_coef x
        invariance - ent_coef x entropy, summed over members, and its (M,) terms."""
        b, s = mb.batch, self.settings
        heads = self.pop(b.obs, b.actions, head="policy")
        terms: dict[str, torch.Tensor] = {}
        if self.invariance:
            other = self.pop(self.partner_frames(data, b.partner), b.actions, head="policy").features
            pair = torch.cat((heads.features, other), -1)
            probs = self.pop(pair.detach(), head="discriminator")
            terms["discriminator_loss"] = bce(probs[..., 0], b.order)
            # The reference's accuracy: argmax against the label, although the loss trains column 0
            # (the probability of label 0) towards the label: a perfect discriminator scores 0.
            terms["order_accuracy"] = (probs.argmax(-1) == b.order.long()).float().mean(1)
            terms["discriminator_grad_norm"] = self.step("discriminator", terms["discriminator_loss"].sum())
            terms["order_loss"] = bce(self.pop(pair, head="discriminator")[..., 0], 0.5)
        pi = policy_loss(heads.logits, b, b.advantages, s.clip_coef)
        terms.update(policy_loss=pi.loss, adv_loss=(heads.advantages - b.advantages).pow(2).mean(1),
                     entropy=pi.entropy, approx_kl=pi.approx_kl, clipfrac=pi.clipfrac)
        loss = terms["policy_loss"] + s.adv_loss_coef * terms["adv_loss"] - s.ent_coef * terms["entropy"]
        if self.invariance:
            loss = loss + s.order_loss_coef * terms["order_loss"]
        return loss.sum(), {k: v.detach() for k, v in terms.items()}

    def value_loss_of(self, mb: Batch) -> torch.Tensor:
        """(M,) PPO's clipped value loss of the value network, no coefficient."""
        return value_loss(self.pop(mb.obs, head="value"), mb, self.settings.clip_coef)

    def value_phase_due(self, update: int) -> bool:
        """Whether update ``update`` (0-based) runs the value phase (algo/idaac.py's counter)."""
        return update % self.settings.value_freq == 0

    def update(self, data: UpdateInput) -> dict[str, torch.Tensor]:
        """On the flat rollout with advantages normalised over it (``adv_eps``) and, for IDAAC,
        pairs: the policy phase of ``epochs`` epochs (``loss``), then, when due, the value phase of
        ``value_epoch`` epochs."""
        s, flat = self.settings, data.batch.flat()
        batch = Batch(**{f.name: getattr(flat, f.name) for f in fields(Batch)})
        batch.advantages = normalised_advantages(batch.advantages, s.adv_eps)
        if self.invariance:
            batch = self.paired(data, batch)
        metrics = self.minimise(data, batch, s.epochs, s.num_minibatches)
        if self.value_phase_due(data.update):
            total, steps, norms = torch.zeros_like(self.value_loss), 0, torch.zeros_like(self.value_loss)
            for mb in self.minibatches(batch, s.value_epoch, s.num_minibatches):
                loss = self.value_loss_of(mb.batch)
                norms = norms + self.step("value", loss.sum())
                total, steps = total + loss.detach(), steps + 1
            self.value_loss = total / steps
            metrics["value_grad_norm"] = norms / steps
        metrics["value_loss"] = self.value_loss.clone()
        return metrics

    def extra_state(self, m: int) -> dict[str, torch.Tensor]:
        return {"value_loss": self.value_loss[m].cpu(), "pair_rng": self.pair_generators[m].get_state()}

    def load_extra_state(self, m: int, saved: dict[str, torch.Tensor]) -> None:
        self.value_loss[m] = saved["value_loss"].to(self.value_loss.device)
        self.pair_generators[m].set_state(saved["pair_rng"])


class DAACAlgorithm(IDAACAlgorithm):
    """DAAC (algo/daac.py): IDAAC without the order discriminator and the invariance loss."""

    name = "daac"
    needs_frame_labels = False
    invariance = False
    loss_compiles = True
    passes_per_sample = 1

    def extra_state(self, m: int) -> dict[str, torch.Tensor]:
        return {"value_loss": self.value_loss[m].cpu()}

    def load_extra_state(self, m: int, saved: dict[str, torch.Tensor]) -> None:
        self.value_loss[m] = saved["value_loss"].to(self.value_loss.device)
