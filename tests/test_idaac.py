"""IDAAC and DAAC members against the reference (rraileanu/idaac at 2fe3020, ppo_daac_idaac/):
network sizes, the per-game table, the pairing rule, the optimiser-step schedule, each loss term and
every parameter after one discriminator, one policy and one value step (a line-by-line
transcription of algo/idaac.py ``IDAAC.update`` below), and the population, checkpoint and
config contracts through the real learner.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from agents.algorithm import UpdateInput
from agents.idaac import DAACAlgorithm, IDAACAlgorithm, IDAACSpec, draw_pairs, frame_labels, idaac_settings
from agents.minibatches import Batch, Minibatch, SampleMinibatches
from agents.population import Population
from agents.rollout import ReturnScaler
from core.checkpoint import load_latest
from core.config import ConfigError, load_config
from envs.games import GAMES
from launch.run import train_run

pytestmark = pytest.mark.usefixtures("one_thread")

# hyperparams.py of the reference, as it is written there (rraileanu/idaac, hyperparams.py).
REF_VALUE_EPOCH = {'plunder': 1, 'chaser': 1, 'miner': 9, 'climber': 9, 'bigfish': 9, 'dodgeball': 9,
                   'maze': 9, 'leaper': 9, 'fruitbot': 9, 'bossfight': 9, 'jumper': 9, 'ninja': 9,
                   'starpilot': 9, 'coinrun': 9, 'heist': 9, 'caveflyer': 9}
REF_VALUE_FREQ = {'plunder': 8, 'chaser': 1, 'miner': 32, 'climber': 1, 'bigfish': 32, 'dodgeball': 32,
                  'maze': 1, 'leaper': 1, 'fruitbot': 1, 'bossfight': 1, 'jumper': 1, 'ninja': 1,
                  'starpilot': 1, 'coinrun': 1, 'heist': 1, 'caveflyer': 1}
REF_ADV_LOSS_COEF = {'plunder': 0.3, 'chaser': 0.15, 'miner': 0.25, 'climber': 0.05, 'bigfish': 0.05,
                     'dodgeball': 0.25, 'maze': 0.25, 'leaper': 0.25, 'fruitbot': 0.25, 'bossfight': 0.25,
                     'jumper': 0.25, 'ninja': 0.25, 'starpilot': 0.25, 'coinrun': 0.25, 'heist': 0.25,
                     'caveflyer': 0.25}
REF_ORDER_LOSS_COEF = {'plunder': 0.1, 'chaser': 0.001, 'miner': 0.1, 'climber': 0.001, 'bigfish': 0.01,
                       'dodgeball': 0.001, 'maze': 0.001, 'leaper': 0.001, 'fruitbot': 0.001,
                       'bossfight': 0.001, 'jumper': 0.001, 'ninja': 0.001, 'starpilot': 0.001,
                       'coinrun': 0.001, 'heist': 0.001, 'caveflyer': 0.001}
REF_CLF_HIDDEN_SIZE = {'plunder': 4, 'chaser': 4, 'miner': 64, 'climber': 64, 'bigfish': 4, 'dodgeball': 64,
                       'maze': 4, 'leaper': 4, 'fruitbot': 4, 'bossfight': 4, 'jumper': 4, 'ninja': 4,
                       'starpilot': 4, 'coinrun': 4, 'heist': 4, 'caveflyer': 4}
REF_NONLIN_ENVS = ['miner', 'bigfish', 'dodgeball', 'climber']


def cfg_of(*overrides: str):
    return load_config(None, ["device=cpu", "ray=false", "network.kind=small", "member.algo=idaac",
                              "explorer.enabled=false", *overrides])


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_reference():
    net = IDAACSpec().build()  # IMPALA 16-32-32, 256 features, 15 actions
    assert (n_params(net.policy), n_params(net.value), n_params(net.discriminator)) == (626_271, 622_401, 1_026)
    assert n_params(IDAACSpec(discriminator_hidden=4).build().discriminator) == 2_062
    assert n_params(IDAACSpec(discriminator_hidden=64).build().discriminator) == 32_962
    assert not hasattr(IDAACSpec(algo="daac", discriminator_hidden=-1).build(), "discriminator")


def test_vmap_and_loop_populations_agree_on_every_head():
    spec = IDAACSpec(kind="small", discriminator_hidden=4)
    loop, vmapped = Population(spec, [0, 1], "loop"), Population(spec, [0, 1], "vmap")
    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (2, 3, 64, 64, 3), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 15, (2, 3), generator=g)
    pairs = torch.randn(2, 3, 512, generator=g)
    for args, head in [((obs,), "act"), ((obs, actions), "policy"), ((obs,), "value"), ((pairs,), "discriminator")]:
        a, b = loop(*args, head=head), vmapped(*args, head=head)
        for x, y in zip(*(o if isinstance(o, tuple) else (o,) for o in (a, b))):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=head)


def test_tuned_table_equals_the_references_for_all_games():
    assert set(GAMES) == set(REF_VALUE_EPOCH)
    for name, game in GAMES.items():
        s = game.idaac
        assert (s.value_epoch, s.value_freq, s.adv_loss_coef, s.order_loss_coef) == (
            REF_VALUE_EPOCH[name], REF_VALUE_FREQ[name], REF_ADV_LOSS_COEF[name], REF_ORDER_LOSS_COEF[name]), name
        assert s.nonlinear_discriminator == (name in REF_NONLIN_ENVS), name
        assert s.discriminator_hidden == REF_CLF_HIDDEN_SIZE[name], name


def test_use_best_hps_takes_the_games_settings_and_its_discriminator():
    assert idaac_settings(cfg_of("env.game=bigfish")).value_freq == 1  # the config's defaults
    tuned = cfg_of("env.game=bigfish", "idaac.use_best_hps=true")
    assert idaac_settings(tuned) == GAMES["bigfish"].idaac
    assert IDAACAlgorithm.member_spec(tuned).discriminator_hidden == 4  # non-linear, 4 units
    assert IDAACAlgorithm.member_spec(cfg_of("env.game=plunder", "idaac.use_best_hps=true")).discriminator_hidden == 0
    assert DAACAlgorithm.member_spec(tuned).discriminator_hidden == -1


def test_frame_labels_reference_off_by_one_and_corrected():
    # Frames -1..T (T = 3) labelled 10..14 in one env: (M=1, T+2=5, N=1).
    x = torch.arange(10, 15).view(1, 5, 1)
    corrected, _ = frame_labels(x, x, "corrected")
    reference, _ = frame_labels(x, x, "reference")
    assert corrected.flatten().tolist() == [11, 12, 13, 14]  # rows 0..T: frames 0..T
    # IDAACRolloutStorage.insert: row 0 = frame -1 (after_update), row 1 = frame T, row p = frame p-1.
    assert reference.flatten().tolist() == [10, 14, 12, 13]


def reference_before_update_labels(levels: torch.Tensor, nsteps: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """storage.py ``before_update``'s labels for given partner draws ``other`` (flat rows)."""
    idx = torch.arange(len(other))  # the rows that were given partners
    orders = torch.zeros(len(other), dtype=torch.long)
    orders[nsteps[other] < nsteps[idx]] = 1
    return orders


