"""The configuration: the root ``Config`` of typed sections (core/sections.py), YAML +
``key=value`` overrides (OmegaConf), the rules that tie sections together, and what may change
when a run resumes.

Unknown keys, wrong types and values outside a choice key's ``Literal`` are rejected by OmegaConf's
structured configs; each section's own rules by its ``check``; the rules across sections by
``validate``. All of it happens in ``load_config``, before any work starts (and before any Ray
trial could retry a config error), with a message naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.run_layout import RunLayout
from core.sections import (
    ConfigError,
    Engine,
    EnsembleConfig,
    EnvConfig,
    EvalConfig,
    ExpGenConfig,
    ExplorerConfig,
    IDAACConfig,
    LoggingConfig,
    MemberConfig,
    NetworkConfig,
    PopulationConfig,
    PPOConfig,
    ResourcesConfig,
    RLlibConfig,
    check_section,
    choices,
    positive,
)
from envs.games import get_game
from envs.levels import check_unseen_rule, get_split


@dataclass
class Config:
    name: str = MISSING  # run directory name under runs_dir
    runs_dir: str = "runs"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # base seed: member m uses seeds[m] (default seed + m)
    engine: Engine = "native"  # who trains the reward agents
    ray: bool = True  # distribute agents as Ray Tune trials; false: no Ray (see resources.side_by_side)
    ray_address: str = ""  # "": start Ray locally; "auto" or host:port: join that cluster
    env: EnvConfig = field(default_factory=EnvConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    member: MemberConfig = field(default_factory=MemberConfig)
    idaac: IDAACConfig = field(default_factory=IDAACConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    explorer: ExplorerConfig = field(default_factory=ExplorerConfig)
    expgen: ExpGenConfig = field(default_factory=ExpGenConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    rllib: RLlibConfig = field(default_factory=RLlibConfig)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(Path(self.runs_dir) / self.name)

    # PPO batch arithmetic, for every agent and engine: one rollout of num_steps in each of num_envs.
    @property
    def steps_per_update(self) -> int:
        return self.env.num_envs * self.ppo.num_steps

    def num_updates(self, explorer: bool = False) -> int:
        """Updates to train an agent to its step budget, rounded up to whole rollouts."""
        budget = self.explorer.total_steps if explorer else self.ppo.total_steps
        return -(-budget // self.steps_per_update)

    def final_step(self, explorer: bool = False) -> int:
        return self.num_updates(explorer) * self.steps_per_update

    @property
    def eval_members(self) -> int:
        """How many members (the first ones) eval.py's ensemble modes use."""
        return self.expgen.members or self.ensemble.size

    @property
    def explorer_gamma(self) -> float:
        return self.explorer.gamma if self.explorer.gamma >= 0 else get_game(self.env.game).explorer_gamma

    @property
    def member_seeds(self) -> list[int]:
        return list(self.ensemble.seeds) or [self.seed + m for m in range(self.ensemble.size)]


def load_config(path: str | Path | None, overrides: list[str] = (), name: str | None = None) -> Config:
    """YAML file + dotlist overrides -> a validated ``Config``.

    ``name`` defaults to the YAML file's stem, so ``configs/maze.yaml`` trains into ``runs/maze``.
    A file may start from another (``base: paper.yaml``, relative to it): the base's values, then
    the file's own on top.
    """
    schema = OmegaConf.structured(Config)
    try:
        layers = [schema]
        if path is not None:
            path = Path(path)
            layers.append(_read_yaml(path))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        merged = OmegaConf.merge(*layers)
        for override in overrides:  # one at a time, so that an error can name its key
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
            except OmegaConfBaseException as e:
                if getattr(e, "full_key", None) is None:
                    e.full_key = override.split("=", 1)[0]
                raise
        if OmegaConf.is_missing(merged, "name"):
            merged.name = name or (path.stem if path is not None else "run")
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e)) from None
    validate(cfg)
    return cfg


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """A config file as a mapping, merged onto its ``base`` file if it names one; an empty file, a
    list, a scalar, bad YAML, a missing base or a cycle of bases is an error (an empty file would
    otherwise start the full default run)."""
    if path.resolve() in chain:
        raise ConfigError(f"config file {str(path)!r} is its own base (through {' -> '.join(map(str, chain))})")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, dict) or not loaded:
        what = "empty" if not loaded else f"a {type(loaded).__name__}, not a mapping"
        raise ConfigError(f"config file {str(path)!r} is {what}; it must be a mapping of sections "
                          "(env:, ppo:, ...), e.g. configs/quickstart.yaml")
    own = OmegaConf.load(path)  # OmegaConf's own YAML reading (e.g. 3e-4 is a float there)
    if "base" not in own:
        return own
    base = own.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"config file {str(path)!r}: base must be a file name, e.g. base: paper.yaml")
    return OmegaConf.merge(_read_yaml(path.parent / base, (*chain, path.resolve())), own)


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    if "not in struct" in str(e) or "Key" in type(e).__name__:
        return f"unknown config key {key!r}: {msg}. python train.py --help lists the valid keys."
    allowed = _choices_of(re.sub(r"\[\d+\]$", "", key or ""))  # eval.modes[1] -> eval.modes
    value = re.match(r"Invalid value '(.*?)', expected one of", msg)
    if allowed and value:  # the same words as check_section's, whoever caught it
        return f"{key}={value.group(1)!r} is not allowed; choose one of: {', '.join(allowed)}"
    return f"bad value for config key {key!r}: {msg}"


