"""The configuration schema: typed dataclasses + YAML + ``key=value`` overrides (OmegaConf).

Unknown keys and wrong types are rejected by OmegaConf's structured configs; values outside their
allowed set and every rule that ties keys together are rejected by ``validate``. All of it happens
in ``load_config``, before any work starts (and before any Ray trial could retry a config error),
with a message naming the key and what is allowed.

This is the one module past ~300 lines on purpose: the schema, its allowed values and its rules
are one concept, and a key's rule is easiest to keep right next to the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.run_layout import RunLayout
from envs.games import check_distribution_mode, get_game
from envs.levels import SPLITS, UNSEEN_RULES, LevelRange, check_unseen_rule, get_split

# The allowed values of every choice key, owned here; the modules that implement them import these.
EVAL_MODES = ("member", "vote", "explorer", "expgen")
ENGINES = ("native", "sb3", "rllib")
NETWORK_KINDS = ("impala", "small")
PRECISIONS = ("auto", "fp32", "bf16")
FORWARD_MODES = ("auto", "vmap", "loop")
NORM_ADV = ("batch", "minibatch", "none")
CONTROLLER_MODES = ("reference", "plurality")
BURSTS = ("reference", "geometric", "fixed")
UNCLASSED_ANCHORS = ("up", "exact")
MINIBATCHES = ("samples", "sequences")
INITS = ("torch", "reference")
PIPELINES = ("auto", "serial", "overlap")
ACTING_MODES = ("auto", "eager", "cudagraph")
ALGOS = ("ppo", "idaac", "daac")  # member algorithms (agents/registry.py)
PAIR_LABELS = ("reference", "corrected")


class ConfigError(ValueError):
    """A configuration problem, worded for the user."""


@dataclass
class EnvConfig:
    game: str = "maze"
    num_envs: int = 64
    distribution_mode: str = "easy"
    start_level: int = 0
    num_levels: int = 200
    use_backgrounds: bool = True
    num_threads: int = 1  # procgen's own C++ threads per batch
    # How a rollout step is scheduled. serial: infer all envs, then step them all. overlap: each
    # env batch is split in two halves; one half steps (CPU) while the device infers the other.
    # Same actions, rewards and frames either way. auto = serial: on a CPU the two halves compete
    # for the same cores, and on an H200 overlap measured 0.80x (members) and 0.87x (explorer) of
    # serial's steps/s (docs/architecture.md): half-batch acting calls cost nearly a whole one.
    pipeline: str = "auto"  # auto | serial | overlap

    @property
    def train_levels(self) -> LevelRange:
        return LevelRange(self.start_level, self.num_levels)


@dataclass
class NetworkConfig:
    kind: str = "impala"  # impala | small
    # auto: bf16 autocast for the convolutional trunk where the device has native bf16 (CUDA
    # Ampere+, CPUs with AVX512-BF16/AMX), else fp32. Weights, optimiser, heads, losses: fp32.
    precision: str = "auto"  # auto | fp32 | bf16
    # CUDA only (core/runtime.py): let fp32 convolutions, matmuls and the cuDNN GRU use TF32 tensor
    # cores (10-bit mantissa). false: IEEE fp32 for every fp32 op, as on a CPU (what the 1e-5
    # exactness tests assume); PyTorch's own default is a mix (TF32 convolutions and cuDNN GRU,
    # fp32 matmuls). bf16 (precision) is separate: it applies to the trunk either way.
    tf32: bool = False
    # How a rollout step's acting call (the members' or the explorer's forward, sampling and
    # logprobs) runs. cudagraph: replayed as one captured CUDA graph instead of ~100 kernel launches
    # (agents/acting.py:CapturedStep), CUDA only, the same numbers as eager (tests/test_device.py);
    # auto = cudagraph on CUDA (H200: 1.43x members' and 1.86x explorer's steps/s), eager elsewhere.
    acting: str = "auto"  # auto | eager | cudagraph
    # torch: PyTorch's default layer init (as CleanRL); reference: the authors' (Xavier-uniform
    # trunk with zero biases, orthogonal GRU). Heads are orthogonal (gains 0.01 / 1) in both.
    init: str = "torch"  # torch | reference
    channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    hidden: int = 256


@dataclass
class PPOConfig:
    total_steps: int = 25_000_000  # env steps per agent
    num_steps: int = 256  # rollout length per env
    epochs: int = 3
    num_minibatches: int = 8
    lr: float = 5e-4
    adam_eps: float = 1e-5
    anneal_lr: bool = False
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    norm_adv: str = "batch"  # batch | minibatch | none ("off" would parse as a YAML boolean)
    # The reward agents' minibatches: random single transitions (CleanRL), or sets of whole env
    # sequences (the authors' PPO); the recurrent explorer always uses sequences.
    minibatch: str = "samples"  # samples | sequences


@dataclass
class MemberConfig:
    """How the reward agents (members) learn. ``engine`` says who trains them; ``algo`` says with
    what (native engine only): ppo, idaac or daac (Raileanu & Fergus 2021; agents/idaac.py)."""

    algo: str = "ppo"  # ppo | idaac | daac


@dataclass
class IDAACConfig:
    """IDAAC and DAAC members (``member.algo=idaac|daac``): defaults of the reference's
    ``arguments.py`` (rraileanu/idaac, ppo_daac_idaac/). The shared PPO settings (lr, adam_eps,
    clip_coef, ent_coef, max_grad_norm, num_minibatches, gamma, gae_lambda) come from
    ``ppo``; ``ppo.vf_coef`` and ``ppo.norm_adv`` do not apply (the value network has its own
    optimiser, advantages are normalised over the rollout with ``adv_eps``)."""

    epochs: int = 1  # policy epochs per update (the reference's ppo_epoch; ppo.epochs stays the explorer's)
    value_epoch: int = 9  # epochs of the value phase
    value_freq: int = 1  # the value phase runs when the update index (from 0) is a multiple of it
    adv_loss_coef: float = 0.25  # weight of the advantage head's regression loss
    order_loss_coef: float = 0.001  # weight of the invariance loss (idaac only)
    nonlinear_discriminator: bool = False  # false: Linear(2 x hidden, 2); true: one hidden layer
    discriminator_hidden: int = 4  # units of that hidden layer
    # true: the reference's per-game value_epoch, value_freq, adv_loss_coef, order_loss_coef and
    # discriminator (its hyperparams.py, kept in envs/games.py) replace the five settings above.
    use_best_hps: bool = False
    adv_eps: float = 1.0e-5  # advantage normalisation: (A - mean) / (std + adv_eps)
    # reference: each frame is paired using the previous frame's level and step labels, as the
    # reference's storage does (off by one); corrected: its own labels (agents/idaac.py:frame_labels).
    pair_labels: str = "reference"  # reference | corrected
    # The reference's baselines VecNormalize(ob=False): rewards / running std of the discounted
    # return (gamma 0.99), clipped to +-10. Logged episode returns stay raw.
    reward_scaling: bool = True


@dataclass
class EnsembleConfig:
    size: int = 10  # reward agents (members), seeds 0..size-1 unless `seeds` is given
    seeds: list[int] = field(default_factory=list)


@dataclass
class PopulationConfig:
    size: int = 0  # members trained together in one process; 0 = the whole ensemble
    forward_mode: str = "auto"  # auto | vmap | loop


@dataclass
class LoggingConfig:
    checkpoint_interval: int = 10  # updates between checkpoints
    eval_interval: int = 10  # updates between held-out evaluations; 0 = never
    eval_episodes: int = 64
    eval_splits: list[str] = field(default_factory=lambda: ["train", "test"])
    progress: bool = True


@dataclass
class ExplorerConfig:
    """The maximum-entropy exploration agent (docs/expgen.md, "Explorer")."""

    enabled: bool = True
    total_steps: int = 100_000_000
    gamma: float = -1.0  # < 0: the per-game discount of envs/games.py
    k: int = 3  # k-th nearest neighbour
    buffer_size: int = 500  # frames of the current episode kept for the kNN reward
    pool: int = 3  # average-pooling of the full-view frame
    seed: int = 1000


@dataclass
class ExpGenConfig:
    """The test-time controller (docs/expgen.md, "Controller"); see agents/controller.py."""

    controller: str = "reference"  # reference | plurality
    threshold: int = -1  # < 0: the per-game k, scaled from 10 members to the ensemble's size
    burst: str = "reference"  # reference | geometric | fixed
    burst_p: float = 0.5
    burst_length: int = 1
    sample: bool = True  # members (and explorer) sample; false = argmax
    random_explorer: bool = False  # ablation: random actions instead of the explorer's
    # reference controller, anchor action in no direction class (maze/miner noop and special keys):
    # up = the authors' lookup, which falls to class 0 ("up"); exact = only exact matches agree
    unclassed_anchor: str = "up"  # up | exact
    members: int = 0  # use the first m members; 0 = all


@dataclass
class EvalConfig:
    split: str = "test"
    episodes: int = 200
    seed: int = 12345
    num_envs: int = 64
    modes: list[str] = field(default_factory=lambda: ["member", "vote", "explorer", "expgen"])
    video: int = 0  # episodes to record as video per mode
    name: str = ""  # "": results in <run>/eval/; a name: in <run>/eval/<name>/ (ablations, other splits)
    # Which seeds of test and test-full are skipped because their level equals a training level
    # (envs/levels.py): exact (renders exactly like one) | structure (has one's layout) | none (the
    # paper's raw seed split). Also applies to the held-out curves (logging.eval_splits).
    unseen: str = "structure"


@dataclass
class RLlibConfig:
    """``engine=rllib``: how RLlib spreads one reward agent's sampling and updates (training/engines/rllib.py)."""

    num_env_runners: int = 0  # 0: sample in the learner's own process
    num_envs_per_env_runner: int = 0  # 0: env.num_envs split evenly over the runners
    num_learners: int = 0  # 0: update in the driver's (trial's) process
    num_gpus_per_learner: float = 0.0


