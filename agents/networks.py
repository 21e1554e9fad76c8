"""Actor-critic networks: the IMPALA CNN of the paper and a small CNN for CPU quickstarts.

EXPGEN.md section 1: 3 IMPALA stacks (16, 32, 32 channels), each conv3x3 -> maxpool 3x3/2 -> two
residual blocks; relu -> flatten -> Linear 256 -> relu; actor head orthogonal gain 0.01, critic head
orthogonal gain 1. Inputs are uint8 RGB frames (..., 64, 64, 3), scaled to [0, 1] inside the network
so that rollout storage stays uint8 (4x less memory and copying than float frames).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from envs.games import NUM_ACTIONS

NETWORK_KINDS = ("impala", "small")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaStack(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = ResidualBlock(out_channels)
        self.res1 = ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


def impala_trunk(channels: tuple[int, ...] = (16, 32, 32), hidden: int = 256) -> nn.Sequential:
    stacks, c_in, size = [], 3, 64
    for c_out in channels:
        stacks.append(ImpalaStack(c_in, c_out))
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

    def build(self) -> "ActorCritic | RecurrentActorCritic":
        return RecurrentActorCritic(self) if self.recurrent else ActorCritic(self)


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware (CUDA since Ampere; CPUs with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True when the trunk should run in bf16 autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def run_trunk(module: nn.Module, obs: torch.Tensor) -> torch.Tensor:
    """The trunk, in bf16 autocast if ``module.bf16`` is set; features come back as float32.

    The convolutions are nearly all of the arithmetic; bf16 halves their cost where the hardware
    has bf16 dot products. Parameters, Adam, the heads, the GRU and every loss stay float32.
    """
    with torch.autocast(obs.device.type, torch.bfloat16, enabled=getattr(module, "bf16", False)):
        return module.trunk(preprocess(obs)).float()


def preprocess(obs: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 64, 64, 3) -> float (B, 3, 64, 64) in [0, 1], channels-last in memory.

    The permute is free (a view); convolutions on CPU and GPU take channels-last input directly.
    """
    return obs.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)


def build_trunk(spec: NetworkSpec) -> nn.Sequential:
    if spec.kind == "impala":
        return impala_trunk(tuple(spec.channels), spec.hidden)
    return small_trunk(spec.hidden)


class ActorCritic(nn.Module):
    """Trunk -> (policy logits, value). ``forward`` takes uint8 frames of shape (B, 64, 64, 3)."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = build_trunk(spec)
        self.actor = orthogonal_(nn.Linear(spec.hidden, spec.num_actions), 0.01)
        self.critic = orthogonal_(nn.Linear(spec.hidden, 1), 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = run_trunk(self, obs)
        return self.actor(h), self.critic(h).squeeze(-1)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())



class RecurrentActorCritic(nn.Module):
    """The explorer's network (EXPGEN.md section 2): trunk -> GRU(hidden) -> (logits, value).

    The GRU state is zeroed where ``first`` marks an episode's first frame, so memory never crosses
    episodes. ``forward`` runs a whole (T, B) sequence: the trunk, which is nearly all the cost,
    sees all T*B frames in one batch; only the cheap GRU cell steps through time.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = build_trunk(spec)
        self.gru = nn.GRUCell(spec.hidden, spec.hidden)
        self.actor = orthogonal_(nn.Linear(spec.hidden, spec.num_actions), 0.01)
        self.critic = orthogonal_(nn.Linear(spec.hidden, 1), 1.0)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(batch, self.spec.hidden, device=device)

    def forward(
        self, obs: torch.Tensor, state: torch.Tensor, first: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 obs (T, B, 64, 64, 3), state (B, H), first (T, B) -> logits (T, B, A),
        values (T, B), final state (B, H)."""
        steps, batch = obs.shape[:2]
        x = run_trunk(self, obs.flatten(0, 1)).view(steps, batch, -1)
        keep = (1.0 - first.float()).unsqueeze(-1)
        outs = []
        for t in range(steps):
            state = self.gru(x[t], state * keep[t])
            outs.append(state)
        h = torch.stack(outs)
        return self.actor(h), self.critic(h).squeeze(-1), state
