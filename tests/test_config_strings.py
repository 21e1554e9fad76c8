"""How config values are read (core/config.py's docstring): a text key keeps the text the user typed,
in overrides and in YAML files (``name=007`` is the run ``007``, never ``7``); every other value is
YAML 1.2, so no octal ``010``, sexagesimal ``1:2`` or ``on`` booleans; a run's name is one folder."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import eval as eval_cli
from core.config import load_config, save_config
from core.sections import ConfigError
from tests.helpers import QUICKSTART

ROOT = Path(__file__).resolve().parents[1]
# Texts that YAML 1.1 (PyYAML, OmegaConf's dotlist) reads as something else: 7, 8 (octal), 31,
# 1000.0, 62 (sexagesimal), True, None.
NUMBER_LIKE = ["007", "010", "0x1F", "1e3", "1:2", "on", "off", "yes", "null", "true"]


@pytest.mark.parametrize("key, text", [(k, t) for k in ("runs_dir", "ray_address", "eval.name") for t in NUMBER_LIKE
                                       if (k, t) != ("eval.name", "1:2")])  # ':' is no folder name
def test_a_text_key_keeps_the_text_typed_in_an_override(key, text):
    cfg = load_config(QUICKSTART, [f"{key}={text}"])
    section, _, field = key.rpartition(".")
    assert getattr(getattr(cfg, section) if section else cfg, field) == text


@pytest.mark.parametrize("text", [t for t in NUMBER_LIKE if t != "1:2"])  # ':' is no folder name
def test_two_names_are_two_runs(tmp_path, text):
    cfg = load_config(QUICKSTART, [f"runs_dir={tmp_path}", f"name={text}"])
    assert cfg.name == text and cfg.layout.root == tmp_path / text


def test_007_and_7_are_different_runs_and_eval_names(tmp_path):
    a = load_config(QUICKSTART, [f"runs_dir={tmp_path}", "name=007", "eval.name=010"])
    b = load_config(QUICKSTART, [f"runs_dir={tmp_path}", "name=7", "eval.name=8"])
    assert a.layout.root == tmp_path / "007" != b.layout.root
    assert a.layout.eval(a.eval.name) == tmp_path / "007" / "eval" / "010" != b.layout.eval(b.eval.name)


def test_quotes_around_an_override_value_are_removed():
    assert load_config(QUICKSTART, ["name='007'", 'eval.name="1e3"']).name == "007"
    assert load_config(QUICKSTART, ['eval.name="1e3"']).eval.name == "1e3"
    assert load_config(QUICKSTART, ["eval.name="]).eval.name == ""  # the empty text: the default eval/


def test_a_text_key_keeps_its_text_in_a_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: " + str(QUICKSTART) + "\nname: 007\nruns_dir: 1e3\nray_address: 1:2\n"
                    "eval:\n  name: 010\n  modes: [member, vote]\nenv:\n  game: maze\n"
                    "logging:\n  eval_splits: [train, test]\n")
    cfg = load_config(path)
    assert (cfg.name, cfg.runs_dir, cfg.ray_address, cfg.eval.name) == ("007", "1e3", "1:2", "010")
    assert cfg.eval.modes == ["member", "vote"] and cfg.ppo.num_steps == 64  # the base's


def test_a_saved_config_reads_back_the_same_names(tmp_path):
    """train.py saves the config and re-reads it to resume (launch/run.py:check_unchanged)."""
    cfg = load_config(QUICKSTART, [f"runs_dir={tmp_path}", "name=007", "eval.name=010", "ray_address=1:2"])
    save_config(cfg, cfg.layout.config)
    assert load_config(cfg.layout.config) == cfg


def test_eval_cli_name_keeps_its_text():
    """eval.py --name 010 writes eval/010 (compare.py --name 010 reads it), not eval/8."""
    args = argparse.Namespace(split=None, episodes=None, seed=None, video=None, device=None, modes=None,
                              name="010")
    assert load_config(QUICKSTART, eval_cli.flag_overrides(args)).eval.name == "010"


# Non-text keys: YAML 1.2's core schema. The expected values are Python's own reading of the literal.
@pytest.mark.parametrize("override, key, value", [
    ("ppo.num_steps=010", "num_steps", int("10")),  # decimal, not octal 8
    ("ppo.num_steps=0x1F", "num_steps", 0x1F),
    ("ppo.num_steps=0o17", "num_steps", 0o17),
    ("ppo.num_steps=+12", "num_steps", 12),
    ("ppo.lr=1e-3", "lr", 1e-3),
    ("ppo.lr=5e-4", "lr", 5e-4),
    ("ppo.lr=.5", "lr", 0.5),
    ("ppo.anneal_lr=true", "anneal_lr", True),
    ("ppo.anneal_lr=on", "anneal_lr", True),  # a boolean key takes on/off, yes/no (OmegaConf's words)
    ("ppo.anneal_lr=off", "anneal_lr", False),
    ("ppo.anneal_lr=No", "anneal_lr", False),
])
def test_other_keys_read_yaml_1_2_values(override, key, value):
    assert getattr(load_config(QUICKSTART, [override]).ppo, key) == value


@pytest.mark.parametrize("override, key", [
    ("ppo.num_steps=1:2", "ppo.num_steps"),  # YAML 1.1 would train with 62
    ("ppo.lr=1:2", "ppo.lr"),
    ("ppo.num_steps=1e3", "ppo.num_steps"),  # a float for an integer key
    ("ppo.anneal_lr=maybe", "ppo.anneal_lr"),
])
def test_number_like_text_for_a_number_key_is_refused(override, key):
    with pytest.raises(ConfigError, match=f"bad value for config key '{key}'"):
        load_config(QUICKSTART, [override])


def test_number_keys_in_a_file_read_yaml_1_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  num_steps: 010\n  anneal_lr: on\nensemble:\n  size: 2\n  seeds: [010, 0x10]\n")
    cfg = load_config(path)
    assert (cfg.ppo.num_steps, cfg.ppo.anneal_lr, cfg.ensemble.seeds) == (10, True, [10, 16])
    path.write_text("ppo:\n  num_steps: 1:2\n")
    with pytest.raises(ConfigError, match="ppo.num_steps"):
        load_config(path)


def test_a_choice_is_compared_as_the_text_typed():
    """``off`` is refused as the text 'off' (YAML 1.1 would have made it the boolean False)."""
    with pytest.raises(ConfigError, match="ppo.norm_adv='off' is not allowed; choose one of: batch, minibatch, none"):
        load_config(QUICKSTART, ["ppo.norm_adv=off"])


@pytest.mark.parametrize("name", ["../escape", "a/b", "/tmp/abs", "..", ".", ".hidden", "", "a b", "1:2"])
def test_a_run_name_is_one_plain_folder(tmp_path, name):
    with pytest.raises(ConfigError, match=r"^name=.* must be a plain folder name"):
        load_config(QUICKSTART, [f"runs_dir={tmp_path}", f"name={name}"])
    with pytest.raises(ConfigError, match=r"^eval.name=.* must be a plain folder name"):  # eval's rule, the same
        load_config(QUICKSTART, [f"eval.name={name}"] if name else ["eval.name=.."])


def test_a_config_files_stem_that_is_no_folder_name_asks_for_a_name(tmp_path):
    path = tmp_path / "my config.yaml"
    path.write_text(QUICKSTART.read_text())
    with pytest.raises(ConfigError, match="name='my config' must be a plain folder name"):
        load_config(path)
    assert load_config(path, ["name=mine"]).name == "mine"


def test_an_override_that_is_not_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match=r"override ppo.lr=\[1,: the value is not valid YAML"):
        load_config(QUICKSTART, ["ppo.lr=[1,"])


def test_a_key_given_twice_in_a_file_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("ppo:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="ppo.lr is given twice"):
        load_config(path)


def test_the_unknown_key_message_points_at_the_help_and_the_schema():
    with pytest.raises(ConfigError) as e:
        load_config(QUICKSTART, ["ppo.lrr=1"])
    msg = str(e.value)
    assert msg.startswith("unknown config key 'ppo.lrr' (did you mean ppo.lr?)")
    assert "python train.py --help" in msg
    # The files it names exist and hold the schema: the root Config and the section's dataclass.
    assert "core/config.py" in msg and "class Config:" in (ROOT / "core" / "config.py").read_text()
    assert "core/sections.py" in msg and "class PPOConfig(" in (ROOT / "core" / "sections.py").read_text()