@dataclass
class ResourcesConfig:
    """What each Ray Tune trial asks the cluster for (``ray: true``); see launch/ray_trials.py.

    A trial is one population shard of reward agents (``population.size`` members) or the explorer.
    GPUs < 0 means auto: the cluster's GPUs shared evenly by the trials (0 on a machine without).
    """

    shard_cpus: float = 1.0
    shard_gpus: float = -1.0
    explorer_cpus: float = 1.0
    explorer_gpus: float = -1.0
    max_failures: int = 3  # restarts of a crashed trial (from its newest checkpoint) before giving up
    # ray: false. true: the pending jobs train side by side, one child process each (the
    # trial's CPUs as torch threads, all on this machine's device); false: one after another here.
    side_by_side: bool = True


@dataclass
class Config:
    name: str = MISSING  # run directory name under runs_dir
    runs_dir: str = "runs"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # base seed: member m uses seeds[m] (default seed + m)
    engine: str = "native"  # native | sb3 | rllib: who trains the reward agents
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


def _read_yaml(path: Path) -> DictConfig:
    """A config file as a mapping; an empty file, a list, a scalar or bad YAML is an error (an
    empty file would otherwise start the full default run)."""
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
    return OmegaConf.load(path)  # OmegaConf's own YAML reading (e.g. 3e-4 is a float there)


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    if "not in struct" in str(e) or "Key" in type(e).__name__:
        return f"unknown config key {key!r}: {msg}. See core/config.py for the valid keys."
    return f"bad value for config key {key!r}: {msg}"


