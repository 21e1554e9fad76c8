"""The members' update near the hardware, each change against a reference computation: clipping
across members (torch's own ``clip_grad_norm_`` per member), fused Adam (torch's default Adam),
the loss through ``torch.compile`` (eager), the forward mode chosen by measurement, channels-last
activations, and an update that reads nothing on the host. Every test runs on the CPU and, where
there is a GPU, on CUDA (``benchmarks/gpu_suite.sh`` runs the ``cuda`` cases).
"""
from __future__ import annotations

import os

# Deterministic cuBLAS needs this before CUDA starts in this process.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

from agents.algorithm import UpdateInput, adam_slice, load_adam_slice  # noqa: E402
from agents.minibatches import SampleMinibatches  # noqa: E402
from agents.networks import NetworkSpec  # noqa: E402
from agents.population import Population, clip_grad_norms_, time_forward_modes  # noqa: E402
from agents.ppo import PPOAlgorithm  # noqa: E402
from agents.sampling import make_generators  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.sections import ConfigError, PPOConfig  # noqa: E402
from launch.run import train_run  # noqa: E402
from tests.test_explorer import HostReads  # noqa: E402
from tests.test_population import SEEDS, SMALL, synthetic_batches  # noqa: E402
from training.population_learner import PopulationLearner  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))])
def device(request) -> torch.device:
    return torch.device(request.param)


def stacked_grads(device: torch.device, members: int = 3) -> list[torch.Tensor]:
    """Parameters shaped like IMPALA's (a conv weight, a bias, a linear weight) with random
    gradients: member 1's huge (clipped hard), member 2's tiny (left alone)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.zeros(members, *shape, device=device, requires_grad=True) for shape in ((16, 3, 3, 3), (16,), (15, 256))]
    for p in params:
        grad = torch.randn(p.shape, generator=g)
        grad[1] *= 1e6
        grad[2] *= 1e-6
        p.grad = grad.to(device)
    return params


def test_clipping_across_members_is_torchs_clip_grad_norm_on_each_member(device) -> None:
    """One multi-tensor norm over every member's gradients, one multiply per member: each member's
    gradients end as ``torch.nn.utils.clip_grad_norm_`` leaves them on that member alone (its
    foreach path, the same kernels: bit for bit), and so do the returned norms."""
    params = stacked_grads(device)
    want = []
    for m in range(3):
        alone = [torch.zeros_like(p[m], requires_grad=True) for p in params]
        for a, p in zip(alone, params):
            a.grad = p.grad[m].clone()
        norm = torch.nn.utils.clip_grad_norm_(alone, max_norm=0.5, foreach=True)
        want.append((norm, [a.grad for a in alone]))
    norms = clip_grad_norms_(params, max_norm=0.5)
    for m, (norm, grads) in enumerate(want):
        assert torch.equal(norms[m], norm)
        for p, grad in zip(params, grads):
            assert torch.equal(p.grad[m], grad)
    assert norms[1] > 1e5 and norms[2] < 0.5  # the cases clipped hard and left alone


def test_clipping_across_members_equals_the_per_parameter_loop_to_rounding(device) -> None:
    """Against the per-parameter loop it replaced (transcribed here): the same scale up to float32
    rounding (the norm is now the norm of per-tensor norms, not one sum of squares)."""
    params = stacked_grads(device)
    before = [p.grad.clone() for p in params]
    sq = torch.stack([g.double().pow(2).flatten(1).sum(1) for g in before]).sum(0)
    ref_norms = sq.sqrt()
    scale = (0.5 / (ref_norms + 1e-6)).clamp(max=1.0)
    norms = clip_grad_norms_(params, max_norm=0.5)
    torch.testing.assert_close(norms.double(), ref_norms, rtol=1e-6, atol=0)
    for p, g in zip(params, before):
        ref = g.double() * scale.view(-1, *[1] * (g.dim() - 1))
        torch.testing.assert_close(p.grad.double(), ref, rtol=1e-6, atol=1e-12)


def adam_trajectory(device: torch.device, fused: bool, resume_at: int | None = None) -> torch.Tensor:
    """Five Adam steps on stacked (3, 4, 5) weights with fixed gradients; with ``resume_at``, member
    1's state is saved after that step (``adam_slice``) and loaded into a fresh optimiser."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4, 5, device=device))
    grads = [torch.randn(3, 4, 5, device=device) for _ in range(5)]
    opt = torch.optim.Adam([w], lr=0.01, eps=1e-5, fused=fused)
    for i, g in enumerate(grads):
        w.grad = g.clone()
        opt.step()
        if i == resume_at:
            saved = adam_slice(opt, [w], 1)
            assert all(v.device.type == "cpu" for entry in saved for v in entry.values())  # a device-free checkpoint
            opt = torch.optim.Adam([w], lr=0.01, eps=1e-5, fused=fused)
            for m in range(3):
                load_adam_slice(opt, [w], m, saved)
    return w.detach()


