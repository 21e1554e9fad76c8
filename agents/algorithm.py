"""Member algorithms: the one seam between what trains a population's networks and the learner that
collects rollouts for it.

An algorithm owns its networks (stacked on the member axis: ``agents/population.py``), its Adam
optimisers and its update. The learner (training/native_learner.py, training/population_learner.py)
owns the envs, the rollout and GAE; it acts with ``algorithm.pop``, hands each rollout over, and
asks the algorithm, never its name, what else collecting for it takes:

- ``section``: the config section it reads its settings from (``agents/registry.py`` hands it
  that section, ``configure``d for the game);
- ``member_spec``, ``spec_type``: its networks, and the spec class of its checkpoints' ``network``;
- ``minibatch_kind``: ``samples`` or ``sequences`` (agents/minibatches.py);
- ``needs_frame_labels``: every frame's level seed and episode step in ``UpdateInput``;
- ``reward_transform``: None, or a factory of the per-member transform that the envs' rewards go
  through before the rollout stores them (logged episode returns stay raw);
- ``optimisers``: its Adam optimisers, each with the parameters it trains and its own settings;
- ``loss(data, minibatch) -> (scalar, terms)``: how it evaluates a minibatch; its ``update``
  minimises it over the rollout (``minimise``: epochs x minibatches, one optimiser step each).

Every algorithm keeps the population's contract: per-member seeds, minibatch streams, gradient-norm
clipping, Adam moments and (M,) metrics, so a member trained in a population equals it alone.

Adding one: a module with its ``MemberAlgorithm`` subclass, its class in
``agents/registry.py:ALGORITHMS`` and its name in ``core/sections.py:Algo`` (the config's choices,
which the registry checks). PPO is in agents/ppo.py; IDAAC and DAAC in agents/idaac.py.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch

from agents.minibatches import Batch, Minibatch, MinibatchStrategy
from agents.networks import NetworkSpec, PolicyOutput
from agents.population import MemberSpec, Population, clip_grad_norms_
from core.sections import ConfigError, NetworkConfig

Forward = Callable[[Minibatch], PolicyOutput]


@dataclass
class UpdateInput:
    """One rollout as an algorithm's update sees it.

    ``batch``: (M, T, N) samples with GAE advantages and returns (agents/rollout.py).
    ``forward``: the learner's evaluation of a minibatch under the current parameters, flat
    (M, b, A) logits and (M, b) values (the explorer replays its GRU from stored states).
    ``update``: 0-based index of this update (schedules such as IDAAC's ``value_freq``).
    ``next_obs``: (M, N, 64, 64, 3) the frame after the rollout (IDAAC pairs it too).
    ``level_seeds``, ``episode_steps``: (M, T + 2, N) int64 labels of the frames -1 (the frame
    before the rollout), 0..T-1 and T (``next_obs``): the level each frame is in and its step
    count within its episode (0 at an episode's first frame); None unless the algorithm
    ``needs_frame_labels``.
    """

    batch: Batch
    forward: Forward
    update: int
    next_obs: torch.Tensor | None = None
    level_seeds: torch.Tensor | None = None
    episode_steps: torch.Tensor | None = None


class OptimiserSettings(Protocol):
    """What an Adam optimiser of an algorithm reads from its settings (``core/sections.py``:
    ``OptimiserConfig``, or a PPO section's keys of the same names)."""

    lr: float
    adam_eps: float
    max_grad_norm: float


class RewardTransform(Protocol):
    """A member's reward transform (``MemberAlgorithm.reward_transform``), e.g.
    ``agents.rollout.ReturnScaler``; its state is checkpointed with the member."""

    def __call__(self, rewards: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """(N,) raw rewards and episode ends of one step of the member's env batch -> (N,) rewards."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class MemberAlgorithm(ABC):
    """A population's networks, optimisers and update rule (module docstring).

    ``pop`` is what acts: its ``forward(obs)`` returns a ``PolicyOutput`` (logits from the policy,
    values for GAE). ``optimizer_state``/``extra_state`` are member ``m``'s share of everything
    that resuming needs beyond the network weights (optimiser moments, counters), in plain tensors.
    """

    name: ClassVar[str]
    section: ClassVar[str]
    spec_type: ClassVar[type] = NetworkSpec
    needs_frame_labels: ClassVar[bool] = False
    # Called with a member's env count; a class (ReturnScaler) or a staticmethod, not a plain function.
    reward_transform: Callable[[int], RewardTransform] | None = None
    # Forward passes with gradients per training sample (IDAAC: 2, the second over its partner
    # frame): what autograd keeps for the backward scales with it (launch/placement.py's estimate).
    passes_per_sample: ClassVar[int] = 1
    # Whether ``loss`` is a function of the parameters that torch.compile can trace whole
    # (``population.compile``); not when it steps an optimiser inside (IDAAC's discriminator).
    loss_compiles: ClassVar[bool] = True

    def __init__(self, settings: Any, spec: MemberSpec, seeds: list[int], forward_mode: str, bf16: bool,
                 device: torch.device, minibatches: MinibatchStrategy, init: str = "torch",
                 compile_loss: bool = False) -> None:
        """``settings``: the algorithm's config section (``configure``d); ``spec``: its members'
        networks, initialised from ``seeds`` (``init``: ``network.init``, for a ``NetworkSpec``);
        ``minibatches``: how its update cuts a rollout (its generators are checkpointed);
        ``compile_loss`` (``population.compile``): ``minimise`` evaluates ``loss`` through
        ``torch.compile`` (the forward, the loss and their backward as fused kernels; the first
        update pays the compilation)."""
        self.check_compile(compile_loss)
        self.settings, self.minibatches = settings, minibatches
        self.pop = Population(spec, seeds, forward_mode, bf16, init).to(device)
        named = dict(zip(self.pop.names, self.pop.member_params()))
        self.groups: dict[str, list[torch.Tensor]] = {}
        self.optimizers: dict[str, torch.optim.Adam] = {}
        self.optimizer_settings: dict[str, OptimiserSettings] = {}
        for group, (prefix, opt) in self.optimisers().items():
            params = [p for n, p in named.items() if n.startswith(prefix)]
            if params:  # DAAC's network has no discriminator
                self.groups[group], self.optimizer_settings[group] = params, opt
                self.optimizers[group] = torch.optim.Adam(params, lr=opt.lr, eps=opt.adam_eps, **adam_kernel(device))
        self.lr = next(iter(self.optimizer_settings.values())).lr
        self.minibatch_loss = torch.compile(self.loss) if compile_loss else self.loss

    @classmethod
    def configure(cls, section: Any, game: str) -> Any:
        """The settings in force for ``game`` from the algorithm's config ``section`` (IDAAC: the
        game's tuned values with ``idaac.use_best_hps``); by default the section as it is."""
        return section

    @classmethod
    def check_compile(cls, compile_loss: bool) -> None:
        """Raise ``ConfigError`` if ``population.compile`` asks to compile a loss that cannot be."""
        if compile_loss and not cls.loss_compiles:
            raise ConfigError(f"population.compile=true: member.algo={cls.name}'s loss cannot be compiled "
                              "(it steps an optimiser inside); set population.compile=false")

    @classmethod
    @abstractmethod
    def member_spec(cls, network: NetworkConfig, settings: Any) -> MemberSpec:
        """The spec of one member's networks (stored in checkpoints)."""

    @classmethod
    def minibatch_kind(cls, settings: Any) -> str:
        """How its update cuts a rollout: ``samples`` (the default) or ``sequences``."""
        return "samples"

    @abstractmethod
    def optimisers(self) -> dict[str, tuple[str, OptimiserSettings]]:
        """Its Adam optimisers by name: the prefix of the names of the parameters each trains ("":
        all) and its settings. Called by ``__init__`` (only ``self.settings`` is set). The first
        one's learning rate is the one the learner's schedule anneals and logs; the others follow
        in proportion."""

    @abstractmethod
    def loss(self, data: UpdateInput, mb: Minibatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A minibatch's scalar to minimise (the sum over members of each member's own loss, so
        each member's gradient is its own loss's) and its (M,) terms, detached, for the metrics."""

    @property
    def anneal_lr(self) -> bool:
        """Whether the learning rates decay linearly to 0 over the budget (``agents.ppo.LRSchedule``)."""
        return self.settings.anneal_lr

    @property
    def params(self) -> list[torch.Tensor]:
        """Every stacked (M, ...) parameter."""
        return self.pop.member_params()

    def set_lr(self, lr: float) -> None:
        """The first optimiser's learning rate for the next update; each other one gets its own
        base rate scaled alike (exactly ``lr`` where its base equals the first's)."""
        for group, opt in self.optimizers.items():
            base = self.optimizer_settings[group].lr
            for g in opt.param_groups:
                g["lr"] = lr if base == self.lr else base * (lr / self.lr)

    def step(self, group: str, loss: torch.Tensor) -> torch.Tensor:
        """One step of optimiser ``group`` on the scalar ``loss``: zero_grad, backward, per-member
        gradient-norm clipping, Adam. Returns the (M,) norms before clipping."""
        opt = self.optimizers[group]
        opt.zero_grad(set_to_none=False)  # keep the gradient buffers: no re-allocation
        loss.backward()
        norms = clip_grad_norms_(self.groups[group], self.optimizer_settings[group].max_grad_norm)
        opt.step()
        return norms

    @abstractmethod
    def update(self, data: UpdateInput) -> dict[str, torch.Tensor]:
        """Train on one rollout (usually ``minimise``); per-member (M,) metrics (bare names are
        logged as losses/<name>)."""

    def minimise(self, data: UpdateInput, batch: Batch, epochs: int, num_minibatches: int) -> dict[str, torch.Tensor]:
        """``epochs`` passes over ``batch`` (``data.batch`` as the algorithm prepared it) in
        ``num_minibatches`` minibatches, each a ``loss`` and a ``step`` of the first optimiser.
        Returns per-member (M,) means of the loss terms and of the gradient norms (``grad_norm``)."""
        group = next(iter(self.optimizers))
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for mb in self.minibatches(batch, epochs, num_minibatches):
            loss, terms = self.minibatch_loss(data, mb)
            terms["grad_norm"] = self.step(group, loss)
            for k, v in terms.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1
        return {k: v / count for k, v in sums.items()}

    def optimizer_state(self, m: int) -> Any:
        """Member m's share of the optimiser states (moments are stacked on the member axis): one
        optimiser's list of per-parameter dicts (the format PPO checkpoints have always had), or
        several by name."""
        state = {g: adam_slice(opt, self.groups[g], m) for g, opt in self.optimizers.items()}
        return next(iter(state.values())) if len(state) == 1 else state

    def load_optimizer_state(self, m: int, saved: Any) -> None:
        """Restore ``optimizer_state(m)``'s output; raises ``ValueError`` if its optimisers differ."""
        if len(self.optimizers) == 1:
            [(group, opt)] = self.optimizers.items()
            load_adam_slice(opt, self.groups[group], m, saved)
            return
        if not isinstance(saved, dict) or set(saved) != set(self.optimizers):
            found = sorted(saved) if isinstance(saved, dict) else "one"
            raise ValueError(f"optimiser groups {found} differ from the network's {sorted(self.optimizers)}")
        for g, opt in self.optimizers.items():
            load_adam_slice(opt, self.groups[g], m, saved[g])

    def extra_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's counters or statistics that are neither weights nor optimiser state."""
        return {}

    def load_extra_state(self, m: int, saved: dict[str, torch.Tensor]) -> None:
        """Restore ``extra_state(m)``'s output."""


def adam_kernel(device: torch.device) -> dict[str, bool]:
    """How Adam runs on ``device``: on CUDA its fused kernel (the whole step of every parameter in a
    few launches, its step count kept on the device so nothing is read on the host); elsewhere
    torch's default, so CPU runs keep the numbers they always had (fused Adam rounds differently
    in the last bits)."""
    return {"fused": True} if device.type == "cuda" else {}


def adam_slice(opt: torch.optim.Optimizer, params: list[torch.Tensor], m: int) -> list[dict[str, Any]]:
    """Member m's share of ``opt``'s state over stacked ``params``: one dict per parameter, on the
    CPU (a fused Adam keeps its step count on the device)."""
    return [{k: (v[m].clone() if v.dim() > 0 else v.detach().cpu().clone()) if torch.is_tensor(v) else v
             for k, v in opt.state[p].items()} for p in params]


def load_adam_slice(opt: torch.optim.Optimizer, params: list[torch.Tensor], m: int,
                    saved: list[dict[str, Any]]) -> None:
    """Write ``adam_slice``'s output back into member m's rows (scalars such as ``step`` are shared)."""
    if len(saved) != len(params):
        raise ValueError(f"optimiser state has {len(saved)} parameters, the network {len(params)}")
    # A fused Adam reads its step count on the parameters' device, torch's default one on the CPU.
    on_device = any(g.get("fused") or g.get("capturable") for g in opt.param_groups)
    for p, entry in zip(params, saved):
        state = opt.state[p]
        for k, v in entry.items():
            if torch.is_tensor(v) and v.dim() > 0:
                state.setdefault(k, torch.zeros_like(p))[m].copy_(v)
            elif torch.is_tensor(v):
                state[k] = v.to(p.device if on_device else "cpu", copy=True)
            else:
                state[k] = v
