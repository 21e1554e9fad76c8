"""A population of identical actor-critics whose parameters are stacked on a leading member axis.

A single agent is a population of one: there is one code path. Parameter ``w`` of the network
becomes a tensor of shape ``(M, *w.shape)``; inputs and outputs are shaped ``(M, batch, ...)``.
Because members share no parameter, the sum of their losses has, for each member, exactly the
gradient of that member's own loss, and Adam is element-wise: a member in a population is trained
exactly as it would be alone. Per-member gradient-norm clipping keeps it that way (``clip_grad_norms_``).

Two ways to run the stacked network (``forward_mode``):
- ``vmap``: ``torch.func.vmap`` over ``functional_call``; convolutions become one grouped
  convolution for all members: few, large kernels, which is what a GPU wants.
- ``loop``: one ``functional_call`` per member on a view of its parameters. On a CPU the arithmetic
  is the cost and grouped convolutions are slower than plain ones (0.65-0.95x measured on a 2-core CPU), so this is
  the CPU default. Its activations stay channels-last from the frames on (``networks.preprocess``'s
  permute is one), the layout cuDNN's and oneDNN's fast convolutions want.
``auto`` is ``vmap`` on CUDA and ``loop`` elsewhere; a reward-member job on CUDA replaces it with the
faster of the two on its own minibatch (``time_forward_modes``): which one wins depends on the GPU,
the cuDNN version, the precision and the batch (grouped convolutions are a slow path of cuDNN for
some shapes).
A recurrent population always loops (the explorer is a population of one anyway); its GRU
(``networks.gru_sequence``) is plain ops now, so vmap might apply, untried.

bf16 (``networks.run_trunk``'s autocast) is the same in both modes: the members' convolutions and
linear layers cast their operands to the autocast dtype themselves (``honour_autocast``), because
under ``vmap`` autocast never sees them (see there).
"""
from __future__ import annotations

import copy
import time
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from agents.networks import NetworkSpec, reference_init_
from core.sections import FORWARD_MODES


class MemberSpec(Protocol):
    """What a population needs of a member network's spec: ``agents.networks.NetworkSpec`` (PPO,
    the explorer) or a member algorithm's own (``agents.idaac.IDAACSpec``)."""

    recurrent: bool
    hidden: int
    num_actions: int

    def build(self, bf16: bool = False) -> nn.Module: ...

    def to_dict(self) -> dict[str, Any]: ...


class Population(nn.Module):
    """M networks of one spec, member ``m`` initialised from ``seeds[m]``.

    ``bf16``: the members' trunks run in bf16 autocast (see ``networks.run_trunk``).
    """

    def __init__(self, spec: MemberSpec, seeds: list[int], forward_mode: str = "auto",
                 bf16: bool = False, init: str = "torch") -> None:
        super().__init__()
        if forward_mode not in FORWARD_MODES:
            raise ValueError(
                f"unknown forward_mode {forward_mode!r}; choose one of: {', '.join(FORWARD_MODES)}"
            )
        self.spec = spec
        self.seeds = list(seeds)
        self.forward_mode = forward_mode
        members = [seeded_network(spec, s, init) for s in self.seeds]
        stacked, _ = stack_module_state(members)
        self.names = list(stacked)
        # ParameterDict keys cannot contain dots.
        self.stacked = nn.ParameterDict(
            {k.replace(".", "/"): nn.Parameter(v.detach().clone()) for k, v in stacked.items()}
        )
        # Structure only: the weights come from `stacked`.
        base = honour_autocast(copy.deepcopy(members[0]).to("meta"))
        base.bf16 = bf16
        object.__setattr__(self, "_base", base)  # not a submodule: its meta tensors are not state

    @property
    def bf16(self) -> bool:
        return self._base.bf16

    @property
    def size(self) -> int:
        return len(self.seeds)

    def member_params(self) -> list[torch.Tensor]:
        return [self.stacked[k.replace(".", "/")] for k in self.names]

    def _mode(self, device: torch.device) -> str:
        if self.spec.recurrent:
            return "loop"
        if self.forward_mode == "auto":
            return "vmap" if device.type == "cuda" and self.size > 1 else "loop"
        return self.forward_mode

    def forward(self, *inputs: torch.Tensor, **options: Any) -> Any:
        """Run every member on its own slice of each input (leading axis M); ``options`` (plain
        values, the same for every member) go to the member network's ``forward`` as keywords.

        Feed-forward members: uint8 frames (M, B, 64, 64, 3) -> ``PolicyOutput`` of logits
        (M, B, A) and values (M, B). Recurrent members take and return their state too
        (``RecurrentOutput``). Other outputs (a member algorithm's heads) come back with the member
        axis in front, in the network's own output type (tensor, tuple or NamedTuple).
        """
        params = self.member_params()
        if self._mode(inputs[0].device) == "vmap":

            def one(p: tuple[torch.Tensor, ...], *x: torch.Tensor):
                return functional_call(self._base, dict(zip(self.names, p)), x, options)

            return vmap(one)(tuple(params), *inputs)
        per_member = zip(*(p.unbind(0) for p in params))  # unbind's backward is one stack
        outs = [
            functional_call(self._base, dict(zip(self.names, p)), tuple(x[m] for x in inputs), options)
            for m, p in enumerate(per_member)
        ]
        return stack_outputs(outs)

    def member_state_dict(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m`` as the state dict of a plain ``ActorCritic``: the checkpoint format."""
        return {k: p[m].detach().clone() for k, p in zip(self.names, self.member_params())}

    def load_member_state_dict(self, m: int, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.names) ^ set(state)
        if missing:
            raise ValueError(f"state dict does not match the network: keys {sorted(missing)}")
        with torch.no_grad():
            for k, p in zip(self.names, self.member_params()):
                p[m].copy_(state[k])

    @classmethod
    def from_state_dicts(
        cls, spec: MemberSpec, states: list[dict[str, torch.Tensor]], forward_mode: str = "auto",
        bf16: bool = False,
    ) -> "Population":
        pop = cls(spec, list(range(len(states))), forward_mode, bf16)
        for m, state in enumerate(states):
            pop.load_member_state_dict(m, state)
        return pop


def time_forward_modes(pop: Population, frames: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Seconds per forward and backward of ``frames`` (M, b, 64, 64, 3) uint8 through ``pop`` in each
    forward mode (``vmap``, ``loop``), each timed over ``repeats`` calls after two warm-up calls
    (cuDNN's autotuner picks its algorithms in those). What ``population.forward_mode=auto``
    measures on CUDA (training/population_learner.py). Gradients go to ``torch.autograd.grad``, so
    the parameters' ``.grad`` are left as they were; ``pop.forward_mode`` is restored."""
    device, chosen = frames.device, pop.forward_mode
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    params = pop.member_params()

    def forward_backward() -> None:
        out = pop(frames)
        leaves = [out] if torch.is_tensor(out) else list(out)
        total = sum(x.float().sum() for x in leaves if x.is_floating_point())
        torch.autograd.grad(total, params, allow_unused=True)

    times = {}
    try:
        for mode in ("vmap", "loop"):
            pop.forward_mode = mode
            for _ in range(2):
                forward_backward()
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                forward_backward()
            sync()
            times[mode] = (time.perf_counter() - start) / repeats
    finally:
        pop.forward_mode = chosen
    return times


def stack_outputs(outs: list[Any]) -> Any:
    """Per-member outputs -> one output with a leading member axis, of the members' output type."""
    first = outs[0]
    if torch.is_tensor(first):
        return torch.stack(outs)
    stacked = [torch.stack(o) for o in zip(*outs)]
    return type(first)(*stacked) if hasattr(first, "_fields") else tuple(stacked)


class AutocastConv2d(nn.Conv2d):
    """``nn.Conv2d`` that casts its operands to the autocast dtype itself (see ``honour_autocast``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x)
        if dtype is None:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias)


class AutocastLinear(nn.Linear):
    """``nn.Linear`` that casts its operands to the autocast dtype itself (see ``honour_autocast``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x)
        if dtype is None:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.weight.to(dtype), bias)


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run a convolution or linear layer on ``x`` in; None when it is off."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind) and x.is_floating_point():
        return torch.get_autocast_dtype(kind)
    return None