def test_fused_adam_follows_torchs_default_adam_and_resumes(device) -> None:
    """Fused Adam (what members use on CUDA: ``algorithm.adam_kernel``) against torch's default
    Adam on the same gradients: equal to float32 rounding; its state saved as a checkpoint slice
    and loaded back (the step count goes to the parameters' device) continues the same run."""
    fused, default = adam_trajectory(device, fused=True), adam_trajectory(device, fused=False)
    torch.testing.assert_close(fused, default, rtol=1e-5, atol=1e-6)
    # Every member continues from member 1's state: row 1 continues exactly.
    assert torch.equal(adam_trajectory(device, fused=True, resume_at=2)[1], fused[1])
    assert torch.equal(adam_trajectory(device, fused=False, resume_at=2)[1], default[1])


def ppo_update(device: torch.device, compile_loss: bool, mode: str = "loop") -> tuple[Population, list[dict]]:
    """Two PPO updates of three small members on synthetic rollouts (tests/test_population.py)."""
    cfg = PPOConfig(epochs=2, num_minibatches=4, lr=1e-3, max_grad_norm=0.5)
    algo = PPOAlgorithm(cfg, SMALL, SEEDS, mode, False, device, SampleMinibatches(make_generators(SEEDS, "cpu", salt=2)),
                        compile_loss=compile_loss)
    forward = lambda mb: algo.pop(mb.batch.flat().obs)  # noqa: E731
    batches = synthetic_batches(3)
    metrics = [algo.update(UpdateInput(type(b)(*(t.to(device) for t in vars(b).values())), forward, u))
               for u, b in enumerate(batches)]
    return algo.pop, metrics


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_compiled_loss_trains_as_eager(device, mode) -> None:
    """``population.compile``: the update with its minibatch loss through ``torch.compile`` against
    the eager one, in each forward mode, two updates of three members: weights and metrics equal to float32 rounding
    (the fused kernels sum in another order). The loss compiles as one graph: no graph break."""
    if mode == "vmap" and device.type == "cpu":
        pytest.skip("on a CPU auto loops; compiled vmap, CUDA's candidate, is checked on CUDA (a minute of compiling here)")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled, compiled_metrics = ppo_update(device, compile_loss=True, mode=mode)
    assert not torch._dynamo.utils.counters["graph_break"]
    eager, eager_metrics = ppo_update(device, compile_loss=False, mode=mode)
    for m in range(3):
        for k, v in eager.member_state_dict(m).items():
            torch.testing.assert_close(compiled.member_state_dict(m)[k], v, rtol=1e-4, atol=1e-5, msg=k)
    for got, want in zip(compiled_metrics, eager_metrics):
        for k in ("policy_loss", "value_loss", "entropy", "grad_norm"):
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)