def _choices_of(key: str) -> tuple[str, ...] | None:
    """The allowed values of a choice key (``section.name``), from its ``Literal``; None otherwise."""
    cls: Any = Config
    for part in key.split("."):
        hint = typing.get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
        if hint is None:
            return None
        cls = hint
    return choices(cls)


def validate(cfg: Config) -> None:
    """Every section's own rules (``check``), then the root's and those across sections; raises
    ``ConfigError`` naming the key. ``load_config`` calls it; call it after changing a ``Config``."""
    for f in dataclasses.fields(cfg):
        if dataclasses.is_dataclass(section := getattr(cfg, f.name)):
            check_section(f.name, section)
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r}: choose auto, cpu, cuda or cuda:N")
    positive("seed", cfg.seed, strict=False)  # env seeds (gymnasium's reset contract) are >= 0
    _validate_across(cfg)


def _validate_across(cfg: Config) -> None:
    """Rules that tie several sections together. They are checked here, before any work, rather
    than where they bite (inside a Ray trial, Tune would retry a config error as a crash)."""
    for key, split in [("eval.split", cfg.eval.split)] + [("logging.eval_splits", s) for s in cfg.logging.eval_splits]:
        try:
            get_split(split, cfg.env.train_levels)  # test: the unseen levels after the training range
            check_unseen_rule(cfg.eval.unseen, split, cfg.env.train_levels)
        except ValueError as e:
            raise ConfigError(f"{key}={split}: {e}") from None
    if cfg.network.acting == "cudagraph" and cfg.device == "cpu":
        raise ConfigError("network.acting=cudagraph captures CUDA graphs and device=cpu has none; "
                          "use network.acting=auto (eager on a CPU) or device=cuda")
    _validate_batches(cfg)
    if cfg.engine == "rllib":
        rllib_runner_layout(cfg)
    _validate_member(cfg)
    if cfg.expgen.members > cfg.ensemble.size:
        raise ConfigError(f"expgen.members must lie in [0, ensemble.size={cfg.ensemble.size}]")
    if cfg.expgen.threshold > cfg.eval_members:
        raise ConfigError(
            f"expgen.threshold={cfg.expgen.threshold} exceeds the {cfg.eval_members} members evaluated "
            "(expgen.members or ensemble.size): consensus would be impossible"
        )


