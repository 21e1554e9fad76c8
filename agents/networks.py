"""Actor-critic networks: the IMPALA CNN of the paper and a small CNN for CPU quickstarts.

docs/expgen.md, "Reward agents": 3 IMPALA stacks (16, 32, 32 channels), each conv3x3 -> maxpool 3x3/2 -> two
residual blocks; relu -> flatten -> Linear 256 -> relu; actor head orthogonal gain 0.01, critic head
orthogonal gain 1. Inputs are uint8 RGB frames (..., 64, 64, 3), scaled to [0, 1] inside the network
so that rollout storage stays uint8 (4x less memory and copying than float frames).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from core.sections import NETWORK_KINDS
from envs.games import NUM_ACTIONS


class PolicyOutput(NamedTuple):
    """What acting reads from a member network: (..., A) action logits and (...) state values."""

    logits: torch.Tensor
    values: torch.Tensor


class RecurrentOutput(NamedTuple):
    """A recurrent network's output: ``PolicyOutput``'s fields plus the GRU state after the sequence."""

    logits: torch.Tensor
    values: torch.Tensor
    state: torch.Tensor


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaStack(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, block: type[nn.Module] = ResidualBlock) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = block(out_channels)
        self.res1 = block(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


def impala_trunk(channels: tuple[int, ...] = (16, 32, 32), hidden: int = 256,
                 block: type[nn.Module] = ResidualBlock) -> nn.Sequential:
    """``block``: the residual block class (IDAAC members use their reference's, agents/idaac.py)."""
    stacks, c_in, size = [], 3, 64
    for c_out in channels:
        stacks.append(ImpalaStack(c_in, c_out, block))
        c_in, size = c_out, (size + 1) // 2
    return nn.Sequential(
        *stacks, nn.ReLU(), nn.Flatten(), nn.Linear(c_in * size * size, hidden), nn.ReLU()
    )


def small_trunk(hidden: int = 256) -> nn.Sequential:
    """A Nature-style CNN about 15x cheaper than IMPALA: learns maze on a CPU within minutes."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 8, stride=4), nn.ReLU(),  # 64 -> 15
        nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),  # 15 -> 6
        nn.Flatten(), nn.Linear(32 * 6 * 6, hidden), nn.ReLU(),
    )


def orthogonal_(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild a network: stored in every checkpoint."""

    kind: str = "impala"
    channels: tuple[int, ...] = (16, 32, 32)
    hidden: int = 256
    num_actions: int = NUM_ACTIONS
    recurrent: bool = False

    def __post_init__(self) -> None:
        if self.kind not in NETWORK_KINDS:
            raise ValueError(
                f"unknown network kind {self.kind!r}; choose one of: {', '.join(NETWORK_KINDS)}"
            )

    def build(self, bf16: bool = False) -> "ActorCritic | RecurrentActorCritic":
        """A fresh network: ``forward(obs)`` returns a ``PolicyOutput`` (recurrent: ``RecurrentOutput``)."""
        return RecurrentActorCritic(self, bf16) if self.recurrent else ActorCritic(self, bf16)

    @classmethod
    def from_config(cls, network: Any, recurrent: bool = False) -> "NetworkSpec":
        """The spec of a config's ``network`` section (the explorer's adds the GRU)."""
        return cls(kind=network.kind, channels=tuple(network.channels), hidden=network.hidden,
                   recurrent=recurrent)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as stored in checkpoints."""
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkSpec":
        return cls(**{**d, "channels": tuple(d["channels"])})


def run_trunk(trunk: nn.Module, obs: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The trunk, in bf16 autocast if ``bf16``; features come back as float32.

    The convolutions are nearly all of the arithmetic; bf16 halves their cost where the hardware
    has bf16 dot products. Parameters, Adam, the heads, the GRU and every loss stay float32.
    """
    with torch.autocast(obs.device.type, torch.bfloat16, enabled=bf16):
        return trunk(preprocess(obs)).float()


def preprocess(obs: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 64, 64, 3) -> float (B, 3, 64, 64) in [0, 1], channels-last in memory.

    The permute is free (a view); convolutions on CPU and GPU take channels-last input directly.
    """
    return obs.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)


def reference_init_(net: nn.Module) -> nn.Module:
    """The authors' initialisation (``network.init=reference``): Xavier-uniform weights and zero
    biases for every convolution and linear layer of the trunk, orthogonal GRU weights with zero
    biases. The heads keep their orthogonal init (gain 0.01 actor, 1 critic), as in their code."""
    for layer in net.trunk.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    gru = getattr(net, "gru", None)
    if gru is not None:
        for name, param in gru.named_parameters():
            (nn.init.orthogonal_ if name.startswith("weight") else nn.init.zeros_)(param)
    return net


def build_trunk(spec: NetworkSpec, block: type[nn.Module] = ResidualBlock) -> nn.Sequential:
    """``spec``'s trunk; ``block`` is the IMPALA kind's residual block class."""
    if spec.kind == "impala":
        return impala_trunk(tuple(spec.channels), spec.hidden, block)
    return small_trunk(spec.hidden)


class ActorCritic(nn.Module):
    """Trunk -> (policy logits, value). ``forward`` takes uint8 frames of shape (B, 64, 64, 3).

    ``bf16``: run the trunk in bf16 autocast (``core/runtime.py`` decides where that pays).
    """

    def __init__(self, spec: NetworkSpec, bf16: bool = False) -> None:
        super().__init__()
        self.spec, self.bf16 = spec, bf16
        self.trunk = build_trunk(spec)
        self.actor = orthogonal_(nn.Linear(spec.hidden, spec.num_actions), 0.01)
        self.critic = orthogonal_(nn.Linear(spec.hidden, 1), 1.0)

    def forward(self, obs: torch.Tensor) -> PolicyOutput:
        h = run_trunk(self.trunk, obs, self.bf16)
        return PolicyOutput(self.actor(h), self.critic(h).squeeze(-1))


class RecurrentActorCritic(nn.Module):
    """The explorer's network (docs/expgen.md, "Explorer"): trunk -> GRU(hidden) -> (logits, value).

    The GRU state is zeroed where ``episode_starts`` marks an episode's first frame, so memory never crosses
    episodes. ``forward`` runs a whole (T, B) sequence: the trunk sees all T*B frames in one batch,
    then the GRU steps through time with the resets as a mask on the device (``gru_sequence``: no
    host sync, the same code for an acting step, T = 1, and a replayed sequence). The parameters
    are an ``nn.GRUCell``'s, the checkpoint format.
    """

    def __init__(self, spec: NetworkSpec, bf16: bool = False) -> None:
        super().__init__()
        self.spec, self.bf16 = spec, bf16
        self.trunk = build_trunk(spec)
        self.gru = nn.GRUCell(spec.hidden, spec.hidden)
        self.actor = orthogonal_(nn.Linear(spec.hidden, spec.num_actions), 0.01)
        self.critic = orthogonal_(nn.Linear(spec.hidden, 1), 1.0)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch, self.spec.hidden, device=device)

    def forward(
        self, obs: torch.Tensor, state: torch.Tensor, episode_starts: torch.Tensor
    ) -> RecurrentOutput:
        """uint8 obs (T, B, 64, 64, 3), state (B, H), episode_starts (T, B) -> logits (T, B, A),
        values (T, B), final state (B, H)."""
        steps, batch = obs.shape[:2]
        x = run_trunk(self.trunk, obs.flatten(0, 1), self.bf16).view(steps, batch, -1)
        g = self.gru  # read at call time: the population substitutes its stacked parameters
        h, state = gru_sequence(x, state, episode_starts, [g.weight_ih, g.weight_hh, g.bias_ih, g.bias_hh])
        return RecurrentOutput(self.actor(h), self.critic(h).squeeze(-1), state)


def gru_sequence(x: torch.Tensor, state: torch.Tensor, episode_starts: torch.Tensor,
                 weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A GRU over x (T, B, I) from ``state`` (B, H), its state zeroed wherever ``episode_starts`` (T, B)
    is nonzero (bool or float): the outputs (T, B, H) and the final state (B, H), equal to stepping
    ``nn.GRUCell`` through time (Cho et al. 2014, PyTorch's gate layout: reset, update, new).
    ``weights``: ``[weight_ih (3H, I), weight_hh (3H, H), bias_ih (3H), bias_hh (3H)]``.

    The reset is a mask on the device: every step multiplies the state by ``1 - episode_starts[t]``
    before the cell (as CleanRL's ppo_atari_lstm.py does), so nothing is read on the host, the call
    never waits for the device, and it traces whole (CUDA graphs, ``torch.compile(fullgraph=True)``).
    The input half of every step's gates is one matrix product over all T*B rows (what
    ``torch.gru`` does on a CPU, and cuDNN everywhere); the steps then run the hidden half and the
    gate arithmetic of ATen's CPU ``GRUCell`` op for op, so on a CPU the outputs equal
    ``nn.GRUCell``'s and the multi-step ``torch.gru``'s bit for bit (tests/test_recurrent.py).
    """
    w_ih, w_hh, b_ih, b_hh = weights
    steps, batch, _ = x.shape
    keep = (1.0 - episode_starts.to(state.dtype)).unsqueeze(-1)  # (T, B, 1): 0 where an episode starts
    # Flattened first: a 2-D ``linear`` is always one addmm, whatever x's strides.
    input_gates = F.linear(x.reshape(steps * batch, -1), w_ih, b_ih).view(steps, batch, -1)
    h, outputs = state, []
    # unbind, not indexing: its backward stacks the T gradients once, where T indexing backwards
    # would each write a zero-filled (T, B, 3H) gradient and add it up (quadratic in T).
    for t, gates in enumerate(input_gates.unbind(0)):
        h = h * keep[t]
        # unsafe_chunk, in-place adds and activations: ATen's cell (aten/src/ATen/native/RNN.cpp,
        # GRUCell) exactly. The chunks are not autograd views of one another, so updating one in
        # place leaves the others' saved values valid.
        i_r, i_z, i_n = gates.unsafe_chunk(3, 1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).unsafe_chunk(3, 1)
        reset = h_r.add_(i_r).sigmoid_()
        update = h_z.add_(i_z).sigmoid_()
        new = h_n.mul_(reset).add(i_n).tanh_()
        h = (h - new).mul_(update).add_(new)
        outputs.append(h)
    return torch.stack(outputs), h
