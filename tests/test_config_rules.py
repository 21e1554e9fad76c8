"""Rules that tie config sections together (core/config.py, ``_validate_across``): mistakes that used
to surface only inside a training job (or a Ray trial, which Tune would retry as a crash) now fail
``load_config`` with a ConfigError naming the keys involved, and train.py exits with code 2 before
creating anything."""
from __future__ import annotations

import re

import pytest

import eval as eval_cli
import train
from core.config import ConfigError, load_config, save_config
from tests.helpers import make_small_cfg

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


@pytest.mark.parametrize("overrides, key", [
    ([*SEQUENCES_NOT_SPLITTABLE, "explorer.enabled=true"], "explorer.enabled"),
    (["engine=rllib", "rllib.num_env_runners=4", "env.num_envs=6"], "rllib.num_env_runners"),
    (["ensemble.size=2", "expgen.threshold=3"], "expgen.threshold"),
    ([f"seed={2**64}"], "seed"),
    ([f"explorer.seed={2**31}", "explorer.enabled=true"], "explorer.seed"),
    (["name=../escape"], "name"),
], ids=["explorer-minibatches", "rllib-runners", "threshold", "seed", "explorer-seed", "name-outside-runs_dir"])
def test_train_cli_refuses_before_creating_anything(small_cli_args, tmp_path, capsys, overrides, key) -> None:
    assert train.main(small_cli_args(*overrides)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:") and key in captured.err, captured.err
    assert "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == [], "no run directory may be created for a refused config"
    assert not (tmp_path.parent / "escape").exists()


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


SEED_KEYS = ["seed", "explorer.seed", "eval.seed", "ensemble.seeds[1]"]
LARGEST_SEED = 2**31 - 1  # procgen's rand_seed is a C int: test_procgen_takes_seeds_up_to_2_31_minus_1


def seed_overrides(key: str, value: int) -> list[str]:
    if key.startswith("ensemble.seeds"):
        return ["ensemble.size=2", f"ensemble.seeds=[0,{value}]"]
    return [f"{key}={value}"]


@pytest.mark.parametrize("value", [-1, 2**31, 2**64])
@pytest.mark.parametrize("key", SEED_KEYS)
def test_seeds_procgen_cannot_take_are_refused_before_work(small_cfg, key, value):
    """Env resets take seeds >= 0 (gymnasium's contract), procgen's rand_seed < 2**31: outside that a
    run failed at its first env (gym3's bare AssertionError) or at torch.manual_seed (2**64)."""
    with pytest.raises(ConfigError, match=re.escape(f"{key}={value} is out of range: seeds must lie in "
                                                    f"[0, {LARGEST_SEED}]")):
        small_cfg(*seed_overrides(key, value))


@pytest.mark.parametrize("key", SEED_KEYS)
def test_the_largest_seed_procgen_takes_is_accepted(small_cfg, key):
    small_cfg(*seed_overrides(key, LARGEST_SEED))


def test_procgen_takes_seeds_up_to_2_31_minus_1(small_cfg):
    """The bound the config enforces, against procgen itself (through gym3's option check)."""
    from envs.make import make_env

    cfg = small_cfg()
    make_env(cfg.env, 1, "train", rand_seed=LARGEST_SEED).close()
    with pytest.raises(AssertionError):
        make_env(cfg.env, 1, "train", rand_seed=LARGEST_SEED + 1)


def test_eval_cli_refuses_a_seed_procgen_cannot_take(small_cfg, capsys):
    cfg = small_cfg()
    save_config(cfg, cfg.layout.config)  # a run folder as far as reading its config goes
    assert eval_cli.main([str(cfg.layout.root), "--seed", str(2**31)]) == 2
    err = capsys.readouterr().err
    assert f"eval.seed={2**31} is out of range" in err and "Traceback" not in err
    assert not cfg.layout.eval().exists()


def test_derived_member_seeds_must_stay_in_range(small_cfg):
    """Member m's seed is seed + m: seed=2**31 - 2 is fine for 2 members, not for 3."""
    assert small_cfg("ensemble.size=2", f"seed={LARGEST_SEED - 1}").member_seeds == [LARGEST_SEED - 1, LARGEST_SEED]
    with pytest.raises(ConfigError, match=f"seed={LARGEST_SEED - 1} gives member 2 the seed {LARGEST_SEED + 1} "
                                          rf"\(seed \+ member index\).*use seed <= {LARGEST_SEED - 2} or list ensemble.seeds"):
        small_cfg("ensemble.size=3", f"seed={LARGEST_SEED - 1}")
    small_cfg("ensemble.size=3", f"seed={LARGEST_SEED - 1}", "ensemble.seeds=[1,2,3]")  # seed is then torch's only


def test_rllib_runner_seeds_must_stay_in_range(small_cfg):
    """engine=rllib: member seed x 1000 + runner index (training/engines/rllib.py) is a procgen seed."""
    top = (LARGEST_SEED - 2) // 1000  # 2 env runners
    rllib = ["engine=rllib", "rllib.num_env_runners=2"]
    small_cfg(*rllib, f"seed={top}")
    with pytest.raises(ConfigError, match=f"member seed {top + 1} gives {(top + 1) * 1000 + 2}.*use seed <= {top}"):
        small_cfg(*rllib, f"seed={top + 1}")
    with pytest.raises(ConfigError, match=f"list ensemble.seeds of at most {top}"):
        small_cfg(*rllib, "ensemble.size=2", f"ensemble.seeds=[0,{top + 1}]")


def test_unknown_key_points_to_a_help_that_lists_it(small_cfg, capsys):
    with pytest.raises(ConfigError, match=r"unknown config key 'ppo.learning_rate'.*python train.py --help lists every key") as e:
        small_cfg("ppo.learning_rate=3e-4")
    assert "python train.py --help" in str(e.value)
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "  ppo.lr = 0.0005  (float)" in capsys.readouterr().out.splitlines()  # the key the user meant