def honour_autocast(net: nn.Module) -> nn.Module:
    """Make ``net``'s convolutions and linear layers apply autocast's cast themselves, in place.

    Why: autocast casts at the level of ``conv2d`` and ``linear``, but under ``torch.func.vmap``
    the dispatcher's batching key (FuncTorchBatched) comes before the autocast keys, and vmap's
    batching rules decompose ``conv2d`` into ``aten.convolution`` (and ``linear`` into matmuls,
    which autocast catches for some shapes only) before autocast sees the call.
    ``aten.convolution`` is not on autocast's list, so every convolution of a vmapped population
    stayed float32 (entering autocast outside vmap changes nothing: the key order is global).
    Casting the operands before the call does what autocast does (same ops, same dtypes) in every
    mode; in ``loop`` mode autocast then finds them cast already, and with autocast off the layer
    is the plain one, bit for bit. Only the layer classes change: the parameter names and the
    state dict stay those of ``net``.
    """
    swap = {nn.Conv2d: AutocastConv2d, nn.Linear: AutocastLinear}
    for layer in net.modules():
        if type(layer) in swap:
            layer.__class__ = swap[type(layer)]  # a subclass that adds no state: only forward differs
    return net


def seeded_network(spec: MemberSpec, seed: int, init: str = "torch") -> nn.Module:
    """The network a member with ``seed`` starts from (the same for every engine); ``init`` is
    ``network.init``: PyTorch's default layer init, or the authors' (``reference_init_``). A member
    algorithm's own spec (not a ``NetworkSpec``) initialises its networks as its reference does."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = spec.build()
        return reference_init_(net) if init == "reference" and isinstance(spec, NetworkSpec) else net


def clip_grad_norms_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each member separately, on stacked (M, ...) parameters:
    returns the (M,) norms before clipping.

    A member's scale depends on its own gradients only, so a NaN or huge gradient in one member
    leaves every other member's update unchanged. The arithmetic is torch's own foreach clipping
    (``clip_grad_norm_(foreach=True)``: per-tensor norms, their norm, scale ``max_norm / (norm +
    1e-6)`` capped at 1), applied to every member's views at once: one multi-tensor norm over the
    M x P gradient views and one multi-tensor multiply per member, where a loop over parameters
    would launch a few kernels per parameter (about 150 per optimiser step for IMPALA). Nothing is
    read on the host.
    """
    grads = [p.grad for p in params if p.grad is not None]
    members = grads[0].shape[0]
    views = [[g[m] for g in grads] for m in range(members)]
    norms = torch._foreach_norm([v for member in views for v in member])  # member-major, P per member
    totals = torch.linalg.vector_norm(torch.stack(norms).view(members, len(grads)), dim=1)
    scale = (max_norm / (totals + 1e-6)).clamp(max=1.0)
    for m, member in enumerate(views):
        torch._foreach_mul_(member, scale[m])
    return totals
