"""The exactness checks that an accelerator can break, on the CPU and, where torch sees one, on CUDA.

Every test takes ``device`` ("cpu", and "cuda" where there is a GPU; skipped otherwise) and runs the
CPU tests' own bodies and helpers with that device patched in, so each check is written once:

- the GRU over the explorer's 512-step sequences against the GRUCell loop, with gradients
  (tests/test_recurrent.py), and replayed as one CUDA graph (CUDA only);
- the population's vmap forward against its loop, with gradients (tests/test_population.py);
- the kNN buffer's uint16 state round trip (tests/test_knn_reward.py);
- the rollout pipeline with delayed device copies, bit for bit (below: the one new check);
- train, checkpoint and resume, for members and the explorer (tests/test_checkpoint.py,
  tests/test_explorer.py);
- ``ray=false`` jobs training side by side in child processes (tests/test_side_by_side.py);
- captured acting (``network.acting=cudagraph``) against eager acting, bit for bit (CUDA only).

``benchmarks/gpu_suite.sh`` runs the CUDA half on a GPU machine (``-k cuda``). On CUDA the tests run
with TF32 off and deterministic algorithms: what the CPU tests compare to fp32 rounding (or bit for
bit) is then compared the same way on the GPU. Child processes (side by side) start with PyTorch's
defaults, so that test keeps them and compares weights to fp32 rounding on CUDA.
"""
from __future__ import annotations

import os

# Deterministic cuBLAS needs this before CUDA starts in this process (the tests below start it).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from agents.acting import CapturedStep  # noqa: E402
from agents.knn_reward import EpisodicKNNReward, embed_frames  # noqa: E402
from agents.networks import gru_sequence  # noqa: E402
from core.config import ConfigError  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from launch.run import train_run  # noqa: E402
from tests import test_checkpoint as checkpoint_tests  # noqa: E402
from tests import test_explorer as explorer_tests  # noqa: E402
from tests import test_knn_reward as knn_tests  # noqa: E402
from tests import test_pipeline as pipeline_tests  # noqa: E402
from tests import test_population as population_tests  # noqa: E402
from tests import test_recurrent as recurrent_tests  # noqa: E402
from tests import test_side_by_side as side_by_side_tests  # noqa: E402
from tests.helpers import make_small_cfg  # noqa: E402
from tests.test_checkpoint import trained  # noqa: E402,F401  (the fixture, on ``device`` via small_cfg)
from training.explorer_learner import ExplorerLearner  # noqa: E402
from training.population_learner import PopulationLearner  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_CUDA = torch.cuda.is_available()
DELAY_MS = 2.0  # each delayed host-to-device copy waits this long on the GPU (a procgen step: ~0.2 ms)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))])
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def exact_cuda(request):
    """On CUDA: fp32 without TF32, deterministic kernels, restored afterwards. Tests that ask for
    ``torch_defaults`` keep PyTorch's defaults instead: the child processes they compare with start
    with those."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("device") != "cuda" or "torch_defaults" in request.fixturenames:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark, enabled, warn_only) = saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def cuda_only(device: str, cpu_test: str) -> None:
    """Tests whose CPU case is another file's test, body and all: run here on CUDA only (suite time)."""
    if device == "cpu":
        pytest.skip(f"on the CPU this is {cpu_test}")


@pytest.fixture
def torch_defaults() -> None:
    """Asked for by a test that runs with PyTorch's default numerics on CUDA (see ``exact_cuda``)."""


@pytest.fixture
def small_cfg(tmp_path: Path, device: str):
    """conftest's ``small_cfg`` on ``device`` (a later ``device=`` override still wins): the reused
    tests and fixtures (``trained``) train there."""

    def make(*overrides: str, name: str = "t"):
        return make_small_cfg(tmp_path, f"device={device}", *overrides, name=name)

    return make


# ---- the CPU tests' bodies, on the device ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["middle", "first_step", "every_step", "none"])
def test_gru_sequence_equals_the_step_loop_over_512_steps(device, kind) -> None:
    """The explorer's sequences (ppo.num_steps=512): ``gru_sequence`` against tests/test_recurrent.py's
    GRUCell loop, with that file's resets, in outputs and in the gradients of every input and
    weight. Over 512 steps a weight's gradient sums 2,560 terms to about 70, so gradients are
    compared relative to their largest entry (the CPU file's absolute 1e-4 is sized for 40 steps)."""
    with torch.device(device):  # the GRUCell and every tensor live there
        torch.manual_seed(0)
        cell = nn.GRUCell(recurrent_tests.H, recurrent_tests.H)
        x = torch.randn(512, 5, recurrent_tests.H, requires_grad=True)
        state = torch.randn(5, recurrent_tests.H, requires_grad=True)
        first = recurrent_tests.resets(kind, 512, 5)
        weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
        probe = torch.randn(512, 5, recurrent_tests.H)
        results = {}
        for name, run in (("sequence", lambda: gru_sequence(x, state, first, weights)),
                          ("loop", lambda: recurrent_tests.step_loop(cell, x, state, first))):
            out, final = run()
            results[name] = (out, final, torch.autograd.grad((out * probe).sum() + final.sum(), [x, state, *weights]))
    (out, final, grads), (ref_out, ref_final, ref_grads) = results["sequence"], results["loop"]
    assert out.device.type == device
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=0, atol=1e-5)
    for name, g, r in zip(["x", "state", "w_ih", "w_hh", "b_ih", "b_hh"], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5 * r.abs().max().item(), msg=f"gradient of {name}")


