"""Config loading: bad keys and values fail before any work, naming the key; overrides; train.py."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import train
from agents.controller import ExpGenController
from agents.idaac import idaac_settings
from core.config import Config, load_config
from core.sections import ConfigError, EvalConfig, ExpGenConfig, NetworkConfig, PPOConfig, check_section
from envs.games import GAMES, get_game
from tests.conftest import QUICKSTART


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
    schema = OmegaConf.to_container(OmegaConf.structured(Config))
    keys = {f"{k}.{sub}" for k, v in schema.items() if isinstance(v, dict) for sub in v}
    assert listed == keys | {k for k, v in schema.items() if not isinstance(v, dict)}


@pytest.mark.parametrize("section, name, field, value, allowed", [
    (NetworkConfig(kind="huge"), "network", "kind", "huge", "impala, small"),
    (EvalConfig(modes=["member", "oracle"]), "eval", "modes", "oracle", "member, vote, explorer, expgen"),
    (ExpGenConfig(burst="poisson"), "expgen", "burst", "poisson", "reference, geometric, fixed"),
])
def test_a_section_built_in_code_is_checked_against_the_same_choices(section, name, field, value, allowed):
    with pytest.raises(ConfigError, match=f"{name}.{field}='{value}' is not allowed; choose one of: {allowed}"):
        check_section(name, section)


def test_a_section_rule_is_checked_for_a_section_built_in_code():
    with pytest.raises(ConfigError, match="ppo.gamma and ppo.gae_lambda must lie in"):
        check_section("ppo", PPOConfig(gamma=1.5))
    check_section("ppo", PPOConfig())  # the defaults pass


@pytest.mark.parametrize("overrides, key", [
    (["ppo.lr=0"], "ppo.lr"),
    (["env.num_envs=0"], "env.num_envs"),
    (["ppo.epochs=-1"], "ppo.epochs"),
    (["ensemble.seeds=[1,2,3]", "ensemble.size=2"], "ensemble.seeds"),
    (["ppo.gamma=1.5"], "ppo.gamma"),
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
    assert idaac_settings(idaac) == g.idaac


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
