"""The explorer's GRU over whole sequences (``gru_sequence``): one fused call that equals stepping
an ``nn.GRUCell`` through time, resets included, in values and gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from agents.networks import NetworkSpec, RecurrentActorCritic, gru_sequence
from agents.population import Population

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
def test_fused_gru_equals_the_step_loop(kind: str, steps: int) -> None:
    torch.manual_seed(0)
    batch = 5
    cell = nn.GRUCell(H, H)
    x = torch.randn(steps, batch, H, requires_grad=True)
    state = torch.randn(batch, H, requires_grad=True)
    episode_starts = resets(kind, steps, batch)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]

    out, final = gru_sequence(x, state, episode_starts, weights, training=True)
    ref_out, ref_final = step_loop(cell, x, state, episode_starts)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=0, atol=1e-5)

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
    net = pop.member_network(0)
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
    out, final = gru_sequence(x, state, episode_starts, [cell.weight_ih, cell.weight_hh, cell.bias_ih,
                                                 cell.bias_hh], training=False)
    assert torch.equal(episode_starts, before)
    ref_out, ref_final = step_loop(cell, x, state, episode_starts.float())
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=0, atol=1e-5)


def fused_single_step(x, state, episode_starts, weights, training):
    """What ``gru_sequence`` ran for T = 1 before the cell path: the fused multi-step call."""
    h0 = state * (1.0 - episode_starts[0].to(state.dtype)).unsqueeze(-1)
    out, h = torch.gru(x, h0.unsqueeze(0), weights, True, 1, 0.0, training, False, False)
    return out, h[0]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reset", ["none", "some", "all"])
def test_single_step_cell_equals_the_fused_call(reset: str, device: str) -> None:
    """An acting step (T = 1) runs ``torch.gru_cell`` with a reset mask on the device: on a CPU it
    equals the fused call bit for bit, outputs, final state and gradients alike (cuDNN rounds
    otherwise on CUDA: close there)."""
    torch.manual_seed(2)
    batch = 6
    cell = nn.GRUCell(H, H).to(device)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    x = torch.randn(1, batch, H, device=device, requires_grad=True)
    state = torch.randn(batch, H, device=device, requires_grad=True)
    episode_starts = {"none": torch.zeros(1, batch), "all": torch.ones(1, batch),
             "some": torch.tensor([[1.0, 0, 0, 1, 0, 1]])}[reset].to(device)
    exact = dict(rtol=0, atol=0) if device == "cpu" else dict(rtol=0, atol=1e-5)

    out, final = gru_sequence(x, state, episode_starts, weights, training=True)
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
        out_ng, final_ng = gru_sequence(x, state, episode_starts, weights, training=False)
    torch.testing.assert_close(out_ng, ref_out.detach(), **exact)
    torch.testing.assert_close(final_ng, ref_final.detach(), **exact)


def test_single_step_never_reads_the_host() -> None:
    """The acting step has no host sync: on the meta device (shapes only, no data) any read of
    ``episode_starts`` on the host would raise. A sequence (T > 1) does read it, to cut the segments."""
    cell = nn.GRUCell(H, H, device="meta")
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    state = torch.empty(4, H, device="meta")
    out, final = gru_sequence(torch.empty(1, 4, H, device="meta"), state, torch.empty(1, 4, device="meta"),
                              weights, training=False)
    assert out.shape == (1, 4, H) and final.shape == (4, H) and final.device.type == "meta"
    with pytest.raises(NotImplementedError):
        gru_sequence(torch.empty(3, 4, H, device="meta"), state, torch.empty(3, 4, device="meta"),
                     weights, training=False)


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
