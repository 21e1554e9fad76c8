"""The config's sections: one typed dataclass each, with its allowed values and its own rules.

A choice key is typed with a ``Literal``: OmegaConf rejects any other value while it merges the
YAML file and the overrides (naming the key and the allowed values), ``--help`` lists the values
(``core/config.py:config_help``), and the modules that implement a choice import its tuple
(``ENGINES``, ``NETWORK_KINDS``, ...), derived from the same ``Literal``. Each section's
``check`` holds the rules that involve only its own keys; rules that tie sections together are in
``core/config.py``. Everything is checked before any work starts.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Literal, get_args

from envs.games import check_distribution_mode, get_game
from envs.levels import LevelRange, Split, UnseenRule

EvalMode = Literal["member", "vote", "explorer", "expgen"]
Engine = Literal["native", "sb3", "rllib"]
NetworkKind = Literal["impala", "small"]
Precision = Literal["auto", "fp32", "bf16"]
ForwardMode = Literal["auto", "vmap", "loop"]
NormAdv = Literal["batch", "minibatch", "none"]  # "off" would parse as a YAML boolean
ControllerMode = Literal["reference", "plurality"]
Burst = Literal["reference", "geometric", "fixed"]
UnclassedAnchor = Literal["up", "exact"]
Minibatch = Literal["samples", "sequences"]
Init = Literal["torch", "reference"]
Pipeline = Literal["auto", "serial", "overlap"]
Acting = Literal["auto", "eager", "cudagraph"]
Algo = Literal["ppo", "idaac", "daac"]  # member algorithms (agents/registry.py)
PairLabels = Literal["reference", "corrected"]

EVAL_MODES: tuple[str, ...] = get_args(EvalMode)
ENGINES: tuple[str, ...] = get_args(Engine)
NETWORK_KINDS: tuple[str, ...] = get_args(NetworkKind)
PRECISIONS: tuple[str, ...] = get_args(Precision)
FORWARD_MODES: tuple[str, ...] = get_args(ForwardMode)
ALGOS: tuple[str, ...] = get_args(Algo)


class ConfigError(ValueError):
    """A configuration problem, worded for the user."""


class Section:
    """A config section: a dataclass whose ``check`` holds the rules on its own keys."""

    def check(self) -> None:
        """Raise ``ConfigError`` naming the key if a rule on this section's keys is broken."""


def choices(hint: object) -> tuple[str, ...] | None:
    """The allowed values of a key typed ``hint``: a ``Literal``'s, or its items' for a list of
    them; None for a key that is not a choice. Validation, --help and error messages read this."""
    if typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    return get_args(hint) if typing.get_origin(hint) is Literal else None


