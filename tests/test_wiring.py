"""The ExpGen policy's wiring, end to end through eval (evaluation/evaluate.py): which agent's actions
are actually executed, checked exactly against the modes that play that agent alone.

Run directories are built by hand: three member checkpoints and an explorer checkpoint, saved with
``core.checkpoint.save_checkpoint`` exactly as training does, plus ``config.yaml``. Some members are
"forced": their actor head has zero weights and a bias that makes one action win by a margin of 50
logits, more than Gumbel noise can overturn (its range is about [-3.8, 16.1] under the sampler's
clamping), so a forced member plays that action whether it samples or takes the argmax.

Every comparison is of raw per-episode arrays (returns, successes, lengths, level seeds), captured by
wrapping ``evaluation.evaluate.play``; same levels, same actions, same numbers.

Sampling streams: every mode's ``ActionPicker`` is seeded per member from ``(seed, eval.seed)``, and
a member draws one (N, A) block of Gumbel noise per step whatever the mode. So member 0 sampled in
``member`` mode and member 0 sampled inside ``expgen`` see identical noise as long as their envs see
identical actions, and the explorer's stream is the same in ``explorer`` and ``expgen`` mode. The
exact equalities below therefore hold with sampling as well as with argmax; both are tested where the
members are random networks (sampling and argmax play differently), once each elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agents.acting import ActionPicker
from agents.networks import NetworkSpec
from agents.population import Population
from core.checkpoint import save_checkpoint
from core.config import save_config
from evaluation import evaluate as evaluate_module
from evaluation.evaluate import evaluate_run, evaluation_context
from tests.helpers import make_small_cfg
from training.learner import network_payload

EPISODES = 4
STEP = 64  # the checkpoints' step
MARGIN = 50.0


pytestmark = pytest.mark.usefixtures("one_thread")


def build_run(runs_dir: Path, name: str, forced: list[int | None]) -> Path:
    """A run with ``len(forced)`` members (member i forced to action ``forced[i]`` unless None) and an
    untrained recurrent explorer. starpilot: constant and random actions alike end its episodes
    within about 200 steps."""
    cfg = make_small_cfg(runs_dir, "env.game=starpilot", f"ensemble.size={len(forced)}",
                         f"eval.episodes={EPISODES}", f"eval.num_envs={EPISODES}", "explorer.enabled=true",
                         name=name)
    save_config(cfg, cfg.layout.config)
    spec = NetworkSpec.from_config(cfg.network)
    pop = Population(spec, cfg.member_seeds)
    for i, action in enumerate(forced):
        state = pop.member_state_dict(i)
        if action is not None:
            state["actor.weight"].zero_()
            state["actor.bias"].zero_()
            state["actor.bias"][action] = MARGIN
        save_checkpoint(cfg.layout.member(i).checkpoints, STEP, network_payload(spec, state))
    explorer_spec = NetworkSpec.from_config(cfg.network, recurrent=True)
    explorer = Population(explorer_spec, [cfg.explorer.seed])
    save_checkpoint(cfg.layout.explorer.checkpoints, STEP,
                    network_payload(explorer_spec, explorer.member_state_dict(0)))
    return cfg.layout.root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return {
        "random": build_run(tmp, "random", [None, None, None]),  # three different random networks
        "disagree": build_run(tmp, "disagree", [5, 3, 1]),  # up, down, left: never two alike
        "two_of_three": build_run(tmp, "two_of_three", [5, 7, 7]),  # plurality 7, anchor 5
    }


@pytest.fixture
def played(monkeypatch: pytest.MonkeyPatch) -> dict:
    """mode -> the raw EpisodeStats that ``play`` returned for it."""
    captured: dict = {}
    original = evaluate_module.play

    def spy(ctx, policy, mode):
        stats = original(ctx, policy, mode)
        assert mode not in captured
        captured[mode] = stats
        return stats

    monkeypatch.setattr(evaluate_module, "play", spy)
    return captured


def group(stats, g: int) -> dict[str, np.ndarray]:
    return {k: getattr(stats, k)[g] for k in ("returns", "successes", "lengths", "level_seeds")}


def assert_same_episodes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def evaluate(run: Path, *overrides: str) -> dict:
    return evaluate_run(run, ["device=cpu", *overrides])


def test_forced_members_play_their_action(runs: dict[str, Path]) -> None:
    """The construction the other tests rely on: a forced member always picks its action, sampled or not."""
    ctx = evaluation_context(runs["two_of_three"], ["device=cpu"])
    obs = torch.randint(0, 256, (3, 5, 64, 64, 3), dtype=torch.uint8)
    for sample in (False, True):
        pick = ActionPicker(ctx.agents.member_seeds, ctx.device, ctx.seed, sample)
        for _ in range(20):
            actions = pick(ctx.agents.population(obs)[0])
            assert actions.tolist() == [[5] * 5, [7] * 5, [7] * 5]
    assert ctx.agents.member_steps == [STEP] * 3 and ctx.agents.explorer_step == STEP


@pytest.mark.parametrize("sample", [False, True])
def test_threshold_one_plays_member_0_exactly(runs, played, sample: bool) -> None:
    """Reference controller, k = 1: the anchor always agrees with itself, so ExpGen never explores and
    executes member 0's action every step: its episodes are member 0's episodes in ``member`` mode."""
    r = evaluate(runs["random"], "eval.modes=[member,expgen]", "expgen.controller=reference",
                 "expgen.threshold=1", f"expgen.sample={str(sample).lower()}")
    expgen, member = r["modes"]["expgen"], r["modes"]["member"]
    assert expgen["controller"]["threshold"] == 1 and expgen["controller"]["mode"] == "reference"
    assert expgen["explore_fraction"] == 0.0 and expgen["consensus_fraction"] == 1.0
    assert r["sample"] is sample
    assert_same_episodes(group(played["expgen"], 0), group(played["member"], 0))
    for key in ("return", "return_ci", "success", "length", "episodes"):
        assert expgen[key] == member["members"][0][key], key
    # Not vacuous: the other members play differently, so only member 0 could have matched.
    lengths = played["member"].lengths
    assert not (np.array_equal(lengths[0], lengths[1]) and np.array_equal(lengths[0], lengths[2]))


# Each rule once, and each sampling setting once (every evaluation builds procgen envs: seconds).
@pytest.mark.parametrize("controller, sample", [("plurality", False), ("reference", True)])
def test_unreachable_consensus_always_plays_the_explorer(runs, played, controller: str, sample: bool) -> None:
    """Members forced to up, down and left: one vote each under either rule (up's class is
    {up, left-up, right-up}), below k = 2, so every step explores and ExpGen plays the explorer
    exactly as ``explorer`` mode does."""
    r = evaluate(runs["disagree"], "eval.modes=[explorer,expgen]", f"expgen.controller={controller}",
                 "expgen.threshold=2", f"expgen.sample={str(sample).lower()}")
    expgen = r["modes"]["expgen"]
    assert expgen["explore_fraction"] == 1.0 and expgen["consensus_fraction"] == 0.0
    assert expgen["vote_histogram"] == [0, expgen["steps"], 0, 0] and expgen["steps"] > 0
    assert_same_episodes(group(played["expgen"], 0), group(played["explorer"], 0))
    for key in ("return", "return_ci", "success", "length"):
        assert expgen[key] == r["modes"]["explorer"][key], key


@pytest.mark.parametrize("sample", [True])  # forced members pick the same actions either way
def test_vote_plays_the_plurality_action(runs, played, sample: bool) -> None:
    """Members forced to 5, 7, 7: the vote executes 7 every step, which is what member 1 (always 7)
    plays alone; plurality ExpGen with k = 2 always has consensus and executes the same action."""
    r = evaluate(runs["two_of_three"], "eval.modes=[member,vote,expgen]", "expgen.controller=plurality",
                 "expgen.threshold=2", f"expgen.sample={str(sample).lower()}")
    always_7 = group(played["member"], 1)
    assert_same_episodes(group(played["member"], 2), always_7)  # the two 7-members agree
    assert_same_episodes(group(played["vote"], 0), always_7)
    assert_same_episodes(group(played["expgen"], 0), always_7)
    expgen = r["modes"]["expgen"]
    assert expgen["explore_fraction"] == 0.0 and expgen["consensus_fraction"] == 1.0
    assert expgen["vote_histogram"] == [0, 0, expgen["steps"], 0]
    for key in ("return", "success", "length"):
        assert r["modes"]["vote"][key] == r["modes"]["member"]["members"][1][key], key
    # Not the anchor's action: member 0 (always 5) plays other episodes.
    anchor = group(played["member"], 0)
    assert not all(np.array_equal(anchor[k], always_7[k]) for k in ("lengths", "returns"))