def _validate_batches(cfg: Config) -> None:
    """PPO's batch arithmetic: env.num_envs x ppo.num_steps samples cut into ppo.num_minibatches."""
    batch, n, mb = cfg.steps_per_update, cfg.env.num_envs, cfg.ppo.num_minibatches
    if batch % mb:
        raise ConfigError(f"env.num_envs * ppo.num_steps = {batch} is not divisible by ppo.num_minibatches = {mb}")
    # Normalising advantages divides by their std over the samples: undefined (NaN) for one sample.
    normalised = {"batch": ("env.num_envs * ppo.num_steps", batch),
                  "minibatch": ("env.num_envs * ppo.num_steps / ppo.num_minibatches", batch // mb)}
    if cfg.ppo.norm_adv in normalised and normalised[cfg.ppo.norm_adv][1] < 2:
        what, size = normalised[cfg.ppo.norm_adv]
        raise ConfigError(f"ppo.norm_adv={cfg.ppo.norm_adv} normalises advantages over {what} = {size} "
                          "sample(s); it needs at least 2: use more env.num_envs or ppo.num_steps, fewer "
                          "ppo.num_minibatches, or ppo.norm_adv=none")
    if cfg.ppo.minibatch == "sequences" and n % mb:
        raise ConfigError(
            f"ppo.minibatch=sequences cuts minibatches of whole env sequences: env.num_envs={n} must "
            f"be divisible by ppo.num_minibatches={mb}"
        )
    if cfg.ppo.minibatch == "sequences" and cfg.engine != "native":
        raise ConfigError(f"ppo.minibatch=sequences is implemented by the native engine only, not "
                          f"engine={cfg.engine}; use ppo.minibatch=samples")
    if cfg.explorer.enabled and n % mb:
        raise ConfigError(
            f"the explorer's minibatches are sets of whole env sequences: env.num_envs={n} must be "
            f"divisible by ppo.num_minibatches={mb} (or set explorer.enabled=false)"
        )


def _validate_member(cfg: Config) -> None:
    """The member algorithm's rules across sections (``member``, ``idaac``, ``engine``, ``ppo``)."""
    if cfg.member.algo == "ppo":
        return
    algo = cfg.member.algo
    if cfg.engine != "native":
        raise ConfigError(f"member.algo={algo} is implemented by the native engine only, not engine={cfg.engine}; "
                          "use engine=native or member.algo=ppo")
    if cfg.ppo.minibatch != "samples":
        raise ConfigError(f"member.algo={algo} trains on random single transitions as its reference does: "
                          "set ppo.minibatch=samples")
    if cfg.idaac.reward_scaling and cfg.env.pipeline == "overlap":
        raise ConfigError("idaac.reward_scaling updates its running return statistics over each whole env "
                          "batch; env.pipeline=overlap steps halves: use env.pipeline=serial or "
                          "idaac.reward_scaling=false")


def rllib_runner_layout(cfg: Config) -> tuple[int, int]:
    """``engine=rllib``: (env runners that sample, envs per runner); 0 runners samples in the trial."""
    r, n = cfg.rllib, cfg.env.num_envs
    runners = max(r.num_env_runners, 1)
    per_runner = r.num_envs_per_env_runner or n // runners
    if per_runner * runners != n:
        raise ConfigError(
            f"rllib: {runners} env runner(s) x {per_runner} envs != env.num_envs={n}; set "
            "rllib.num_envs_per_env_runner or an env.num_envs divisible by rllib.num_env_runners"
        )
    return runners, per_runner


def config_help() -> str:
    """Every config key as ``key = default  (allowed values or type)``, read from the schema: the
    values of a choice key are its ``Literal``'s. The epilog of train.py's and eval.py's --help."""
    lines = ["config keys (key=value overrides; key = default  (allowed values or type)):"]

    def kind(t: Any) -> str:
        if (allowed := choices(t)) and typing.get_origin(t) is not list:
            return " | ".join(allowed)
        if typing.get_origin(t) is list:
            return f"list of {kind(typing.get_args(t)[0])}"
        return getattr(t, "__name__", str(t))

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = "<the config file's name>" if default is MISSING else default
            lines.append(f"  {prefix}{f.name} = {shown}  ({kind(hints[f.name])})")

    walk(Config, "")
    return "\n".join(lines)


def save_config(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), path)


def _flat(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, value in OmegaConf.to_container(OmegaConf.structured(cfg)).items():  # type: ignore[union-attr]
        if isinstance(value, dict):
            out.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            out[section] = value
    return out


# What a trained run's checkpoints depend on: changing these and resuming would train a different
# experiment on top of the old one (or fail to restore). Budgets, logging, evaluation, resources
# and the controller may change between invocations.
FIXED_KEYS = ("env.game", "env.num_envs", "env.distribution_mode", "env.start_level", "env.num_levels",
              "env.use_backgrounds", "network.kind", "network.channels", "network.hidden", "network.init",
              "seed", "ensemble.seeds", "engine", "member.algo", "explorer.gamma", "explorer.k", "explorer.buffer_size",
              "explorer.pool", "explorer.seed")
FIXED_SECTIONS = ("ppo.", "idaac.")  # every PPO and IDAAC setting except the budget
CHANGEABLE = ("ppo.total_steps",)


def incompatible_changes(saved: Config, new: Config) -> list[str]:
    """The keys whose value ``new`` changes from the ``saved`` config of a run that has trained."""
    a, b = _flat(saved), _flat(new)
    # The discount the explorer trains with, not how it was written: 0.9 and -1 (maze's per-game
    # value from envs/games.py) are the same experiment.
    a["explorer.gamma"], b["explorer.gamma"] = saved.explorer_gamma, new.explorer_gamma
    keys = [k for k in a if k in FIXED_KEYS or (k.startswith(FIXED_SECTIONS) and k not in CHANGEABLE)]
    return [f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in keys if a[k] != b.get(k)]
