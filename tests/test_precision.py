"""Precision: bf16 reaches every convolution in every forward mode; the CUDA precision policy
(``network.tf32``) and cuDNN autotuning are applied where the runtime is resolved.

Device-parametrized tests run on the CPU everywhere and on CUDA where there is one (autocast on a
CPU runs bf16 whether or not the CPU multiplies bf16 natively, so the dtype tests run anywhere).
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from agents.networks import NetworkSpec, gru_sequence
from agents.population import Population
from core import runtime as runtime_module
from core.config import load_config, save_config
from core.runtime import Runtime, native_bf16

pytestmark = pytest.mark.usefixtures("one_thread")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
IMPALA = NetworkSpec(kind="impala")
SEEDS = [3, 7]
CONVOLUTIONS = 15  # in the IMPALA trunk: 3 stacks of one conv and two residual blocks of two


def frames(batch: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (len(SEEDS), batch, 64, 64, 3), generator=g, dtype=torch.uint8).to(device)


class ConvolutionDtypes(TorchDispatchMode):
    """Records (input dtype, weight dtype) of every convolution, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.forward: list[tuple[torch.dtype, torch.dtype]] = []
        self.backward: list[tuple[torch.dtype, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.convolution:
            self.forward.append((args[0].dtype, args[1].dtype))
        elif func.overloadpacket is torch.ops.aten.convolution_backward:  # (grad_out, input, weight, ...)
            self.backward.append((args[1].dtype, args[2].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_every_convolution_runs_in_the_chosen_precision(device, mode, bf16):
    pop = Population(IMPALA, SEEDS, forward_mode=mode, bf16=bf16).to(device)
    record = ConvolutionDtypes()
    with record:
        logits, values = pop(frames(2, device))
        (logits.square().sum() + values.sum()).backward()
    # loop: one convolution per layer and member; vmap: one grouped convolution per layer.
    assert len(record.forward) == CONVOLUTIONS * (len(SEEDS) if mode == "loop" else 1)
    assert len(record.backward) == len(record.forward)
    want = torch.bfloat16 if bf16 else torch.float32
    assert set(record.forward) == {(want, want)}, record.forward
    assert set(record.backward) == {(want, want)}, record.backward
    # what stays fp32 whatever the trunk runs in: outputs, parameters, their gradients
    assert logits.dtype == values.dtype == torch.float32
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in pop.member_params())


def relative_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((torch.linalg.vector_norm(x - y) / torch.linalg.vector_norm(y)).item() for x, y in zip(a, b))


def outputs_and_gradients(mode: str, bf16: bool, device: str) -> list[torch.Tensor]:
    pop = Population(IMPALA, SEEDS, forward_mode=mode, bf16=bf16).to(device)
    logits, values = pop(frames(4, device, seed=1))
    (logits.square().sum() + values.sum()).backward()
    return [logits.detach(), values.detach()] + [p.grad for p in pop.member_params()]


@pytest.mark.parametrize("device", DEVICES)
def test_loop_and_vmap_compute_the_same_in_bf16(device):
    """Both modes compute the same bf16 network. They round at different places (grouped against
    plain convolutions, a separate bias add), so they differ by about what two independent bf16
    runs would: ~1.4x bf16's own distance from fp32 (measured on the CPU: 1.4x outputs, 1.2x
    gradients). And vmap's bf16 is as far from fp32 as loop's (1.6x, 1.4x): before bf16 reached
    vmap's convolutions it was mostly fp32 (0.5x, 0.4x)."""
    loop, vmapped = outputs_and_gradients("loop", True, device), outputs_and_gradients("vmap", True, device)
    fp32 = outputs_and_gradients("loop", False, device)
    for part in (slice(0, 2), slice(2, None)):  # outputs (logits, values), then every gradient
        bf16_error = relative_distance(loop[part], fp32[part])
        assert 1e-3 < bf16_error < 0.2  # bf16 really ran, and the network still computes its outputs
        assert relative_distance(vmapped[part], loop[part]) < 2 * bf16_error
        assert relative_distance(vmapped[part], fp32[part]) > 0.75 * bf16_error


def saved_bytes_per_frame(pop: Population, device: str, batches: tuple[int, int] = (2, 6)) -> float:
    """What autograd saves for backward per frame and member: the growth between two batch sizes
    (so the weights, saved once whatever the batch, drop out). Storages are counted once."""
    sizes = []
    for batch in batches:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            pop(frames(batch, device))
        sizes.append(sum(storages.values()))
    return (sizes[1] - sizes[0]) / (pop.size * (batches[1] - batches[0]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_bf16_saves_less_for_backward(device, mode):
    """bf16 activations are half the size: measured 0.59x (loop) and 0.58x (vmap) of fp32 on the
    CPU; vmap's was 1.0x while its convolutions stayed fp32."""
    fp32 = saved_bytes_per_frame(Population(IMPALA, SEEDS, forward_mode=mode).to(device), device)
    bf16 = saved_bytes_per_frame(Population(IMPALA, SEEDS, forward_mode=mode, bf16=True).to(device), device)
    assert bf16 < 0.7 * fp32


# --- the CUDA precision policy and cuDNN autotuning (core/runtime.py) ---

def backend_flags() -> tuple[bool, bool, bool]:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


# The newer per-op settings (torch >= 2.9), restored as they were: the legacy flags alone would
# restore their effect but not their spelling.
NEW_API = [(torch.backends.cuda.matmul, "fp32_precision"), (torch.backends.cudnn, "fp32_precision"),
           (getattr(torch.backends.cudnn, "conv", None), "fp32_precision"),
           (getattr(torch.backends.cudnn, "rnn", None), "fp32_precision")]
NEW_API = [(o, a) for o, a in NEW_API if o is not None and hasattr(o, a)]


@pytest.fixture
def restore_backend_flags() -> Iterator[None]:
    """These settings are process-wide: every test that resolves a runtime leaves them as found."""
    flags, new = backend_flags(), [getattr(o, a) for o, a in NEW_API]
    yield
    matmul, cudnn, benchmark = flags
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    torch.backends.cudnn.benchmark = benchmark
    for (o, a), value in zip(NEW_API, new):
        setattr(o, a, value)
    assert backend_flags() == flags and [getattr(o, a) for o, a in NEW_API] == new


def set_flags(matmul: bool, cudnn: bool, benchmark: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    torch.backends.cudnn.benchmark = benchmark


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("start", [(False, False, False), (True, True, False), (False, True, True)])
def test_resolving_a_cpu_runtime_leaves_backend_flags_alone(restore_backend_flags, start, tf32):
    set_flags(*start)
    runtime = Runtime.resolve("cpu", "fp32", tf32=tf32)
    assert backend_flags() == start
    assert runtime.tf32 is False  # TF32 does not exist on a CPU: recorded as not in force
    assert runtime.describe() == "cpu (fp32)"


@pytest.mark.parametrize("tf32", [False, True])
def test_resolving_a_cuda_runtime_applies_the_policy(restore_backend_flags, monkeypatch, tf32):
    """The policy without a GPU: the flags can be set and read without CUDA, the device is faked."""
    monkeypatch.setattr(runtime_module, "resolve_device", lambda name, gpu_allowed=True: torch.device("cuda"))
    monkeypatch.setattr(runtime_module, "native_bf16", lambda device: True)
    set_flags(not tf32, not tf32, False)  # the opposite of what the policy should set
    runtime = Runtime.resolve("cuda", "auto", tf32=tf32)
    assert backend_flags() == (tf32, tf32, True)
    # torch's own readers agree (they raise where the legacy and per-op settings disagree)
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    assert (runtime.device.type, runtime.bf16, runtime.tf32) == ("cuda", True, tf32)
    assert runtime.describe() == f"cuda (bf16 trunk; other fp32 ops {'TF32' if tf32 else 'IEEE fp32'}; cuDNN autotuned)"


@CUDA
@pytest.mark.parametrize("tf32", [False, True])
def test_resolving_cuda_applies_the_policy_on_a_gpu(restore_backend_flags, tf32):
    set_flags(not tf32, not tf32, False)
    runtime = Runtime.resolve("cuda", "fp32", tf32=tf32)
    assert backend_flags() == (tf32, tf32, True) and runtime.tf32 is tf32


@CUDA
def test_true_fp32_on_cuda_keeps_the_gru_and_the_trunk_exact(restore_backend_flags):
    """Under the default policy (tf32=false) the GRU equals stepping a GRUCell, and vmap equals
    loop, at the exactness tests' 1e-5 (PyTorch's default, TF32 for cuDNN, misses by ~1e-3)."""
    Runtime.resolve("cuda", "fp32")
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(256, 256).cuda()
    x, h0 = torch.randn(16, 8, 256, device="cuda"), torch.randn(8, 256, device="cuda")
    first = torch.zeros(16, 8, device="cuda")
    with torch.no_grad():
        out, _ = gru_sequence(x, h0, first, [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh])
        h, steps = h0, []
        for t in range(16):
            h = cell(x[t], h)
            steps.append(h)
    torch.testing.assert_close(out, torch.stack(steps), rtol=0, atol=1e-5)
    obs = frames(4, "cuda")
    with torch.no_grad():
        loop = Population(IMPALA, SEEDS, forward_mode="loop").cuda()(obs)
        vmapped = Population(IMPALA, SEEDS, forward_mode="vmap").cuda()(obs)
    for a, b in zip(loop, vmapped):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_tf32_is_a_config_choice_recorded_with_the_run(tmp_path):
    cfg = load_config(None, ["device=cpu"], name="t")
    assert cfg.network.tf32 is False  # true fp32 by default
    chosen = load_config(None, ["network.tf32=true"], name="t")
    save_config(chosen, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").network.tf32 is True
    runtime = Runtime.from_config(cfg)
    assert (runtime.device.type, runtime.tf32) == ("cpu", False)


# Flag lines as Linux prints them (abridged): a Xeon with AVX512F but no AVX512-BF16 (this
# project's CI kind), a Zen 4 EPYC with it, a Sapphire Rapids Xeon with AMX, and a Neoverse V1.
XEON_AVX512F = "flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f avx512_vnni avx512_fp16 amx_bf16 amx_tile amx_int8"
NEOVERSE_V1 = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm"


@pytest.mark.parametrize("cpuinfo, native", [(XEON_AVX512F, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True),
                                             (NEOVERSE_V1, True), ("processor\t: 0\nmodel name\t: bf16 inside", False)])
def test_native_bf16_is_read_from_the_cpus_feature_flags(cpuinfo, native) -> None:
    """AVX512F alone is not bf16 hardware (oneDNN's own check says it is, and emulates it: slower
    than fp32); AVX512-BF16, AMX-BF16 and Arm's BF16 are. Only the flags lines count."""
    assert runtime_module.cpu_has_bf16(cpuinfo) is native


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="no lscpu")
def test_native_bf16_on_this_cpu_agrees_with_lscpu() -> None:
    flags = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    expected = bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
    if platform.machine() == "x86_64":
        assert native_bf16(torch.device("cpu")) is expected
        assert Runtime.resolve("cpu", "auto").bf16 is expected


def test_each_job_says_what_it_trains_on(small_cfg, capsys) -> None:
    """``auto`` resolves per machine, so each job prints what is in force: here a CPU, in bf16
    autocast only where this CPU's flags name bf16 hardware."""
    from launch.run import train_run

    train_run(small_cfg("ray=false", "logging.eval_interval=0"))
    trunk = "bf16 trunk" if native_bf16(torch.device("cpu")) else "fp32"
    assert f"member_0: training on cpu ({trunk})" in capsys.readouterr().out