def check_section(name: str, section: Section) -> None:
    """A section's choice keys against their ``Literal`` (what OmegaConf does for a loaded config;
    this covers a section built directly, e.g. by library code), then its ``check``. Raises
    ``ConfigError`` naming ``name.key``."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, allowed = getattr(section, f.name), choices(hints[f.name])
        for v in (value if isinstance(value, list) else [value]) if allowed else ():
            if v not in allowed:
                raise ConfigError(f"{name}.{f.name}={v!r} is not allowed; choose one of: {', '.join(allowed)}")
    section.check()


def positive(key: str, value: float, strict: bool = True) -> None:
    """Raise ``ConfigError`` naming ``key`` unless ``value`` > 0 (``strict``) or >= 0."""
    if value <= 0 if strict else value < 0:
        raise ConfigError(f"{key} must be {'>' if strict else '>='} 0, got {value}")


def positives(section: str, obj: object, strict: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    for name in strict:
        positive(f"{section}.{name}", getattr(obj, name))
    for name in non_negative:
        positive(f"{section}.{name}", getattr(obj, name), strict=False)


@dataclass
class EnvConfig(Section):
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
    pipeline: Pipeline = "auto"

    @property
    def train_levels(self) -> LevelRange:
        return LevelRange(self.start_level, self.num_levels)

    def check(self) -> None:
        for key, rule in (("env.game", lambda: get_game(self.game)),
                          ("env.distribution_mode", lambda: check_distribution_mode(self.distribution_mode)),
                          ("env.start_level/env.num_levels", lambda: self.train_levels)):
            try:
                rule()
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
        positives("env", self, strict=("num_envs", "num_threads"))
        if self.pipeline == "overlap" and self.num_envs % 2:
            raise ConfigError(f"env.pipeline=overlap splits each env batch in two halves; env.num_envs="
                              f"{self.num_envs} is odd: use an even number of envs or env.pipeline=serial")


@dataclass
class NetworkConfig(Section):
    kind: NetworkKind = "impala"
    # auto: bf16 autocast for the convolutional trunk where the device has native bf16 (CUDA
    # Ampere+, CPUs with AVX512-BF16/AMX), else fp32. Weights, optimiser, heads, losses: fp32.
    precision: Precision = "auto"
    # CUDA only (core/runtime.py): let fp32 convolutions, matmuls and the cuDNN GRU use TF32 tensor
    # cores (10-bit mantissa). false: IEEE fp32 for every fp32 op, as on a CPU (what the 1e-5
    # exactness tests assume); PyTorch's own default is a mix (TF32 convolutions and cuDNN GRU,
    # fp32 matmuls). bf16 (precision) is separate: it applies to the trunk either way.
    tf32: bool = False
    # How a rollout step's acting call (the members' or the explorer's forward, sampling and
    # logprobs) runs. cudagraph: replayed as one captured CUDA graph instead of ~100 kernel launches
    # (agents/acting.py:CapturedStep), CUDA only, the same numbers as eager (tests/test_device.py);
    # auto = cudagraph on CUDA (H200: 1.43x members' and 1.86x explorer's steps/s), eager elsewhere.
    acting: Acting = "auto"
    # torch: PyTorch's default layer init (as CleanRL); reference: the authors' (Xavier-uniform
    # trunk with zero biases, orthogonal GRU). Heads are orthogonal (gains 0.01 / 1) in both.
    init: Init = "torch"
    channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    hidden: int = 256

    def check(self) -> None:
        positives("network", self, strict=("hidden",))


@dataclass
class PPOConfig(Section):
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
    norm_adv: NormAdv = "batch"
    # The reward agents' minibatches: random single transitions (CleanRL), or sets of whole env
    # sequences (the authors' PPO); the recurrent explorer always uses sequences.
    minibatch: Minibatch = "samples"

    def check(self) -> None:
        positives("ppo", self, strict=("num_steps", "epochs", "num_minibatches", "total_steps", "lr"))
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ConfigError("ppo.gamma and ppo.gae_lambda must lie in [0, 1]")


@dataclass
class MemberConfig(Section):
    """How the reward agents (members) learn. ``engine`` says who trains them; ``algo`` says with
    what (native engine only): ppo, idaac or daac (Raileanu & Fergus 2021; agents/idaac.py)."""

    algo: Algo = "ppo"


@dataclass
class IDAACConfig(Section):
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
    pair_labels: PairLabels = "reference"
    # The reference's baselines VecNormalize(ob=False): rewards / running std of the discounted
    # return (gamma 0.99), clipped to +-10. Logged episode returns stay raw.
    reward_scaling: bool = True

    def check(self) -> None:
        positives("idaac", self, strict=("epochs", "value_epoch", "value_freq", "discriminator_hidden", "adv_eps"),
                  non_negative=("adv_loss_coef", "order_loss_coef"))


@dataclass
class EnsembleConfig(Section):
    size: int = 10  # reward agents (members), seeds 0..size-1 unless `seeds` is given
    seeds: list[int] = field(default_factory=list)

    def check(self) -> None:
        positive("ensemble.size", self.size)
        if self.seeds and len(self.seeds) != self.size:
            raise ConfigError(f"ensemble.seeds has {len(self.seeds)} entries but ensemble.size is {self.size}; "
                              "give one seed per member or leave seeds empty")
        for seed in self.seeds:
            positive("ensemble.seeds", seed, strict=False)  # env seeds (gymnasium's reset contract) are >= 0


@dataclass
class PopulationConfig(Section):
    size: int = 0  # members trained together in one process; 0 = the whole ensemble
    forward_mode: ForwardMode = "auto"

    def check(self) -> None:
        positives("population", self, non_negative=("size",))


@dataclass
class LoggingConfig(Section):
    checkpoint_interval: int = 10  # updates between checkpoints
    eval_interval: int = 10  # updates between held-out evaluations; 0 = never
    eval_episodes: int = 64
    eval_splits: list[Split] = field(default_factory=lambda: ["train", "test"])
    progress: bool = True

    def check(self) -> None:
        positives("logging", self, strict=("checkpoint_interval", "eval_episodes"), non_negative=("eval_interval",))


@dataclass
class ExplorerConfig(Section):
    """The maximum-entropy exploration agent (docs/expgen.md, "Explorer")."""

    enabled: bool = True
    total_steps: int = 100_000_000
    gamma: float = -1.0  # < 0: the per-game discount of envs/games.py
    k: int = 3  # k-th nearest neighbour
    buffer_size: int = 500  # frames of the current episode kept for the kNN reward
    pool: int = 3  # average-pooling of the full-view frame
    seed: int = 1000

    def check(self) -> None:
        positives("explorer", self, strict=("total_steps", "k", "buffer_size", "pool"), non_negative=("seed",))


@dataclass
class ExpGenConfig(Section):
    """The test-time controller (docs/expgen.md, "Controller"): agents/controller.py reads this
    section as it is, with the game's facts (envs/games.py) for what it leaves per game."""

    controller: ControllerMode = "reference"
    threshold: int = -1  # < 0: the per-game k, scaled from 10 members to the ensemble's size
    burst: Burst = "reference"
    burst_p: float = 0.5  # burst=geometric: P(stop) per step
    burst_length: int = 1  # burst=fixed: steps per burst
    sample: bool = True  # members (and explorer) sample; false = argmax
    random_explorer: bool = False  # ablation: random actions instead of the explorer's
    # reference controller, anchor action in no direction class (maze/miner noop and special keys):
    # up = the authors' lookup, which falls to class 0 ("up"); exact = only exact matches agree
    unclassed_anchor: UnclassedAnchor = "up"
    members: int = 0  # use the first m members; 0 = all

    def check(self) -> None:
        if not 0 < self.burst_p <= 1:
            raise ConfigError(f"expgen.burst_p must lie in (0, 1], got {self.burst_p}")
        positives("expgen", self, strict=("burst_length",), non_negative=("members",))
        if self.threshold == 0:
            raise ConfigError("expgen.threshold must be >= 1 (or -1 for the per-game default)")