def test_gru_sequence_replays_as_a_cuda_graph(device) -> None:
    """The explorer's 512-step replay, resets included, captured whole as one CUDA graph (it reads
    nothing on the host, so capture cannot fail): replays equal eager calls bit for bit, also after
    new inputs and new resets are copied into the captured tensors."""
    cuda_only(device, "tests/test_recurrent.py::test_gru_sequence_compiles_whole_with_no_graph_break")
    with torch.device(device), torch.no_grad():
        torch.manual_seed(1)
        cell = nn.GRUCell(recurrent_tests.H, recurrent_tests.H)
        weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
        x, state = torch.randn(512, 5, recurrent_tests.H), torch.randn(5, recurrent_tests.H)
        starts = recurrent_tests.resets("middle", 512, 5)
        graph = CapturedStep(lambda: gru_sequence(x, state, starts, weights), torch.device(device))
        for kind in ("first_step", "every_step"):
            got, want = graph(), gru_sequence(x, state, starts, weights)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            x.copy_(torch.randn_like(x))
            starts.copy_(recurrent_tests.resets(kind, 512, 5))
    assert graph.graph is not None and got[0].device.type == device


@pytest.mark.parametrize("kind", ["small", "impala"])
def test_vmap_and_loop_populations_agree_on_the_device(device, kind, monkeypatch) -> None:
    frames, Population = population_tests.frames, population_tests.Population
    built = []

    def on_device(*args, **kwargs):
        built.append(Population(*args, **kwargs).to(device))  # built on the CPU, moved: as the learners do
        return built[-1]

    monkeypatch.setattr(population_tests, "frames", lambda *shape, seed=0: frames(*shape, seed=seed).to(device))
    monkeypatch.setattr(population_tests, "Population", on_device)
    population_tests.test_vmap_and_loop_forward_agree(kind)
    assert [p.member_params()[0].device.type for p in built] == [device, device]


def test_knn_uint16_state_round_trip_on_the_device(device, monkeypatch) -> None:
    made = []

    def on_device(*args, **kwargs):
        made.append(EpisodicKNNReward(*args, device=device, **kwargs))
        return made[-1]

    monkeypatch.setattr(knn_tests, "EpisodicKNNReward", on_device)
    monkeypatch.setattr(knn_tests, "embed_frames", lambda frames, *a, **k: embed_frames(frames.to(device), *a, **k))
    knn_tests.test_integer_state_is_half_the_bytes_and_restores_bit_for_bit()
    assert made and all(m.buffer.device.type == device for m in made)


def test_members_train_checkpoint_and_resume_exactly_on_the_device(device, trained) -> None:  # noqa: F811
    cuda_only(device, "tests/test_checkpoint.py::test_restore_continues_exactly")
    assert trained[1].device.type == device
    checkpoint_tests.test_restore_continues_exactly(trained)


def test_explorer_resumes_with_identical_actions_on_the_device(device, small_cfg) -> None:
    cuda_only(device, "tests/test_explorer.py::test_explorer_resume_gives_identical_next_actions")
    explorer_tests.test_explorer_resume_gives_identical_next_actions(small_cfg)