def test_pairs_share_the_level_cover_all_candidates_and_label_the_order():
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 3, (1, 60), generator=g)
    steps = torch.randint(0, 20, (1, 60), generator=g)
    gens = [torch.Generator().manual_seed(1)]
    seen: dict[int, set] = {}
    for _ in range(200):
        partner, label = draw_pairs(levels, steps, 50, gens)
        assert (levels[0, partner[0]] == levels[0, :50]).all()  # same level, any row of the rollout
        assert torch.equal(label[0].long(), reference_before_update_labels(levels[0], steps[0], partner[0]))
        for q, p in enumerate(partner[0].tolist()):
            seen.setdefault(q, set()).add(p)
    for q in range(50):  # uniform among all same-level rows, itself included
        assert seen[q] == set(torch.nonzero(levels[0] == levels[0, q]).flatten().tolist())


def counting(opt: torch.optim.Optimizer, counter: dict[str, int], key: str) -> None:
    step = opt.step

    def counted(*a, **k):
        counter[key] = counter.get(key, 0) + 1
        return step(*a, **k)

    opt.step = counted


def fixed_batch(m: int = 1, t: int = 4, n: int = 4, seed: int = 0) -> tuple[Batch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A rollout (M, T, N) with random frames, actions, logprobs, values and GAE advantages, the
    frame after it, and frame labels -1..T on 2 levels."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (m, t, n, 64, 64, 3), generator=g, dtype=torch.uint8)
    values = torch.randn(m, t, n, generator=g)
    adv = torch.randn(m, t, n, generator=g)
    batch = Batch(obs=obs, actions=torch.randint(0, 15, (m, t, n), generator=g),
                  logprobs=-2.7 + 0.1 * torch.randn(m, t, n, generator=g), values=values, advantages=adv,
                  returns=values + adv, episode_starts=torch.zeros(m, t, n))
    next_obs = torch.randint(0, 256, (m, n, 64, 64, 3), generator=g, dtype=torch.uint8)
    levels = torch.randint(0, 2, (m, t + 2, n), generator=g)
    steps = torch.randint(0, 10, (m, t + 2, n), generator=g)
    return batch, next_obs, levels, steps


class FixedMinibatches:
    """One epoch = one minibatch of all samples in a fixed order: the transcription indexes alike."""

    def __init__(self, order: torch.Tensor) -> None:
        self.order, self.generators = order, [torch.Generator()]

    def __call__(self, batch, epochs, num_minibatches):
        flat = batch.flat()
        for _ in range(epochs):
            yield Minibatch(flat.select(self.order.unsqueeze(0)))


class ReferenceIDAAC:
    """algo/idaac.py ``IDAAC.update`` transcribed for one minibatch per phase, on copies of one
    member's networks; ``evaluate_actions`` as model.py ``IDAACnet.evaluate_actions``."""

    def __init__(self, member: nn.Module, lr: float, eps: float, clip_param: float, coefs: tuple, max_grad_norm: float):
        self.policy, self.value_net = copy.deepcopy(member.policy), copy.deepcopy(member.value)
        self.order_classifier = copy.deepcopy(getattr(member, "discriminator", None))
        self.clip_param, self.max_grad_norm = clip_param, max_grad_norm
        self.adv_loss_coef, self.order_loss_coef, self.entropy_coef = coefs
        self.policy_parameters = list(self.policy.parameters())
        self.value_parameters = list(self.value_net.parameters())
        self.policy_optimizer = torch.optim.Adam(self.policy_parameters, lr=lr, eps=eps)
        self.value_optimizer = torch.optim.Adam(self.value_parameters, lr=lr, eps=eps)
        if self.order_classifier is not None:
            self.clf_optimizer = torch.optim.Adam(self.order_classifier.parameters(), lr=lr, eps=eps)
        self.bce_loss = nn.BCELoss()

    def evaluate_actions(self, inputs, action):
        actor_features, logits, gae = self.policy(inputs, action)
        value = self.value_net(inputs)
        dist = torch.distributions.Categorical(logits=logits)
        return actor_features, gae.unsqueeze(1), value.unsqueeze(1), dist.log_prob(action).unsqueeze(1), dist.entropy().mean()

    def update(self, obs, actions, value_preds, returns, old_logp, other_obs, clf_order):
        advantages = returns - value_preds
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-5)
        adv_targ = advantages.view(-1, 1)
        out = {}
        emb, adv, _, action_log_probs, dist_entropy = self.evaluate_actions(obs, actions)
        if self.order_classifier is not None:
            other_emb, _, _, _, _ = self.evaluate_actions(other_obs, actions)
            emb_concat = torch.cat((emb, other_emb), dim=1)
            pred_order_clf = self.order_classifier(emb_concat.detach())
            clf_loss = self.bce_loss(pred_order_clf[:, 0], clf_order.squeeze().float())
            out["order_accuracy"] = (torch.argmax(pred_order_clf, dim=1) == clf_order.squeeze()).sum().item() / len(clf_order)
            self.clf_optimizer.zero_grad()
            clf_loss.backward()
            nn.utils.clip_grad_norm_(self.order_classifier.parameters(), self.max_grad_norm)
            self.clf_optimizer.step()
            pred_order = self.order_classifier(emb_concat)
            emb_order = torch.FloatTensor(size=clf_order.shape).fill_(0.5)
            order_loss = self.bce_loss(pred_order[:, 0], emb_order.squeeze())
            out["discriminator_loss"], out["order_loss"] = clf_loss, order_loss
        else:  # algo/daac.py
            order_loss = torch.zeros(())
        ratio = torch.exp(action_log_probs - old_logp.view(-1, 1))
        surr1 = ratio * adv_targ
        surr2 = torch.clamp(ratio, 1.0 - self.clip_param, 1.0 + self.clip_param) * adv_targ
        action_loss = -torch.min(surr1, surr2).mean()
        adv_loss = (adv - adv_targ).pow(2).mean()
        self.policy_optimizer.zero_grad()
        (order_loss * self.order_loss_coef + adv_loss * self.adv_loss_coef + action_loss
         - dist_entropy * self.entropy_coef).backward()
        nn.utils.clip_grad_norm_(self.policy_parameters, self.max_grad_norm)
        self.policy_optimizer.step()
        out.update(policy_loss=action_loss, adv_loss=adv_loss, entropy=dist_entropy)
        # value phase
        _, _, values, _, _ = self.evaluate_actions(obs, actions)
        value_preds_batch, return_batch = value_preds.view(-1, 1), returns.view(-1, 1)
        value_pred_clipped = value_preds_batch + (values - value_preds_batch).clamp(-self.clip_param, self.clip_param)
        value_losses = (values - return_batch).pow(2)
        value_losses_clipped = (value_pred_clipped - return_batch).pow(2)
        value_loss = 0.5 * torch.max(value_losses, value_losses_clipped).mean()
        self.value_optimizer.zero_grad()
        value_loss.backward()
        nn.utils.clip_grad_norm_(self.value_parameters, self.max_grad_norm)
        self.value_optimizer.step()
        out["value_loss"] = value_loss
        return out


