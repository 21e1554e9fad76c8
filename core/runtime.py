"""Where a job computes and in which precision: resolved once per job, then passed as an argument.

``device=auto`` means CUDA when this process may use a GPU (inside a Ray trial: only if Ray gave the
trial one). ``precision=auto`` runs the convolutional trunk in bf16 autocast where the device
multiplies bf16 natively (CUDA since Ampere; CPUs with AVX512-BF16 or AMX) and fp32 elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.config import PRECISIONS, ConfigError


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_device(name: str, gpu_allowed: bool = True) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device that exists here."""
    if name == "auto":
        return torch.device("cuda" if gpu_allowed and torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
    return torch.device(name)


def resolve_bf16(precision: str, device: torch.device) -> bool:
    """True when the trunk should run in bf16 autocast on ``device``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool  # the trunk in bf16 autocast (weights, optimiser, heads and losses stay fp32)

    @classmethod
    def resolve(cls, device: str, precision: str, gpu_allowed: bool = True) -> "Runtime":
        d = resolve_device(device, gpu_allowed)
        return cls(d, resolve_bf16(precision, d))

    def describe(self) -> str:
        return f"{self.device} ({'bf16 trunk' if self.bf16 else 'fp32'})"
