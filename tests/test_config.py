"""Config loading: bad keys and values fail before any work, naming the key; overrides; train.py."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import train
from agents.controller import ExpGenController
from agents.idaac import idaac_settings
from core.config import Config, incompatible_changes, load_config, save_config
from core.sections import (
    FOLLOWS_PPO,
    ConfigError,
    EvalConfig,
    ExpGenConfig,
    ExplorerConfig,
    NetworkConfig,
    PPOConfig,
    check_section,
)
from envs.games import GAMES, IDAACSettings, get_game
from tests.helpers import QUICKSTART


def error_of(*overrides: str, path: Path | None = QUICKSTART) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    return str(e.value)


@pytest.mark.parametrize("override, key", [
    ("ppo.lrr=1", "ppo.lrr"),
    ("foo=1", "foo"),
    ("env.gamee=maze", "env.gamee"),
])
def test_unknown_key(override, key):
    msg = error_of(override)
    assert f"'{key}'" in msg and "unknown" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("env:\n  game: maze\nppo:\n  learning_rate: 0.1\n")
    assert "ppo.learning_rate" in error_of(path=path)


@pytest.mark.parametrize("override, key", [
    ("ppo.num_steps=abc", "ppo.num_steps"),
    ("ensemble.size=1.5", "ensemble.size"),
    ("ppo.clip_vloss=maybe", "ppo.clip_vloss"),
    ("env=3", "env"),  # a scalar where a section belongs
])
def test_bad_type_names_the_key(override, key):
    assert f"'{key}'" in error_of(override)


def test_bad_type_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ppo:\n  epochs: three\n")
    assert "ppo.epochs" in error_of(path=path)


@pytest.mark.parametrize("override, key, allowed", [
    ("env.game=pong", "env.game", ["maze", "coinrun", "heist"]),
    ("env.distribution_mode=medium", "env.distribution_mode", ["easy", "hard"]),
])
def test_unknown_game_or_mode_names_key_and_allowed_values(override, key, allowed):
    msg = error_of(override)
    assert override.split("=")[1] in msg
    assert all(a in msg for a in allowed)
    assert key in msg, f"the message should name the config key {key!r}: {msg}"


@pytest.mark.parametrize("override, key", [
    ("env.num_levels=-1", "env.num_levels"),
    ("env.start_level=-3", "env.start_level"),
])
def test_bad_level_range_names_the_key(override, key):
    msg = error_of(override)
    assert key.split(".")[1] in msg
    assert key in msg, f"the message should name the config key {key!r}: {msg}"


@pytest.mark.parametrize("override, key, allowed", [
    ("network.kind=huge", "network.kind", ["impala", "small"]),
    ("ppo.norm_adv=sometimes", "ppo.norm_adv", ["batch", "minibatch", "none"]),
    ("population.forward_mode=magic", "population.forward_mode", ["auto", "vmap", "loop"]),
    ("eval.split=validation", "eval.split", ["train", "test", "test-full"]),
    ("logging.eval_splits=[train,val]", "logging.eval_splits", ["train", "test"]),
])
def test_bad_choice_names_key_and_allowed_values(override, key, allowed):
    msg = error_of(override)
    assert key in msg and all(a in msg for a in allowed)


def test_help_lists_every_key_with_its_allowed_values_from_the_schema(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for line in ("  network.kind = impala  (impala | small)", "  member.algo = ppo  (ppo | idaac | daac)",
                 "  eval.modes = ['member', 'vote', 'explorer', 'expgen']  (list of member | vote | explorer | expgen)",
                 "  eval.unseen = structure  (exact | structure | none)", "  ppo.lr = 0.0005  (float)"):
        assert line in lines
    listed = {m.group(1) for line in lines if (m := re.match(r"  ([a-z0-9_.]+) = ", line))}

    def keys(tree: dict, prefix: str = "") -> set[str]:
        return {k for name, v in tree.items()
                for k in (keys(v, f"{prefix}{name}.") if isinstance(v, dict) else {prefix + name})}

    assert listed == keys(OmegaConf.to_container(OmegaConf.structured(Config)))
    # A key that takes ppo's value unless set shows that key instead of a default.
    assert "  explorer.ppo.lr = <ppo.lr>  (float)" in lines
    assert "  idaac.value.max_grad_norm = <ppo.max_grad_norm>  (float)" in lines


@pytest.mark.parametrize("section, name, field, value, allowed", [
    (NetworkConfig(kind="huge"), "network", "kind", "huge", "impala, small"),
    (EvalConfig(modes=["member", "oracle"]), "eval", "modes", "oracle", "member, vote, explorer, expgen"),
    (ExpGenConfig(burst="poisson"), "expgen", "burst", "poisson", "reference, geometric, fixed"),
])
def test_a_section_built_in_code_is_checked_against_the_same_choices(section, name, field, value, allowed):
    with pytest.raises(ConfigError, match=f"{name}.{field}='{value}' is not allowed; choose one of: {allowed}"):
        check_section(name, section)


def test_a_section_rule_is_checked_for_a_section_built_in_code():
    with pytest.raises(ConfigError, match=r"ppo.gamma must lie in \[0, 1\], got 1.5"):
        check_section("ppo", PPOConfig(gamma=1.5))
    check_section("ppo", PPOConfig())  # the defaults pass
    explorer = ExplorerConfig()
    explorer.ppo.norm_adv = "sometimes"  # a subsection's choices and rules, named by their path
    with pytest.raises(ConfigError, match="explorer.ppo.norm_adv='sometimes' is not allowed"):
        check_section("explorer", explorer)
    explorer.ppo.norm_adv, explorer.ppo.lr = "none", 0.0
    with pytest.raises(ConfigError, match="explorer.ppo.lr must be > 0"):
        check_section("explorer", explorer)


@pytest.mark.parametrize("overrides, key", [
    (["ppo.lr=0"], "ppo.lr"),
    (["env.num_envs=0"], "env.num_envs"),
    (["ppo.epochs=-1"], "ppo.epochs"),
    (["ensemble.seeds=[1,2,3]", "ensemble.size=2"], "ensemble.seeds"),
    (["ppo.gamma=1.5"], "ppo.gamma"),
    (["explorer.gae_lambda=2"], "explorer.gae_lambda"),
    (["idaac.value.max_grad_norm=0"], "idaac.value.max_grad_norm"),
    (["device=tpu"], "device"),
])
def test_bad_values_name_the_key(overrides, key):
    assert key in error_of(*overrides)


def test_indivisible_minibatches():
    msg = error_of("env.num_envs=3", "ppo.num_steps=5", "ppo.num_minibatches=4")
    assert "ppo.num_minibatches" in msg and "15" in msg


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert str(missing) in error_of(path=missing)


def test_malformed_override():
    assert "key=value" in error_of("ppo.lr")


def test_overrides_apply_and_name_defaults_to_stem(tmp_path):
    cfg = load_config(QUICKSTART, [f"runs_dir={tmp_path}", "ppo.lr=1e-3", "env.num_envs=8",
                                   "ensemble.size=2", "ensemble.seeds=[5,9]", "network.kind=impala"])
    assert cfg.name == "quickstart"
    assert cfg.layout.root == tmp_path / "quickstart"
    assert cfg.ppo.lr == pytest.approx(1e-3)
    assert cfg.env.num_envs == 8 and cfg.network.kind == "impala"
    assert cfg.member_seeds == [5, 9]
    assert cfg.ppo.num_steps == 64  # from the YAML file
    assert cfg.ppo.lr == pytest.approx(1e-3) and cfg.ppo.clip_coef == pytest.approx(0.2)  # default, untouched by the file
    # later overrides win; seeds default to seed + m
    cfg = load_config(QUICKSTART, ["seed=10", "ensemble.size=3", "env.num_envs=4", "env.num_envs=16"])
    assert cfg.member_seeds == [10, 11, 12] and cfg.env.num_envs == 16


def test_name_override_and_argument(tmp_path):
    assert load_config(QUICKSTART, ["name=mine"]).name == "mine"
    assert load_config(QUICKSTART, [], name="other").name == "other"
    assert load_config(None, []).name == "run"
    copy = tmp_path / "maze_fast.yaml"
    copy.write_text(QUICKSTART.read_text())
    assert load_config(copy).name == "maze_fast"


def test_train_cli_reports_bad_key_and_exits_2(tmp_path, capsys):
    code = train.main(["--config", str(QUICKSTART), f"runs_dir={tmp_path}", "ppo.lrr=1"])
    out = capsys.readouterr()
    assert code == 2
    assert "ppo.lrr" in out.err and out.err.startswith("error:")
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"


def test_train_cli_missing_config_exits_2(tmp_path, capsys):
    assert train.main(["--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_paper_configs_take_the_explorer_discount_from_the_game_table():
    """No config restates the per-game explorer discount (a copy for another game would keep it);
    a run trained with the number written out resumes under -1 (the same discount)."""
    from core.config import incompatible_changes
    from envs.games import get_game

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.explorer.gamma == -1, path.name
        assert cfg.explorer_gamma == get_game(cfg.env.game).explorer_gamma
    written = load_config(root / "maze.yaml", ["explorer.gamma=0.9"])
    assert incompatible_changes(written, load_config(root / "maze.yaml")) == []
    assert incompatible_changes(written, load_config(root / "maze.yaml", ["explorer.gamma=0.5"]))


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("game", sorted(GAMES))
def test_every_game_runs_from_the_paper_base_with_its_own_facts(game):
    """No per-game number is restated in a config: the explorer's discount, the vote threshold and
    IDAAC's tuned settings come from the game's row in envs/games.py."""
    cfg = load_config(CONFIGS / "paper.yaml", [f"env.game={game}"])
    g = get_game(game)
    assert cfg.explorer_gamma == g.explorer_gamma
    controller = ExpGenController(cfg.expgen, 1, game=game, ensemble_size=cfg.ensemble.size)
    assert controller.threshold == g.vote_threshold  # 10 members: the table's k as it is
    assert controller.four_classes == g.four_direction_classes
    idaac = load_config(CONFIGS / "maze_idaac.yaml", [f"env.game={game}"])
    tuned = idaac_settings(idaac.idaac, game)
    assert IDAACSettings(**{f.name: getattr(tuned, f.name) for f in fields(IDAACSettings)}) == g.idaac


@pytest.mark.parametrize("game", ["maze", "heist", "jumper"])
def test_the_per_game_paper_configs_are_the_base_with_the_game_set(game):
    ours = load_config(CONFIGS / f"{game}.yaml")
    base = load_config(CONFIGS / "paper.yaml", [f"env.game={game}"], name=game)
    assert ours == base


def test_base_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nenv:\n  game: heist\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="is its own base"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\nenv:\n  game: heist\n")
    with pytest.raises(ConfigError, match="nowhere.yaml' does not exist"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text(f"base: {CONFIGS / 'paper.yaml'}\nenv:\n  game: heist\n  num_envs: 16\n")
    cfg = load_config(tmp_path / "d.yaml")  # the file's own values on top of its base's
    assert (cfg.env.game, cfg.env.num_envs, cfg.ppo.num_steps, cfg.name) == ("heist", 16, 512, "d")


# ---- each role's own optimiser settings, and the configs written before they existed --------------
# What a run's config.yaml held before the explorer and IDAAC's phases had their own keys: every
# PPO setting under ppo, nothing under explorer.ppo, explorer.gae_lambda or idaac's new keys.
OLD_RUN_CONFIG = """
name: old
env: {game: maze, num_envs: 8, num_levels: 200}
network: {kind: small}
ppo: {total_steps: 64, num_steps: 8, epochs: 2, num_minibatches: 4, lr: 0.001, adam_eps: 1.0e-06,
      anneal_lr: true, gamma: 0.99, gae_lambda: 0.9, clip_coef: 0.1, clip_vloss: false, vf_coef: 0.4,
      ent_coef: 0.02, max_grad_norm: 0.3, norm_adv: minibatch, minibatch: sequences}