@pytest.mark.parametrize("algo, extra", [("idaac", []), ("idaac", ["idaac.nonlinear_discriminator=true"]),
                                         ("daac", [])])
def test_one_update_equals_the_reference_transcription(algo, extra):
    cfg = cfg_of(f"member.algo={algo}", "idaac.epochs=1", "ppo.num_minibatches=1", "idaac.value_epoch=1",
                 "ppo.lr=1e-3", "idaac.order_loss_coef=0.5", *extra)  # a visible invariance term
    batch, next_obs, levels, steps = fixed_batch()
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    cls = IDAACAlgorithm if algo == "idaac" else DAACAlgorithm
    ours = cls(cfg, cls.member_spec(cfg), [7], "loop", False, torch.device("cpu"), FixedMinibatches(order))
    s = ours.settings
    ref = ReferenceIDAAC(ours.pop.member_network(0), cfg.ppo.lr, cfg.ppo.adam_eps, cfg.ppo.clip_coef,
                         (s.adv_loss_coef, s.order_loss_coef, cfg.ppo.ent_coef), cfg.ppo.max_grad_norm)
    # The pairs our update will draw (a copy of its stream), as storage.py hands them over.
    gen = torch.Generator()
    gen.set_state(ours.pair_generators[0].get_state())
    lv, st = frame_labels(levels, steps, cfg.idaac.pair_labels)
    partner, label = draw_pairs(lv.flatten(1, 2), st.flatten(1, 2), 16, [gen])
    frames = torch.cat((batch.obs.flatten(1, 2), next_obs), 1)[0]

    metrics = ours.update(UpdateInput(batch, None, 0, next_obs, levels, steps))
    f = batch.flat()
    expected = ref.update(f.obs[0, order], f.actions[0, order], f.values[0, order], f.returns[0, order],
                          f.logprobs[0, order], frames[partner[0, order]], label[0, order].long().view(-1, 1))

    for k, v in expected.items():
        torch.testing.assert_close(metrics[k][0], torch.as_tensor(v, dtype=torch.float32), rtol=1e-5, atol=1e-6, msg=k)
    got = ours.pop.member_state_dict(0)
    want = {**{f"policy.{k}": v for k, v in ref.policy.state_dict().items()},
            **{f"value.{k}": v for k, v in ref.value_net.state_dict().items()},
            **({f"discriminator.{k}": v for k, v in ref.order_classifier.state_dict().items()}
               if ref.order_classifier is not None else {})}
    assert got.keys() == want.keys()
    start = cls(cfg, cls.member_spec(cfg), [7], "loop", False, torch.device("cpu"), FixedMinibatches(order))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
        assert not torch.equal(got[k], start.pop.member_state_dict(0)[k]), f"{k} did not move"


