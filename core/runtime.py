"""Where a job computes and in which precision: resolved once per job, then passed as an argument.

``device=auto`` means CUDA when this process may use a GPU (inside a Ray trial: only if Ray gave the
trial one). ``precision=auto`` runs the convolutional trunk in bf16 autocast where the device
multiplies bf16 natively (CUDA since Ampere; CPUs with AVX512-BF16, AMX or Arm's BF16) and fp32
elsewhere (``native_bf16``).

Precision policy on CUDA (``network.tf32``, applied process-wide by ``Runtime.resolve``, so in every
job's own process: training, side-by-side children, Ray trials, evaluation, benchmarks):
- ``tf32: false`` (the default): every fp32 op is IEEE fp32: convolutions, cuDNN's GRU and matmuls.
  PyTorch's own default is a mix (TF32 for cuDNN convolutions and RNNs, IEEE for cuBLAS matmuls
  and the GRUCell), under which acting and replay differ by ~1e-3; in IEEE fp32 they compute the
  same numbers up to summation order, which is what the exactness tests (1e-5) check. With
  ``precision=auto`` on a bf16 GPU the trunk, nearly all of the arithmetic, runs in bf16 whatever
  this says; TF32 would only speed up the small rest.
- ``tf32: true``: convolutions, cuDNN's GRU and matmuls may use TF32 tensor cores (10-bit
  mantissa, Ampere and later): faster fp32, and acting and replay then differ by ~1e-3.
cuDNN's autotuner (``cudnn.benchmark``) is on for every CUDA job: it times the candidate
algorithms once per input shape, and a PPO job has a handful of fixed shapes.
On a CPU none of this applies and ``resolve`` leaves the process's torch settings alone.
The config's ``network.tf32`` is saved with the run; ``Runtime.describe`` says what is in force.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import Config
from core.sections import PRECISIONS, ConfigError

# CPU features with bf16 dot products: x86's AVX512-BF16 and AMX-BF16, Arm's BF16 extension (the
# names Linux gives them in /proc/cpuinfo).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware.

    On a CPU, from the kernel's feature flags (``cpu_has_bf16``): oneDNN's own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says yes on AVX512 CPUs without
    AVX512-BF16, where it emulates bf16: there one IMPALA member trained at 0.40x fp32's speed
    (docs/performance.md, the 2-core Intel Xeon without AVX512-BF16)."""
    if device.type == "cuda":  # Ampere and newer; older GPUs emulate bf16 (``including_emulation``)
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell without a native library; fp32 is never slow
        return False
    return cpu_has_bf16(cpuinfo)


def cpu_has_bf16(cpuinfo: str) -> bool:
    """Whether the ``flags`` (x86) or ``Features`` (Arm) lines of a /proc/cpuinfo text name a bf16
    dot-product extension (``BF16_CPU_FLAGS``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and BF16_CPU_FLAGS & set(value.split()):
            return True
    return False


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


def apply_cuda_policy(tf32: bool) -> None:
    """This process's CUDA settings (see the module docstring): TF32 on or off for cuBLAS matmuls
    and for cuDNN (convolutions and RNNs alike), and cuDNN's autotuner on.

    Through the ``allow_tf32`` flags: they exist in every supported torch, and in torch >= 2.9 they
    also set the newer per-op ``fp32_precision`` settings consistently. Setting those directly
    instead makes torch's own readers of the old flags (``torch.get_float32_matmul_precision``,
    ``torch.backends.cudnn.allow_tf32``) raise on a mix of the two APIs.
    """
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool  # the trunk in bf16 autocast (weights, optimiser, heads and losses stay fp32)
    tf32: bool = False  # CUDA: fp32 convolutions, matmuls and cuDNN's GRU may use TF32 (never on a CPU)
    cudagraphs: bool = False  # rollout acting replayed as captured CUDA graphs (network.acting; CUDA only)

    @classmethod
    def resolve(cls, device: str, precision: str, gpu_allowed: bool = True, tf32: bool = False,
                acting: str = "eager") -> "Runtime":
        """The job's runtime; on CUDA this also applies the precision policy to the process.

        ``acting`` is ``network.acting``: auto captures acting as CUDA graphs on CUDA only. Raises
        ValueError when ``cudagraph`` is asked for and the device is not CUDA.
        """
        d = resolve_device(device, gpu_allowed)
        if acting == "cudagraph" and d.type != "cuda":
            raise ValueError(f"network.acting=cudagraph captures CUDA graphs, but this job runs on {d} "
                             f"(device={device}); use network.acting=auto or eager, or run on a CUDA device")
        cudagraphs = acting == "cudagraph" or (acting == "auto" and d.type == "cuda")
        runtime = cls(d, resolve_bf16(precision, d), tf32 and d.type == "cuda", cudagraphs)
        if d.type == "cuda":
            apply_cuda_policy(runtime.tf32)
        return runtime

    @classmethod
    def from_config(cls, cfg: Config, gpu_allowed: bool = True) -> "Runtime":
        """``resolve`` with the config's ``device`` and ``network.precision``, ``tf32``, ``acting``."""
        return cls.resolve(cfg.device, cfg.network.precision, gpu_allowed, cfg.network.tf32, cfg.network.acting)

    def describe(self) -> str:
        trunk = "bf16 trunk" if self.bf16 else "fp32"
        if self.device.type != "cuda":
            return f"{self.device} ({trunk})"
        graphs = "; acting as CUDA graphs" if self.cudagraphs else ""
        return f"{self.device} ({trunk}; other fp32 ops {'TF32' if self.tf32 else 'IEEE fp32'}; cuDNN autotuned{graphs})"