@dataclass
class EvalConfig(Section):
    split: Split = "test"
    episodes: int = 200
    seed: int = 12345
    num_envs: int = 64
    modes: list[EvalMode] = field(default_factory=lambda: list(EVAL_MODES))
    video: int = 0  # episodes to record as video per mode
    name: str = ""  # "": results in <run>/eval/; a name: in <run>/eval/<name>/ (ablations, other splits)
    # Which seeds of test and test-full are skipped because their level equals a training level
    # (envs/levels.py): exact (renders exactly like one) | structure (has one's layout) | none (the
    # paper's raw seed split). Also applies to the held-out curves (logging.eval_splits).
    unseen: UnseenRule = "structure"

    def check(self) -> None:
        positives("eval", self, strict=("episodes", "num_envs"), non_negative=("seed",))
        if self.name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ConfigError(f"eval.name={self.name!r} must be a plain folder name (letters, digits, "
                              "'_', '-', '.'), e.g. eval.name=random_explorer")
        if not self.modes:
            raise ConfigError(f"eval.modes is empty; choose one or more of: {', '.join(EVAL_MODES)}")


@dataclass
class RLlibConfig(Section):
    """``engine=rllib``: how RLlib spreads one reward agent's sampling and updates (training/engines/rllib.py)."""

    num_env_runners: int = 0  # 0: sample in the learner's own process
    num_envs_per_env_runner: int = 0  # 0: env.num_envs split evenly over the runners
    num_learners: int = 0  # 0: update in the driver's (trial's) process
    num_gpus_per_learner: float = 0.0

    def check(self) -> None:
        positives("rllib", self, non_negative=("num_env_runners", "num_envs_per_env_runner", "num_learners",
                                               "num_gpus_per_learner"))


@dataclass
class ResourcesConfig(Section):
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

    def check(self) -> None:
        positives("resources", self, strict=("shard_cpus", "explorer_cpus"), non_negative=("max_failures",))