@pytest.mark.parametrize("value_freq", [1, 3])
def test_optimizer_steps_per_update(value_freq):
    cfg = cfg_of("idaac.epochs=2", "ppo.num_minibatches=2", "idaac.value_epoch=3", f"idaac.value_freq={value_freq}")
    batch, next_obs, levels, steps = fixed_batch()
    algo = IDAACAlgorithm(cfg, IDAACAlgorithm.member_spec(cfg), [0], "loop", False, torch.device("cpu"),
                          FixedMinibatches(torch.arange(16)))
    algo.minibatches = SampleMinibatches([torch.Generator()])
    counts: dict[str, int] = {}
    for g, opt in algo.optimizers.items():
        counting(opt, counts, g)
    value_losses = []
    for u in range(4):
        before = dict(counts)
        m = algo.update(UpdateInput(batch, None, u, next_obs, levels, steps))
        value_losses.append(float(m["value_loss"][0]))
        made = {g: counts.get(g, 0) - before.get(g, 0) for g in algo.optimizers}
        due = u % value_freq == 0
        assert made == {"policy": 4, "discriminator": 4, "value": 6 if due else 0}, (u, made)
        if not due:  # a skipped value phase reports the previous value loss
            assert value_losses[-1] == value_losses[-2]


def test_return_scaler_matches_vecnormalize():
    """baselines' VecNormalize reward path, written out with its RunningMeanStd."""
    rng = torch.Generator().manual_seed(0)
    rewards = torch.rand(30, 5, generator=rng).double().numpy() * 10
    ends = (torch.rand(30, 5, generator=rng) < 0.2).numpy()
    ours = ReturnScaler(5)
    ret, mean, var, count = torch.zeros(5, dtype=torch.float64).numpy(), 0.0, 1.0, 1e-4
    import numpy as np
    for r, d in zip(rewards, ends):
        ret = ret * 0.99 + r
        bm, bv, bc = np.mean(ret, axis=0), np.var(ret, axis=0), ret.shape[0]
        delta, tot = bm - mean, count + bc
        new_mean = mean + delta * bc / tot
        m2 = var * count + bv * bc + np.square(delta) * count * bc / tot
        mean, var, count = new_mean, m2 / tot, tot
        want = np.clip(r / np.sqrt(var + 1e-8), -10.0, 10.0)
        ret[d] = 0.0
        np.testing.assert_allclose(ours(r, d), want, rtol=1e-12)


