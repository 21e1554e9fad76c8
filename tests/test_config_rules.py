"""Rules that tie config sections together (core/config.py, ``_validate_across``): mistakes that used
to surface only inside a training job (or a Ray trial, which Tune would retry as a crash) now fail
``load_config`` with a ConfigError naming the keys involved, and train.py exits with code 2 before
creating anything."""
from __future__ import annotations

import pytest

import train
from core.config import ConfigError, load_config
from tests.conftest import make_small_cfg

# 6 envs x 8 steps = 48 samples: divisible by 4 minibatches, but 6 env sequences are not.
SEQUENCES_NOT_SPLITTABLE = ("env.num_envs=6", "ppo.num_steps=8", "ppo.num_minibatches=4")


def config_error(tmp_path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        make_small_cfg(tmp_path, *overrides)
    return str(e.value)


def test_explorer_minibatches_need_whole_env_sequences(tmp_path) -> None:
    msg = config_error(tmp_path, *SEQUENCES_NOT_SPLITTABLE, "explorer.enabled=true")
    for key in ("env.num_envs", "ppo.num_minibatches", "explorer.enabled"):
        assert key in msg, msg
    assert "6" in msg and "4" in msg
    # The reward agents alone cut minibatches of samples: 48 % 4 == 0 is all they need.
    cfg = make_small_cfg(tmp_path, *SEQUENCES_NOT_SPLITTABLE, "explorer.enabled=false")
    assert cfg.steps_per_update == 48 and not cfg.explorer.enabled
    # Divisible env counts are accepted with the explorer.
    make_small_cfg(tmp_path, "env.num_envs=8", "ppo.num_minibatches=4", "explorer.enabled=true")


def test_sample_minibatches_still_checked(tmp_path) -> None:
    """The batch rule applies whatever the explorer: 6 x 5 = 30 samples into 4 minibatches."""
    msg = config_error(tmp_path, "env.num_envs=6", "ppo.num_steps=5", "ppo.num_minibatches=4",
                       "explorer.enabled=false")
    assert "ppo.num_minibatches" in msg and "ppo.num_steps" in msg


def test_rllib_env_runners_must_split_the_envs(tmp_path) -> None:
    msg = config_error(tmp_path, "engine=rllib", "rllib.num_env_runners=4", "env.num_envs=6")
    for key in ("rllib.num_env_runners", "rllib.num_envs_per_env_runner", "env.num_envs"):
        assert key in msg, msg
    # Explicit envs per runner that do not multiply out to env.num_envs are refused too.
    msg = config_error(tmp_path, "engine=rllib", "rllib.num_env_runners=2",
                       "rllib.num_envs_per_env_runner=2", "env.num_envs=6")
    assert "env.num_envs" in msg and "rllib.num_envs_per_env_runner" in msg
    # Layouts that do split are accepted; the rule is rllib's only.
    for ok in (["rllib.num_env_runners=3"], ["rllib.num_env_runners=2", "rllib.num_envs_per_env_runner=3"],
               ["rllib.num_env_runners=0"]):
        make_small_cfg(tmp_path, "engine=rllib", "env.num_envs=6", *ok)
    make_small_cfg(tmp_path, "engine=native", "rllib.num_env_runners=4", "env.num_envs=6")


def test_threshold_must_be_reachable(tmp_path) -> None:
    msg = config_error(tmp_path, "ensemble.size=3", "expgen.threshold=4")
    assert "expgen.threshold" in msg and "ensemble.size" in msg
    # With expgen.members the bound is the members actually evaluated.
    msg = config_error(tmp_path, "ensemble.size=3", "expgen.members=2", "expgen.threshold=3")
    assert "expgen.threshold" in msg and "expgen.members" in msg
    for ok in (["expgen.threshold=3"], ["expgen.members=2", "expgen.threshold=2"],
               ["expgen.threshold=-1"], ["expgen.threshold=1"]):
        cfg = make_small_cfg(tmp_path, "ensemble.size=3", *ok)
        assert cfg.expgen.threshold <= cfg.eval_members
    assert "expgen.threshold" in config_error(tmp_path, "ensemble.size=3", "expgen.threshold=0")


@pytest.mark.parametrize("overrides", [
    [*SEQUENCES_NOT_SPLITTABLE, "explorer.enabled=true"],
    ["engine=rllib", "rllib.num_env_runners=4", "env.num_envs=6"],
    ["ensemble.size=2", "expgen.threshold=3"],
], ids=["explorer-minibatches", "rllib-runners", "threshold"])
def test_train_cli_refuses_before_creating_anything(small_cli_args, tmp_path, capsys, overrides) -> None:
    assert train.main(small_cli_args(*overrides)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:"), captured.err
    assert "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == [], "no run directory may be created for a refused config"


@pytest.mark.parametrize("text, message", [("[1, 2]", "is a list"), ("3", "is a int"), ("", "is empty"),
                                           ("# only a comment\n", "is empty"), ("env: [", "not valid YAML")])
def test_config_files_that_are_not_mappings_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("override, key", [("logging.eval_episodes=0", "logging.eval_episodes"),
                                           ("env.num_threads=-1", "env.num_threads"),
                                           ("expgen.burst_length=0", "expgen.burst_length")])
def test_values_that_used_to_fail_late_are_refused(small_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        small_cfg(override)


@pytest.mark.parametrize("override, key", [("seed=-1", "seed"), ("explorer.seed=-3", "explorer.seed"),
                                           ("eval.seed=-2", "eval.seed"), ("ensemble.seeds=[0,-1]", "ensemble.seeds")])
def test_negative_seeds_are_refused_before_work(small_cfg, override, key):
    """Env resets take seeds >= 0 (gymnasium's contract): a negative one would fail only at the first reset."""
    extra = ["ensemble.size=2"] if key == "ensemble.seeds" else []
    with pytest.raises(ConfigError, match=f"^{key} must be >= 0"):
        small_cfg(*extra, override)


def test_unknown_key_points_to_a_help_that_lists_it(small_cfg, capsys):
    with pytest.raises(ConfigError, match=r"unknown config key 'ppo.learning_rate'.*python train.py --help lists") as e:
        small_cfg("ppo.learning_rate=3e-4")
    assert "python train.py --help" in str(e.value)
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "  ppo.lr = 0.0005  (float)" in capsys.readouterr().out.splitlines()  # the key the user meant
