"""The explorer's GRU over whole sequences (``gru_sequence``): episode starts as a mask on the device,
equal to stepping an ``nn.GRUCell`` through time, resets included, in values and gradients; equal
to the implementation it replaced, which cut the sequences into episodes on the host; traced whole
by ``torch.compile`` and free of host reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from agents.networks import NetworkSpec, RecurrentActorCritic, gru_sequence
from agents.population import Population
from tests.helpers import member_network

H = 16


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: with two OpenMP threads on a 2-core machine that is busy elsewhere, spin-waits
    make these tests ~20x slower (16 s instead of 0.8 s). One thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def step_loop(cell: nn.GRUCell, x: torch.Tensor, state: torch.Tensor, episode_starts: torch.Tensor):
    """The reference: the cell stepped through time, its state zeroed where an episode starts."""
    outs = []
    for t in range(x.shape[0]):
        state = cell(x[t], state * (1.0 - episode_starts[t]).unsqueeze(-1))
        outs.append(state)
    return torch.stack(outs), state


def resets(kind: str, steps: int, batch: int) -> torch.Tensor:
    episode_starts = torch.zeros(steps, batch)
    if kind == "middle":  # several per env, different in each env, one env never reset
        for b in range(batch - 1):
            episode_starts[torch.randperm(steps - 1)[: b + 1] + 1, b] = 1
    elif kind == "first_step":
        episode_starts[0, ::2] = 1
        episode_starts[steps // 2, 1] = 1
    elif kind == "every_step":
        episode_starts[:, 0] = 1
        episode_starts[3, 1:] = 1
    return episode_starts


@pytest.mark.parametrize("kind,steps", [("middle", 40), ("first_step", 40), ("none", 40),
                                        ("every_step", 12), ("none", 1), ("first_step", 1)])
def test_gru_sequence_equals_the_step_loop(kind: str, steps: int) -> None:
    """Outputs bit for bit on a CPU (the steps run ATen's GRUCell arithmetic op for op; the input
    half of the gates is one matrix product whose rows equal the cell's); gradients to rounding
    (autograd sums them in another order)."""
    torch.manual_seed(0)
    batch = 5
    cell = nn.GRUCell(H, H)
    x = torch.randn(steps, batch, H, requires_grad=True)
    state = torch.randn(batch, H, requires_grad=True)
    episode_starts = resets(kind, steps, batch)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]

    out, final = gru_sequence(x, state, episode_starts, weights)
    ref_out, ref_final = step_loop(cell, x, state, episode_starts)
    assert torch.equal(out, ref_out) and torch.equal(final, ref_final)

    probe = torch.randn_like(out)  # any linear function of all outputs and the final state
    grads = torch.autograd.grad((out * probe).sum() + final.sum(), [x, state, *weights])
    ref_grads = torch.autograd.grad((ref_out * probe).sum() + ref_final.sum(), [x, state, *weights])
    for name, g, r in zip(["x", "state", "w_ih", "w_hh", "b_ih", "b_hh"], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-4, msg=f"gradient of {name}")
    reset_at_start = episode_starts[0].bool()
    if reset_at_start.any():  # a reset really cuts the memory: no gradient reaches the old state
        assert torch.equal(grads[1][reset_at_start], torch.zeros_like(grads[1][reset_at_start]))
    assert grads[1][~reset_at_start].abs().min() > 0


def test_recurrent_network_through_the_population_equals_the_step_loop() -> None:
    spec = NetworkSpec(kind="small", hidden=32, recurrent=True)
    pop = Population(spec, [7], forward_mode="loop")
    net = member_network(pop, 0)
    obs = torch.randint(0, 255, (1, 24, 3, 64, 64, 3), dtype=torch.uint8)
    state, episode_starts = torch.randn(1, 3, 32), resets("middle", 24, 3).unsqueeze(0)
    logits, values, final = pop(obs, state, episode_starts)
    x = net.trunk(obs[0].flatten(0, 1).permute(0, 3, 1, 2).float() / 255).view(24, 3, -1)
    h, ref_final = step_loop(net.gru, x, state[0], episode_starts[0])
    torch.testing.assert_close(final[0], ref_final, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0], net.actor(h), rtol=0, atol=1e-5)
    torch.testing.assert_close(values[0], net.critic(h).squeeze(-1), rtol=0, atol=1e-5)
    assert isinstance(net, RecurrentActorCritic)
    # The fused GRU op has no vmap rule: a recurrent population loops whatever the mode asked.
    assert Population(spec, [7, 8], forward_mode="vmap")._mode(torch.device("cuda")) == "loop"


def test_bool_first_is_accepted_and_left_unchanged() -> None:
    torch.manual_seed(1)
    cell = nn.GRUCell(H, H)
    x, state = torch.randn(10, 3, H), torch.randn(3, H)
    episode_starts = resets("middle", 10, 3).bool()
    before = episode_starts.clone()
    out, final = gru_sequence(x, state, episode_starts, [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh])
    assert torch.equal(episode_starts, before)
    ref_out, ref_final = step_loop(cell, x, state, episode_starts.float())
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=0, atol=1e-5)


def fused_single_step(x, state, episode_starts, weights, training):
    """One step of PyTorch's multi-step GRU op (cuDNN's fused kernels on CUDA)."""
    h0 = state * (1.0 - episode_starts[0].to(state.dtype)).unsqueeze(-1)
    out, h = torch.gru(x, h0.unsqueeze(0), weights, True, 1, 0.0, training, False, False)
    return out, h[0]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reset", ["none", "some", "all"])
def test_single_step_equals_the_fused_call(reset: str, device: str) -> None:
    """An acting step (T = 1) with its reset mask on the device: on a CPU it equals PyTorch's GRU
    op bit for bit, outputs, final state and gradients alike (cuDNN rounds otherwise on CUDA:
    close there)."""
    torch.manual_seed(2)
    batch = 6
    cell = nn.GRUCell(H, H).to(device)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    x = torch.randn(1, batch, H, device=device, requires_grad=True)
    state = torch.randn(batch, H, device=device, requires_grad=True)
    episode_starts = {"none": torch.zeros(1, batch), "all": torch.ones(1, batch),
             "some": torch.tensor([[1.0, 0, 0, 1, 0, 1]])}[reset].to(device)
    exact = dict(rtol=0, atol=0) if device == "cpu" else dict(rtol=0, atol=1e-5)

    out, final = gru_sequence(x, state, episode_starts, weights)
    ref_out, ref_final = fused_single_step(x, state, episode_starts, weights, training=True)
    torch.testing.assert_close(out, ref_out, **exact)
    torch.testing.assert_close(final, ref_final, **exact)
    assert out.shape == (1, batch, H) and torch.equal(out[0], final)

    probe = torch.randn_like(out)
    grads = torch.autograd.grad((out * probe).sum() + final.sum(), [x, state, *weights])
    ref_grads = torch.autograd.grad((ref_out * probe).sum() + ref_final.sum(), [x, state, *weights])
    for name, g, r in zip(["x", "state", "w_ih", "w_hh", "b_ih", "b_hh"], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6 if device == "cpu" else 1e-4, msg=f"gradient of {name}")
    reset_rows = episode_starts[0].bool()
    assert torch.equal(grads[1][reset_rows], torch.zeros_like(grads[1][reset_rows]))  # memory cut

    with torch.no_grad():  # acting: no autograd, same numbers
        out_ng, final_ng = gru_sequence(x, state, episode_starts, weights)
    torch.testing.assert_close(out_ng, ref_out.detach(), **exact)
    torch.testing.assert_close(final_ng, ref_final.detach(), **exact)


@pytest.mark.parametrize("steps", [1, 3])
def test_gru_sequence_never_reads_the_host(steps: int) -> None:
    """Acting steps and replayed sequences alike: on the meta device (shapes only, no data) any read
    of ``episode_starts`` on the host would raise."""
    cell = nn.GRUCell(H, H, device="meta")
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    out, final = gru_sequence(torch.empty(steps, 4, H, device="meta"), torch.empty(4, H, device="meta"),
                              torch.empty(steps, 4, device="meta"), weights)
    assert out.shape == (steps, 4, H) and final.shape == (4, H) and final.device.type == "meta"


def test_recurrent_acting_steps_equal_the_sequence_call() -> None:
    """A recurrent population stepped one frame at a time (acting's cell path, resets from the
    ``episode_starts`` mask) equals the whole sequence through the fused call: logits, values, states."""
    spec = NetworkSpec(kind="small", hidden=32, recurrent=True)
    pop = Population(spec, [3], forward_mode="loop")
    obs = torch.randint(0, 255, (1, 12, 4, 64, 64, 3), dtype=torch.uint8)
    state, episode_starts = torch.randn(1, 4, 32), resets("middle", 12, 4).unsqueeze(0)
    with torch.no_grad():
        logits, values, final = pop(obs, state, episode_starts)
        h = state
        for t in range(12):
            step_logits, step_values, h = pop(obs[:, t:t + 1], h, episode_starts[:, t:t + 1])
            torch.testing.assert_close(step_logits[:, 0], logits[:, t], rtol=0, atol=1e-5)
            torch.testing.assert_close(step_values[:, 0], values[:, t], rtol=0, atol=1e-5)
    torch.testing.assert_close(h, final, rtol=0, atol=1e-5)


def segmented_gru(x, state, episode_starts, weights):
    """The implementation ``gru_sequence`` replaced, transcribed: each env's sequence cut on the host
    into its episodes' segments, run as one packed sequence through PyTorch's multi-step GRU op (a
    segment that starts the sequence from ``state``, zeroed if it starts an episode, every other
    from zeros), the outputs put back in (T, B) order."""
    steps, batch, hidden = x.shape
    h0 = state * (1.0 - episode_starts[0].to(state.dtype)).unsqueeze(-1)
    cuts = (episode_starts != 0).cpu().numpy().T.copy()  # (B, T)
    cuts[:, 0] = True
    segments = [(b, s, e) for b in range(batch) for s, e in zip(np.flatnonzero(cuts[b]),
                                                                 [*np.flatnonzero(cuts[b])[1:], steps])]
    segments.sort(key=lambda seg: seg[1] - seg[2])  # longest first (stable): what packing requires
    padded = torch.nn.utils.rnn.pad_sequence([x[s:e, b] for b, s, e in segments])
    packed = torch.nn.utils.rnn.pack_padded_sequence(padded, [e - s for _, s, e in segments])
    hx = torch.stack([h0[b] if s == 0 else torch.zeros_like(h0[b]) for b, s, _ in segments])
    out, _ = torch.gru(packed.data, packed.batch_sizes, hx.unsqueeze(0), weights, True, 1, 0.0, True, False)
    rows = torch.nn.utils.rnn.pad_packed_sequence(
        torch.nn.utils.rnn.PackedSequence(out, packed.batch_sizes))[0]  # (longest, segments, H)
    result = torch.empty(steps, batch, hidden, dtype=out.dtype)
    for i, (b, s, e) in enumerate(segments):
        result[s:e, b] = rows[: e - s, i]
    return result, result[-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,steps", [("middle", 64), ("first_step", 40), ("none", 40), ("every_step", 12)])
def test_gru_sequence_equals_the_segmented_implementation(kind: str, steps: int, dtype: torch.dtype) -> None:
    """Against the host-segmenting implementation it replaced, on random inputs: outputs and final
    state to 1e-6 in float32 (1e-12 in float64), gradients to 1e-6 (1e-12) of their largest entry;
    bit for bit where no episode starts after the first step (there the old code ran the multi-step
    op unsegmented, and it rounds as ``nn.GRUCell``)."""
    torch.manual_seed(3)
    batch = 6
    cell = nn.GRUCell(H, H).to(dtype)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    x = torch.randn(steps, batch, H, dtype=dtype, requires_grad=True)
    state = torch.randn(batch, H, dtype=dtype, requires_grad=True)
    episode_starts = resets(kind, steps, batch)
    tol = 1e-6 if dtype == torch.float32 else 1e-12

    out, final = gru_sequence(x, state, episode_starts, weights)
    ref_out, ref_final = segmented_gru(x, state, episode_starts, weights)
    assert out.dtype == dtype
    if episode_starts[1:].any():
        torch.testing.assert_close(out, ref_out, rtol=0, atol=tol)
        torch.testing.assert_close(final, ref_final, rtol=0, atol=tol)
    else:
        assert torch.equal(out, ref_out) and torch.equal(final, ref_final)
    probe = torch.randn_like(out)
    grads = torch.autograd.grad((out * probe).sum() + final.sum(), [x, state, *weights])
    ref_grads = torch.autograd.grad((ref_out * probe).sum() + ref_final.sum(), [x, state, *weights])
    for name, g, r in zip(["x", "state", "w_ih", "w_hh", "b_ih", "b_hh"], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=tol * r.abs().max().item(), msg=f"gradient of {name}")


def test_gru_sequence_compiles_whole_with_no_graph_break() -> None:
    """No host segmenting left: ``torch.compile`` traces the call, resets included, as one graph
    (forward and backward through AOTAutograd; the ``aot_eager`` backend runs that graph with
    eager kernels, so the numbers are eager's bit for bit and the test stays cheap)."""
    torch.manual_seed(4)
    cell = nn.GRUCell(8, 8)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    x, state = torch.randn(5, 3, 8, requires_grad=True), torch.randn(3, 8)
    episode_starts = resets("middle", 5, 3)
    torch._dynamo.reset()
    assert torch._dynamo.explain(gru_sequence)(x, state, episode_starts, weights).graph_break_count == 0
    compiled = torch.compile(gru_sequence, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, gru_sequence):
        out, final = fn(x, state, episode_starts, weights)
        results.append((out, final, torch.autograd.grad(out.sum() + final.sum(), [x, *weights])))
    (out, final, grads), (ref_out, ref_final, ref_grads) = results
    assert torch.equal(out, ref_out) and torch.equal(final, ref_final)
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads))
    torch._dynamo.reset()