member: {algo: idaac}
idaac: {epochs: 1, value_epoch: 9, value_freq: 1, adv_loss_coef: 0.25, order_loss_coef: 0.001,
        nonlinear_discriminator: false, discriminator_hidden: 4, use_best_hps: false, adv_eps: 1.0e-05,
        pair_labels: reference, reward_scaling: true}
explorer: {enabled: true, total_steps: 64, gamma: -1.0, k: 3, buffer_size: 500, pool: 3, seed: 1000}
"""


def test_a_config_without_the_roles_keys_gives_them_ppos_values(tmp_path):
    """Every role that learned with ppo's settings before it had its own keys still does, where a
    file (an old run's config.yaml) or an override does not set them."""
    path = tmp_path / "config.yaml"
    path.write_text(OLD_RUN_CONFIG)
    cfg = load_config(path)
    for key, source in FOLLOWS_PPO.items():
        assert OmegaConf.select(OmegaConf.structured(cfg), key) == OmegaConf.select(OmegaConf.structured(cfg), source), key
    assert (cfg.explorer.ppo.lr, cfg.explorer.ppo.norm_adv, cfg.explorer.gae_lambda) == (0.001, "minibatch", 0.9)
    assert (cfg.idaac.value.lr, cfg.idaac.discriminator.max_grad_norm, cfg.idaac.num_minibatches) == (0.001, 0.3, 4)
    # A role's own key, from a file or an override, is its own: ppo's does not reach it.
    own = load_config(path, ["explorer.ppo.epochs=5", "idaac.value.lr=2e-4", "ppo.lr=5e-4"])
    assert (own.explorer.ppo.epochs, own.idaac.value.lr, own.idaac.policy.lr, own.explorer.ppo.lr) == (5, 2e-4, 5e-4, 5e-4)
    (tmp_path / "new.yaml").write_text("base: config.yaml\nexplorer:\n  ppo:\n    lr: 3.0e-4\n")
    assert load_config(tmp_path / "new.yaml", ["ppo.lr=1e-4"]).explorer.ppo.lr == 3e-4
    # A run saved now writes every key out, and reads back equal: nothing left to follow.
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml", ["ppo.lr=1e-4"]).explorer.ppo.lr == 0.001
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert incompatible_changes(cfg, load_config(tmp_path / "saved.yaml")) == []
    assert incompatible_changes(cfg, load_config(path, ["explorer.ppo.lr=2e-3"])) == ["explorer.ppo.lr: 0.001 -> 0.002"]


def test_each_role_checks_its_own_minibatches():
    """The explorer's whole-sequence minibatches and IDAAC's are checked with their own keys."""
    msg = error_of("env.num_envs=6", "ppo.num_steps=8", "ppo.num_minibatches=3", "explorer.enabled=true",
                   "explorer.ppo.num_minibatches=4")
    assert "explorer.ppo.num_minibatches=4" in msg and "env.num_envs=6" in msg
    load_config(QUICKSTART, ["env.num_envs=6", "ppo.num_steps=8", "ppo.num_minibatches=4", "explorer.enabled=true",
                             "explorer.ppo.num_minibatches=3"])
    assert "idaac.num_minibatches = 5" in error_of("member.algo=daac", "idaac.num_minibatches=5")
    load_config(QUICKSTART, ["idaac.num_minibatches=5"])  # PPO members do not read it


@pytest.mark.slow  # trains three runs to compare them
@pytest.mark.usefixtures("one_thread")
def test_a_run_whose_config_predates_the_roles_keys_resumes_to_the_same_numbers(small_cfg):
    """A run's config.yaml from before the explorer and IDAAC's phases had their own keys (the
    saved file with those keys removed) resumes exactly as the run trained straight on."""
    from core.checkpoint import load_latest
    from launch.run import load_training_config, train_run

    settings = ("member.algo=idaac", "explorer.enabled=true", "ppo.lr=1e-3", "ppo.epochs=2", "ppo.ent_coef=0.02",
                "ppo.max_grad_norm=0.3", "ppo.gae_lambda=0.9", "explorer.total_steps=64")
    straight = small_cfg(*settings, name="straight")
    train_run(straight)
    cut = small_cfg(*settings, "ppo.total_steps=32", "explorer.total_steps=32", name="cut")
    train_run(cut)
    saved = OmegaConf.load(cut.layout.config)
    for key in [k for k in FOLLOWS_PPO if not k.startswith("explorer.ppo.")] + ["explorer.ppo"]:
        parent, _, leaf = key.rpartition(".")
        OmegaConf.select(saved, parent).pop(leaf, None)
    OmegaConf.save(saved, cut.layout.config)
    assert "ppo" not in OmegaConf.load(cut.layout.config).explorer
    train_run(load_training_config(cut.layout.config, ["ppo.total_steps=64", "explorer.total_steps=64"]))
    for a, b in [(straight.layout.member(0), cut.layout.member(0)), (straight.layout.explorer, cut.layout.explorer)]:
        x, y = load_latest(a.checkpoints), load_latest(b.checkpoints)
        assert x["step"] == y["step"] == 64
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), (a.name, k)


def test_help_with_a_config_lists_that_configs_values(capsys):
    """``train.py --config FILE [overrides] --help``: each key as the run would train with it (the
    file, its base and the overrides), not the schema's default."""
    with pytest.raises(SystemExit):
        train.main(["--config", "configs/maze.yaml", "ppo.lr=3e-4", "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert "config keys (key=value overrides; key = its value in configs/maze.yaml  (allowed values or type)):" in lines
    for line in ("  network.tf32 = True  (bool)", "  env.num_envs = 32  (int)", "  ppo.lr = 0.0003  (float)",
                 "  resources.explorer_cpus = 4.0  (float)", "  env.game = maze  (str)"):
        assert line in lines