SMALL_IDAAC = ["member.algo=idaac", "idaac.value_freq=2", "idaac.value_epoch=2"]


def final_models(cfg, members):
    return [load_latest(cfg.layout.member(m).checkpoints)["model"] for m in members]


def test_idaac_member_in_a_population_equals_it_alone(small_cfg):
    together = small_cfg(*SMALL_IDAAC, "ensemble.size=2", "ppo.total_steps=96", name="together")
    train_run(together)
    alone = small_cfg(*SMALL_IDAAC, "ensemble.size=1", "ensemble.seeds=[1]", "ppo.total_steps=96", name="alone")
    train_run(alone)
    a, b = final_models(together, [1])[0], final_models(alone, [0])[0]
    # Same envs, pairs, minibatches and losses; the parameters agree to float32 rounding only:
    # member 1's rows of the stacked advantage head (271 floats) are not 16-byte aligned, and CPU
    # reductions over them (gradient norms, Adam) round in another order than at offset 0 (measured:
    # 1.5e-8 after three updates). PPO's rows are multiples of 16 floats and stay bit-exact.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    initial = Population(IDAACAlgorithm.member_spec(alone), [1]).member_state_dict(0)
    assert all(not torch.equal(initial[k], b[k]) for k in b), "every network trained"


def test_idaac_checkpoint_resume_is_exact(small_cfg):
    straight = small_cfg(*SMALL_IDAAC, "ppo.total_steps=128", name="straight")
    train_run(straight)
    cut = small_cfg(*SMALL_IDAAC, "ppo.total_steps=64", name="cut")
    train_run(cut)
    train_run(small_cfg(*SMALL_IDAAC, "ppo.total_steps=128", name="cut"))
    a, b = load_latest(straight.layout.member(0).checkpoints), load_latest(cut.layout.member(0).checkpoints)
    assert a["step"] == b["step"] == 128 and a["algo"] == "idaac"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for group in ("policy", "value", "discriminator"):
        for x, y in zip(a["optimizer"][group], b["optimizer"][group]):
            assert all(torch.equal(x[k], y[k]) for k in x), group
    assert torch.equal(a["reward_scaling"]["moments"], b["reward_scaling"]["moments"])