def _choice(key: str, value: Any, allowed: tuple | list) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _positive(key: str, value: float, strict: bool = True) -> None:
    if value <= 0 if strict else value < 0:
        raise ConfigError(f"{key} must be {'>' if strict else '>='} 0, got {value}")


def validate(cfg: Config) -> None:
    """Reject values that type checks cannot: unknown names, bad ranges, inconsistent sizes."""
    for key, check in (("env.game", lambda: get_game(cfg.env.game)),
                       ("env.distribution_mode", lambda: check_distribution_mode(cfg.env.distribution_mode)),
                       ("env.start_level/env.num_levels", lambda: cfg.env.train_levels)):
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    _choice("engine", cfg.engine, ENGINES)
    _choice("member.algo", cfg.member.algo, ALGOS)
    _choice("idaac.pair_labels", cfg.idaac.pair_labels, PAIR_LABELS)
    _choice("network.kind", cfg.network.kind, NETWORK_KINDS)
    _choice("network.precision", cfg.network.precision, PRECISIONS)
    _choice("population.forward_mode", cfg.population.forward_mode, FORWARD_MODES)
    _choice("ppo.norm_adv", cfg.ppo.norm_adv, NORM_ADV)
    _choice("ppo.minibatch", cfg.ppo.minibatch, MINIBATCHES)
    _choice("env.pipeline", cfg.env.pipeline, PIPELINES)
    if cfg.env.pipeline == "overlap" and cfg.env.num_envs % 2:
        raise ConfigError(f"env.pipeline=overlap splits each env batch in two halves; env.num_envs="
                          f"{cfg.env.num_envs} is odd: use an even number of envs or env.pipeline=serial")
    _choice("network.init", cfg.network.init, INITS)
    _choice("expgen.unclassed_anchor", cfg.expgen.unclassed_anchor, UNCLASSED_ANCHORS)
    _choice("eval.split", cfg.eval.split, SPLITS)
    _choice("eval.unseen", cfg.eval.unseen, UNSEEN_RULES)
    if cfg.eval.name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.eval.name):
        raise ConfigError(f"eval.name={cfg.eval.name!r} must be a plain folder name (letters, digits, "
                          "'_', '-', '.'), e.g. eval.name=random_explorer")
    if not cfg.eval.modes:
        raise ConfigError(f"eval.modes is empty; choose one or more of: {', '.join(EVAL_MODES)}")
    for mode in cfg.eval.modes:
        _choice("eval.modes", mode, EVAL_MODES)
    _choice("expgen.controller", cfg.expgen.controller, CONTROLLER_MODES)
    _choice("expgen.burst", cfg.expgen.burst, BURSTS)
    if not 0 < cfg.expgen.burst_p <= 1:
        raise ConfigError(f"expgen.burst_p must lie in (0, 1], got {cfg.expgen.burst_p}")
    if cfg.expgen.members < 0 or cfg.expgen.members > cfg.ensemble.size:
        raise ConfigError(f"expgen.members must lie in [0, ensemble.size={cfg.ensemble.size}]")
    for key in ("explorer.total_steps", "explorer.k", "explorer.buffer_size", "explorer.pool"):
        _positive(key, getattr(cfg.explorer, key.split(".")[1]))
    for s in cfg.logging.eval_splits:
        _choice("logging.eval_splits", s, SPLITS)
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r}: choose auto, cpu, cuda or cuda:N")
    _choice("network.acting", cfg.network.acting, ACTING_MODES)
    if cfg.network.acting == "cudagraph" and cfg.device == "cpu":
        raise ConfigError("network.acting=cudagraph captures CUDA graphs and device=cpu has none; "
                          "use network.acting=auto (eager on a CPU) or device=cuda")
    for key in ("env.num_envs", "ppo.num_steps", "ppo.epochs", "ppo.num_minibatches",
                "ppo.total_steps", "ppo.lr", "ensemble.size", "eval.episodes", "eval.num_envs",
                "logging.checkpoint_interval", "network.hidden", "logging.eval_episodes",
                "env.num_threads", "expgen.burst_length"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name))
    _positive("logging.eval_interval", cfg.logging.eval_interval, strict=False)
    _positive("population.size", cfg.population.size, strict=False)
    for key in ("shard_cpus", "explorer_cpus"):
        _positive(f"resources.{key}", getattr(cfg.resources, key))
    _positive("resources.max_failures", cfg.resources.max_failures, strict=False)
    for key, seed in [("seed", cfg.seed), ("explorer.seed", cfg.explorer.seed), ("eval.seed", cfg.eval.seed),
                      *(("ensemble.seeds", s) for s in cfg.ensemble.seeds)]:
        _positive(key, seed, strict=False)  # env seeds (gymnasium's reset contract) are >= 0
    batch = cfg.steps_per_update
    if batch % cfg.ppo.num_minibatches:
        raise ConfigError(
            f"env.num_envs * ppo.num_steps = {batch} is not divisible by "
            f"ppo.num_minibatches = {cfg.ppo.num_minibatches}"
        )
    # Normalising advantages divides by their std over the samples: undefined (NaN) for one sample.
    normalised = {"batch": ("env.num_envs * ppo.num_steps", batch),
                  "minibatch": ("env.num_envs * ppo.num_steps / ppo.num_minibatches", batch // cfg.ppo.num_minibatches)}
    if cfg.ppo.norm_adv in normalised and normalised[cfg.ppo.norm_adv][1] < 2:
        what, size = normalised[cfg.ppo.norm_adv]
        raise ConfigError(f"ppo.norm_adv={cfg.ppo.norm_adv} normalises advantages over {what} = {size} "
                          "sample(s); it needs at least 2: use more env.num_envs or ppo.num_steps, fewer "
                          "ppo.num_minibatches, or ppo.norm_adv=none")
    if cfg.ensemble.seeds and len(cfg.ensemble.seeds) != cfg.ensemble.size:
        raise ConfigError(
            f"ensemble.seeds has {len(cfg.ensemble.seeds)} entries but ensemble.size is "
            f"{cfg.ensemble.size}; give one seed per member or leave seeds empty"
        )
    if not 0 <= cfg.ppo.gamma <= 1 or not 0 <= cfg.ppo.gae_lambda <= 1:
        raise ConfigError("ppo.gamma and ppo.gae_lambda must lie in [0, 1]")
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
    n, mb = cfg.env.num_envs, cfg.ppo.num_minibatches
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
    if cfg.engine == "rllib":
        rllib_runner_layout(cfg)
    _validate_member(cfg)
    if cfg.expgen.threshold > cfg.eval_members:
        raise ConfigError(
            f"expgen.threshold={cfg.expgen.threshold} exceeds the {cfg.eval_members} members evaluated "
            "(expgen.members or ensemble.size): consensus would be impossible"
        )
    if cfg.expgen.threshold == 0:
        raise ConfigError("expgen.threshold must be >= 1 (or -1 for the per-game default)")
    for key in ("rllib.num_env_runners", "rllib.num_envs_per_env_runner", "rllib.num_learners",
                "rllib.num_gpus_per_learner"):
        _positive(key, getattr(cfg.rllib, key.split(".")[1]), strict=False)


def _validate_member(cfg: Config) -> None:
    """The member algorithm's rules (``member``, ``idaac``)."""
    if cfg.member.algo == "ppo":
        return
    algo = cfg.member.algo
    if cfg.engine != "native":
        raise ConfigError(f"member.algo={algo} is implemented by the native engine only, not engine={cfg.engine}; "
                          "use engine=native or member.algo=ppo")
    if cfg.ppo.minibatch != "samples":
        raise ConfigError(f"member.algo={algo} trains on random single transitions as its reference does: "
                          "set ppo.minibatch=samples")
    for key in ("idaac.epochs", "idaac.value_epoch", "idaac.value_freq", "idaac.discriminator_hidden", "idaac.adv_eps"):
        _positive(key, getattr(cfg.idaac, key.split(".")[1]))
    for key in ("idaac.adv_loss_coef", "idaac.order_loss_coef"):
        _positive(key, getattr(cfg.idaac, key.split(".")[1]), strict=False)
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