@pytest.mark.slow  # child processes
def test_side_by_side_children_train_on_the_device(device, torch_defaults, small_cfg, monkeypatch) -> None:
    """Both jobs train in child processes on the device (each child's checkpoint says where its
    sampling ran) and end where the same jobs trained in this process end, with the same torch
    settings: bit for bit on the CPU. On CUDA each process's cuDNN autotuner may pick kernels that
    add in another order, and Adam's first steps move each weight by about ``lr`` in the direction
    of its gradient's sign, so a gradient element near zero that rounds to the other sign moves its
    weight by up to 2 ``lr`` per step (seen on an H200): there, nearly all weights must agree to
    1e-4 and none may differ by more than those sign flips allow."""
    cuda_only(device, "tests/test_side_by_side.py (children on the CPU)")
    one_update = ["ppo.total_steps=32", "explorer.total_steps=32"]
    side_by_side_tests.no_job_trains_here(monkeypatch)
    cfg = small_cfg(*side_by_side_tests.BOTH, *one_update, name="side")
    summary = train_run(cfg)
    monkeypatch.undo()
    assert {a["agent"]: a["steps"] for a in summary["agents"]} == {"member_0": 32, "explorer": 32}
    here = small_cfg(*side_by_side_tests.BOTH, *one_update, "resources.side_by_side=false", name="here")
    train_run(here)
    exact = device == "cpu"
    for a, b in ((cfg.layout.member(0), here.layout.member(0)), (cfg.layout.explorer, here.layout.explorer)):
        child, parent = side_by_side_tests.newest(a), side_by_side_tests.newest(b)
        assert child["rng"]["sample_device"] == device, f"{a.name} trained on {child['rng']['sample_device']}"
        steps = cfg.ppo.epochs * cfg.ppo.num_minibatches  # Adam steps in the one update
        for k in child["model"]:
            if exact:
                assert torch.equal(child["model"][k], parent["model"][k]), f"{a.name}: {k}"
                continue
            diff = (child["model"][k] - parent["model"][k]).abs()
            assert diff.max() <= 2 * cfg.ppo.lr * steps + 1e-5, f"{a.name}: {k} differs by {diff.max():.2e}"
            assert (diff > 1e-4).float().mean() <= 0.02, f"{a.name}: {k}: {(diff > 1e-4).sum()} of {diff.numel()} differ"


# ---- the rollout pipeline with delayed copies -------------------------------------------------------

class IntegerPolicy:
    """Acts in place of a learner's population (``learner.actor.pop``) with numbers that every device
    computes exactly: integer functions of the frames and, for the explorer, of an integer GRU state
    (the steps since the episode began). The chosen action's logit leads the others by 64, more than
    the Gumbel noise spans (about 20), so sampling picks it whatever the device's random stream."""

    def __init__(self, num_actions: int) -> None:
        self.num_actions = num_actions

    def __call__(self, obs: torch.Tensor, state: torch.Tensor | None = None, first: torch.Tensor | None = None):
        pixels = obs.flatten(-3).to(torch.int64)  # (M, n, 12288), or (M, 1, n, 12288) for the explorer
        code = 3 * pixels[..., ::7].sum(-1) + pixels[..., 1::11].sum(-1)
        if state is not None:  # state (M, n, H), first (M, 1, n)
            state = state * (1.0 - first[:, 0, :, None]) + 1.0
            code = code + state[:, None, :, 0].to(torch.int64)
        actions = code % self.num_actions
        logits, values = 64.0 * F.one_hot(actions, self.num_actions).float(), (code % 1009).float()
        return (logits, values) if state is None else (logits, values, state)


def cuda_sleep_cycles(ms: float) -> int:
    """GPU clock cycles for which ``torch.cuda._sleep`` spins about ``ms`` milliseconds here."""
    torch.cuda._sleep(1000)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    return max(1, int(1_000_000 * ms / start.elapsed_time(end)))


def delay_copies(learner, cycles: int, count: list) -> None:
    """Every host-to-device copy of the envs' pinned buffers (``to_device``) waits behind a GPU spin
    on its stream: the host gets ahead of it, so a worker that rewrote a buffer before the copy ran
    would hand the device the next step's frames."""
    copy = learner.to_device

    def delayed(host, out) -> None:
        torch.cuda._sleep(cycles)
        count.append(1)
        copy(host, out)

    learner.to_device = delayed