@pytest.mark.parametrize("override, key", [
    (["member.algo=a2c"], "member.algo"),
    (["member.algo=idaac", "engine=sb3"], "member.algo"),
    (["member.algo=idaac", "ppo.minibatch=sequences"], "ppo.minibatch"),
    (["member.algo=idaac", "idaac.value_freq=0"], "idaac.value_freq"),
    (["member.algo=idaac", "idaac.pair_labels=shifted"], "idaac.pair_labels"),
    (["member.algo=idaac", "env.pipeline=overlap"], "idaac.reward_scaling"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["explorer.enabled=false", *override])


def test_resuming_with_another_algorithm_is_refused(small_cfg):
    cfg = small_cfg("ppo.total_steps=32", name="r")
    train_run(cfg)
    with pytest.raises(ConfigError, match="member.algo"):
        train_run(small_cfg("member.algo=idaac", "ppo.total_steps=64", name="r"))


def test_maze_idaac_config_loads():
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "maze_idaac.yaml")
    assert cfg.member.algo == "idaac" and cfg.idaac.epochs == 1 and cfg.env.num_envs == 64


def test_expgen_evaluates_idaac_members(small_cfg):
    """eval.py reads IDAAC checkpoints (their spec names the algorithm) and the controller plays
    their policies beside the PPO explorer."""
    from evaluation.evaluate import evaluate_run

    cfg = small_cfg(*SMALL_IDAAC, "ensemble.size=2", "ppo.total_steps=32", "explorer.enabled=true",
                    "explorer.total_steps=32", name="expgen")
    train_run(cfg)
    results = evaluate_run(cfg.layout.root, ["eval.episodes=2", "eval.num_envs=2", "device=cpu",
                                             "eval.modes=[expgen]"])
    assert set(results["modes"]) == {"expgen"} and not results["skipped"]