def test_forward_modes_are_timed_without_touching_training_state(device) -> None:
    """``time_forward_modes`` (``population.forward_mode=auto`` on CUDA): a time for each mode from
    real forward and backward calls, and the population's gradients and mode as they were."""
    pop = Population(SMALL, SEEDS, forward_mode="auto").to(device)
    for p in pop.member_params():
        p.grad = torch.full_like(p, 0.25)
    frames = torch.randint(0, 255, (3, 8, 64, 64, 3), dtype=torch.uint8, device=device)
    calls = []
    pop.register_forward_pre_hook(lambda module, args: calls.append(module.forward_mode))
    times = time_forward_modes(pop, frames, repeats=2)
    assert set(times) == {"vmap", "loop"} and all(t > 0 for t in times.values())
    assert calls == ["vmap"] * 4 + ["loop"] * 4  # two warm-up calls and two timed calls each
    assert pop.forward_mode == "auto"
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in pop.member_params())


def test_a_job_keeps_the_forward_mode_it_measured_faster(small_cfg, capsys) -> None:
    """What a reward-member job on CUDA does with ``forward_mode=auto`` (called directly here: on a
    CPU ``auto`` is loop without measuring): the faster mode becomes the population's, and the job
    says which and why; training then runs in it."""
    learner = PopulationLearner(small_cfg("ensemble.size=2"), [0, 1], Runtime.resolve("cpu", "fp32"))
    try:
        learner.measure_forward_mode(16)
        times = learner.forward_mode_times
        assert learner.pop.forward_mode == min(times, key=times.get)
        out = capsys.readouterr().out
        assert f"using {learner.pop.forward_mode}" in out and "16 frames x 2 members" in out
        learner.iterate()
    finally:
        learner.close()


def test_loop_mode_convolutions_run_channels_last() -> None:
    """The frames' permute (``networks.preprocess``) is already the channels-last layout, and every
    convolution of a loop-mode population keeps it, input and output: no layout conversions."""
    pop = Population(NetworkSpec(kind="impala"), [0, 1], forward_mode="loop")
    seen = []
    for layer in pop._base.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(lambda mod, inp, out: seen.append(
                (inp[0].is_contiguous(memory_format=torch.channels_last), out.is_contiguous(memory_format=torch.channels_last))))
    with torch.no_grad():
        pop(torch.randint(0, 255, (2, 3, 64, 64, 3), dtype=torch.uint8))
    assert len(seen) == 2 * 15 and all(i and o for i, o in seen)


def test_members_update_never_reads_the_host(small_cfg, monkeypatch) -> None:
    """GAE, every minibatch's forward and loss, the clipping and Adam leave the metrics on the
    device: nothing in the update reads a tensor on the host (the loop reads the metrics and the
    finiteness of the parameters once per update). torch's default Adam reads its step count, a
    CPU tensor (no device sync); the fused Adam of CUDA jobs keeps it on the device."""
    learner = PopulationLearner(small_cfg("ensemble.size=2"), [0, 1], Runtime.resolve("cpu", "fp32"))
    try:
        learner.collect()
        counts = HostReads(monkeypatch)
        metrics = learner.learn()
        assert set(counts.reads) <= {"_get_value"} and counts.uploads == {}
        assert metrics and all(torch.is_tensor(v) for v in metrics.values())
    finally:
        learner.close()


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_members_update_on_cuda_never_synchronises(tmp_path) -> None:
    """On CUDA, with torch's sync debugging set to raise: a whole members' update (GAE, minibatch
    order from pinned memory, forward, loss, clipping, fused Adam) makes no synchronising call."""
    from tests.helpers import make_small_cfg

    cfg = make_small_cfg(tmp_path, "device=cuda", "ensemble.size=2", "population.forward_mode=vmap")
    learner = PopulationLearner(cfg, [0, 1], Runtime.resolve("cuda", "fp32"))
    try:
        learner.collect()
        learner.learn()  # first update: allocations, cuDNN's autotuner
        learner.collect()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            learner.learn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        learner.close()


def test_compiling_a_loss_that_steps_an_optimiser_is_refused_before_the_run_starts(small_cfg) -> None:
    """IDAAC's loss takes its discriminator's Adam step inside (``loss_compiles`` false): asked to
    compile it, training refuses with the key to change, and no run directory is made."""
    cfg = small_cfg("member.algo=idaac", "population.compile=true")
    with pytest.raises(ConfigError, match="population.compile=false"):
        train_run(cfg)
    assert not cfg.layout.root.exists()