@pytest.mark.parametrize("kind", ["members", "explorer"])
def test_rollouts_equal_bit_for_bit_with_delayed_device_copies(device, kind, small_cfg) -> None:
    """The pipeline is right only because reading a slice's actions (``actions.cpu()``) waits for
    its frames' copies before a worker rewrites the pinned buffers they come from. With an integer-
    valued policy every schedule and device must store the same rollouts, bit for bit: on the CPU,
    serial and overlapped; on CUDA, the CPU's serial rollout, CUDA serial and CUDA overlapped with
    every copy delayed. A change that lets the host run ahead of those copies (asynchronous action
    reads, graph capture) fails here. The one exception: the explorer's frame embeddings (its kNN
    buffer) and kNN rewards are float sums that CUDA adds in another order than the CPU, so across
    device types they are compared to rounding (and between the two CUDA schedules bit for bit)."""
    cycles = cuda_sleep_cycles(DELAY_MS) if device == "cuda" else 0

    def run(on: str, pipeline: str):
        made, delayed = [], []

        def make(cfg):
            runtime = Runtime.resolve(on, "fp32")
            learner = PopulationLearner(cfg, [0, 1], runtime) if kind == "members" else ExplorerLearner(cfg, runtime)
            learner.actor.pop = IntegerPolicy(learner.spec.num_actions)
            if on == "cuda":
                delay_copies(learner, cycles, delayed)
            made.append(learner)
            return learner

        cfg = small_cfg(*pipeline_tests.TINY, f"device={on}", f"env.pipeline={pipeline}")
        records = [{k: v.cpu() for k, v in r.items()} for r in pipeline_tests.rollouts(cfg, make)]
        assert len(made[0].slices) == (2 if pipeline == "overlap" else 1)
        steps = len(records) * cfg.ppo.num_steps * len(made[0].slices)
        assert on == "cpu" or len(delayed) >= steps, f"{len(delayed)} delayed copies for {steps} slice steps"
        return records

    reference = run("cpu", "serial")
    runs = {"cpu overlap": run("cpu", "overlap")} if device == "cpu" else \
        {"cuda serial": run("cuda", "serial"), "cuda overlap": run("cuda", "overlap")}
    for name, records in runs.items():
        for i, (a, b) in enumerate(zip(reference, records)):
            assert a.keys() == b.keys()
            for key in a:
                if kind == "explorer" and key in ("rewards", "knn") and name.startswith("cuda"):
                    torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=f"{name}, rollout {i}")
                else:
                    assert torch.equal(a[key], b[key]), f"{name}, rollout {i}: {key} differs from the CPU's serial one"
    if device == "cuda":
        for i, (a, b) in enumerate(zip(runs["cuda serial"], runs["cuda overlap"])):
            for key in {"rewards", "knn"} & a.keys():  # the members keep no kNN buffer
                assert torch.equal(a[key], b[key]), f"rollout {i}: CUDA serial and overlap {key} differ"
    # Not vacuous: the rollouts crossed episode ends, earned rewards and took varied actions.
    assert sum(r["episode_starts"].sum() for r in reference) > 0
    assert sum(r["rewards"].abs().sum() for r in reference) > 0
    assert len(torch.cat([r["actions"].flatten() for r in reference]).unique()) > 3


# ---- captured acting --------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("pipeline", ["serial", "overlap"])
@pytest.mark.parametrize("kind", ["members", "explorer"])
def test_captured_acting_equals_eager_acting(device, kind, pipeline, precision, small_cfg) -> None:
    """``network.acting=cudagraph`` replays each slice's acting call as a CUDA graph; its rollouts
    (frames, actions, values, logprobs, rewards, the GRU state, over two rollouts with an update in
    between, so the graph must read the weights the optimiser changed in place) equal eager
    acting's bit for bit, in fp32 and with the bf16 trunk. On the CPU there are no graphs: the
    config and the runtime refuse them."""
    if device == "cpu":
        if (kind, pipeline, precision) != ("members", "serial", "fp32"):
            pytest.skip("the CPU case checks the refusals once")
        with pytest.raises(ConfigError, match="network.acting"):
            small_cfg("network.acting=cudagraph")
        with pytest.raises(ValueError, match="network.acting=auto or eager"):
            Runtime.resolve("cpu", "fp32", acting="cudagraph")
        assert not Runtime.from_config(small_cfg()).cudagraphs  # auto: eager on a CPU
        return

    def run(captured: bool):
        made = []

        def make(cfg):
            runtime = Runtime.from_config(cfg)
            assert runtime.cudagraphs == captured
            learner = PopulationLearner(cfg, [0, 1], runtime) if kind == "members" else ExplorerLearner(cfg, runtime)
            made.append(learner)
            return learner

        cfg = small_cfg(*pipeline_tests.TINY, f"env.pipeline={pipeline}", f"network.precision={precision}",
                        f"network.acting={'cudagraph' if captured else 'eager'}")
        records = [{k: v.cpu() for k, v in r.items()} for r in pipeline_tests.rollouts(cfg, make)]
        graphs = [s for s in made[0]._acting.values() if isinstance(s, CapturedStep)]
        assert len(graphs) == (len(made[0].slices) if captured else 0)
        if kind == "explorer":  # its kNN reward: one graph of its own
            assert isinstance(made[0].reward_step, CapturedStep) == captured
        return records

    eager, captured = run(False), run(True)
    for i, (a, b) in enumerate(zip(eager, captured)):
        for key in a:
            assert torch.equal(a[key], b[key]), f"rollout {i}: {key} differs between captured and eager acting"
    assert sum(r["episode_starts"].sum() for r in eager) > 0  # crossed episode ends (the GRU state resets)
