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
from typing import ClassVar, Literal, get_args

from envs.games import check_distribution_mode, get_game
from envs.levels import LevelRange, Split, UnseenRule
from envs.procgen_vec import MAX_RAND_SEED

EvalMode = Literal["member", "vote", "explorer", "expgen"]
Engine = Literal["native", "sb3", "rllib"]
NetworkKind = Literal["impala", "small"]
Precision = Literal["auto", "fp32", "bf16"]
ForwardMode = Literal["auto", "vmap", "loop"]
NormAdv = Literal["batch", "minibatch", "none"]  # not "off": YAML 1.1 readers (PyYAML's default) take it for false
ControllerMode = Literal["reference", "plurality"]
Burst = Literal["reference", "geometric", "fixed"]
UnclassedAnchor = Literal["up", "exact"]
Minibatch = Literal["samples", "sequences"]
Init = Literal["torch", "reference"]
Pipeline = Literal["auto", "serial", "overlap"]
Acting = Literal["auto", "eager", "cudagraph"]
# Member algorithms: the names of agents/registry.py:ALGORITHMS, the one list of their classes (core
# cannot import agents; the registry refuses to load when the two lists differ).
Algo = Literal["ppo", "idaac", "daac"]
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
    """A section's choice keys, its subsections' included, against their ``Literal`` (what OmegaConf
    does for a loaded config; this covers a section built directly, e.g. by library code), then its
    ``check`` (which checks its subsections' other rules). Raises ``ConfigError`` naming ``name.key``."""
    _check_choices(name, section)
    section.check()


def _check_choices(name: str, section: object) -> None:
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, allowed = getattr(section, f.name), choices(hints[f.name])
        if dataclasses.is_dataclass(value):
            _check_choices(f"{name}.{f.name}", value)
        for v in (value if isinstance(value, list) else [value]) if allowed else ():
            if v not in allowed:
                raise ConfigError(f"{name}.{f.name}={v!r} is not allowed; choose one of: {', '.join(allowed)}")


def positive(key: str, value: float, strict: bool = True) -> None:
    """Raise ``ConfigError`` naming ``key`` unless ``value`` > 0 (``strict``) or >= 0."""
    if value <= 0 if strict else value < 0:
        raise ConfigError(f"{key} must be {'>' if strict else '>='} 0, got {value}")


def unit(key: str, value: float) -> None:
    """Raise ``ConfigError`` naming ``key`` unless ``value`` lies in [0, 1] (a discount, GAE's lambda)."""
    if not 0 <= value <= 1:
        raise ConfigError(f"{key} must lie in [0, 1], got {value}")


def check_seed(key: str, value: int) -> None:
    """Raise ``ConfigError`` naming ``key`` unless ``value`` lies in [0, 2**31 - 1]: a config's seeds
    are procgen's ``rand_seed`` as they are (a C int; gym3 asserts the range) and gymnasium's
    reset seeds (>= 0). Derived seeds (``seed`` + member index, RLlib's) are checked in core/config.py."""
    if not 0 <= value <= MAX_RAND_SEED:
        raise ConfigError(f"{key}={value} is out of range: seeds must lie in [0, {MAX_RAND_SEED}] "
                          "(procgen's rand_seed is a C int)")


# One folder under runs_dir (name) or under eval/ (eval.name): no separators, no '.' or '..'.
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_folder_name(key: str, value: str, example: str) -> None:
    """Raise ``ConfigError`` unless ``value`` is one plain folder name (letters, digits, '_', '-', '.',
    starting with a letter or digit): never a path that leaves its parent folder."""
    if not FOLDER_NAME.fullmatch(value):
        raise ConfigError(f"{key}={value!r} must be a plain folder name (letters, digits, '_', '-', '.', "
                          f"starting with a letter or digit), e.g. {key}={example}")


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
    # serial's steps/s (docs/performance.md): half-batch acting calls cost nearly a whole one.
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
class OptimiserConfig(Section):
    """One Adam optimiser: learning rate (annealed with its role's ``anneal_lr``), epsilon, and the
    per-member gradient-norm clip of its parameters."""

    lr: float = 5e-4
    adam_eps: float = 1e-5
    max_grad_norm: float = 0.5

    def check_keys(self, path: str) -> None:
        """This section's rules, naming its keys under ``path`` (e.g. ``idaac.value``)."""
        positives(path, self, strict=("lr", "adam_eps", "max_grad_norm"))


@dataclass
class PPOUpdateConfig(Section):
    """One agent's PPO update (Schulman et al. 2017): ``epochs`` passes over its rollout in
    ``num_minibatches`` minibatches, the clipped policy and value losses, and one Adam optimiser.
    The reward agents' is ``ppo`` (``PPOConfig``), the explorer's ``explorer.ppo``."""

    epochs: int = 3
    num_minibatches: int = 8
    lr: float = 5e-4
    adam_eps: float = 1e-5
    anneal_lr: bool = False
    clip_coef: float = 0.2
    clip_vloss: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    norm_adv: NormAdv = "batch"

    def check_keys(self, path: str) -> None:
        """This section's rules, naming its keys under ``path`` (``ppo`` or ``explorer.ppo``)."""
        positives(path, self, strict=("epochs", "num_minibatches", "lr", "adam_eps", "max_grad_norm"))


@dataclass
class PPOConfig(PPOUpdateConfig):
    """The reward agents (members): their budget, rollout, discount and GAE whatever ``member.algo``
    (``num_steps`` is the explorer's rollout length too), and the PPO update of PPO members (the
    keys of ``PPOUpdateConfig``; other member algorithms have their own section, e.g. ``idaac``)."""

    total_steps: int = 25_000_000  # env steps per agent
    num_steps: int = 256  # rollout length per env
    gamma: float = 0.999
    gae_lambda: float = 0.95
    # PPO members' minibatches: random single transitions (CleanRL), or sets of whole env
    # sequences (the authors' PPO); the recurrent explorer always uses sequences.
    minibatch: Minibatch = "samples"

    def check(self) -> None:
        self.check_keys("ppo")
        positives("ppo", self, strict=("num_steps", "total_steps"))
        unit("ppo.gamma", self.gamma)
        unit("ppo.gae_lambda", self.gae_lambda)


@dataclass
class MemberConfig(Section):
    """How the reward agents (members) learn. ``engine`` says who trains them; ``algo`` says with
    what (native engine only): ppo, idaac or daac (Raileanu & Fergus 2021; agents/idaac.py)."""

    algo: Algo = "ppo"


@dataclass
class IDAACConfig(Section):
    """IDAAC and DAAC members (``member.algo=idaac|daac``; Raileanu & Fergus 2021, agents/idaac.py),
    with the defaults of the reference's ``arguments.py`` (rraileanu/idaac, ppo_daac_idaac/). Their
    budget, rollout, discount and GAE are every member's (``ppo.total_steps``, ``ppo.num_steps``,
    ``ppo.gamma``, ``ppo.gae_lambda``); how they learn is all here, with one Adam optimiser per
    phase (``policy``, ``value``, ``discriminator``)."""

    members: ClassVar[tuple[str, ...]] = ("idaac", "daac")  # the member algorithms that read this section

    epochs: int = 1  # policy epochs per update (the reference's ppo_epoch)
    value_epoch: int = 9  # epochs of the value phase
    value_freq: int = 1  # the value phase runs when the update index (from 0) is a multiple of it
    num_minibatches: int = 8  # minibatches of random single transitions per epoch, both phases
    clip_coef: float = 0.2  # the policy's surrogate and the value loss's clip
    ent_coef: float = 0.01
    anneal_lr: bool = False  # every phase's learning rate linearly to 0 over ppo.total_steps
    policy: OptimiserConfig = field(default_factory=OptimiserConfig)  # policy network and advantage head
    value: OptimiserConfig = field(default_factory=OptimiserConfig)  # value network
    discriminator: OptimiserConfig = field(default_factory=OptimiserConfig)  # order discriminator (idaac only)
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
        positives("idaac", self, strict=("epochs", "value_epoch", "value_freq", "num_minibatches",
                                         "discriminator_hidden", "adv_eps"),
                  non_negative=("adv_loss_coef", "order_loss_coef"))
        for phase in IDAAC_PHASES:
            getattr(self, phase).check_keys(f"idaac.{phase}")

    def check_members(self, env: EnvConfig, samples: int) -> None:
        """The rules between this section and others, for a config whose members read it;
        ``samples``: a member's rollout, env.num_envs x ppo.num_steps."""
        if samples % self.num_minibatches:
            raise ConfigError(f"env.num_envs * ppo.num_steps = {samples} is not divisible by "
                              f"idaac.num_minibatches = {self.num_minibatches}")
        if self.reward_scaling and env.pipeline == "overlap":
            raise ConfigError("idaac.reward_scaling updates its running return statistics over each whole env "
                              "batch; env.pipeline=overlap steps halves: use env.pipeline=serial or "
                              "idaac.reward_scaling=false")


IDAAC_PHASES = ("policy", "value", "discriminator")  # IDAACConfig's optimisers, one per phase


@dataclass
class EnsembleConfig(Section):
    size: int = 10  # reward agents (members), seeds 0..size-1 unless `seeds` is given
    seeds: list[int] = field(default_factory=list)

    def check(self) -> None:
        positive("ensemble.size", self.size)
        if self.seeds and len(self.seeds) != self.size:
            raise ConfigError(f"ensemble.seeds has {len(self.seeds)} entries but ensemble.size is {self.size}; "
                              "give one seed per member or leave seeds empty")
        for m, seed in enumerate(self.seeds):
            check_seed(f"ensemble.seeds[{m}]", seed)


@dataclass
class PopulationConfig(Section):
    size: int = 0  # members trained together in one process; 0 = the whole ensemble
    # How the stacked members' networks run (agents/population.py): vmap (one grouped kernel per
    # layer for all members) or loop (one plain kernel per member). auto: on CUDA, each job times
    # both on one of its minibatches when it starts and keeps the faster (it prints the times);
    # elsewhere loop (faster on CPUs: grouped convolutions are their slow path).
    forward_mode: ForwardMode = "auto"
    # The members' minibatch loss (forward, loss, backward) through torch.compile: fused kernels,
    # fewer launches; the first update pays the compilation (about a minute on 2 CPU cores) and the numbers
    # differ from eager in the last bits. docs/performance.md has its measured effect.
    compile: bool = False

    def check(self) -> None:
        positives("population", self, non_negative=("size",))


@dataclass
class LoggingConfig(Section):
    checkpoint_interval: int = 10  # updates between checkpoints
    eval_interval: int = 10  # updates between held-out evaluations; 0 = never
    eval_episodes: int = 64
    eval_splits: list[Split] = field(default_factory=lambda: ["train", "test"])
    # Held-out evaluations in a thread beside training, on a snapshot of the weights of the update
    # they evaluate (training/heldout.py:HeldoutEvaluator), logged at that update's step when they
    # finish; a checkpoint waits for those of earlier updates. Why: training waits for none (the paper
    # config's explorer plays ~300, most of an hour on a GPU, where the evaluation's kernels run on
    # their own stream in the GPU's idle time). On a CPU both share the cores: measured neither
    # faster nor slower beyond noise on 2 cores (docs/performance.md). false: inline, training
    # waits for each evaluation (the behaviour before). The same numbers, bit for bit, either way.
    eval_overlap: bool = True
    progress: bool = True

    def check(self) -> None:
        positives("logging", self, strict=("checkpoint_interval", "eval_episodes"), non_negative=("eval_interval",))


@dataclass
class ExplorerConfig(Section):
    """The maximum-entropy exploration agent (docs/expgen.md, "Explorer"): always recurrent PPO,
    whatever ``member.algo``, with its own discount, GAE and PPO update (``ppo``: minibatches of
    whole env sequences). Its rollout length is the members' (``ppo.num_steps``)."""

    enabled: bool = True
    total_steps: int = 100_000_000
    gamma: float = -1.0  # < 0: the per-game discount of envs/games.py
    gae_lambda: float = 0.95
    ppo: PPOUpdateConfig = field(default_factory=PPOUpdateConfig)
    k: int = 3  # k-th nearest neighbour
    buffer_size: int = 500  # frames of the current episode kept for the kNN reward
    pool: int = 3  # average-pooling of the full-view frame
    seed: int = 1000
    # procgen's stepping threads for each of the explorer's env batches (its agent view and its
    # full-view twin, stepped at once), in place of env.num_threads: the explorer's rollout waits for
    # every env step. 0: a batch steps in the thread that calls it. -1, auto: the explorer's CPUs
    # (resources.explorer_cpus, at most the cores this process may run on) shared by its views, at
    # most one per env of a batch, 0 where that is one (training/explorer_learner.py:env_threads).
    # Same frames, rewards and episode ends whatever the count.
    env_threads: int = -1

    def check(self) -> None:
        positives("explorer", self, strict=("total_steps", "k", "buffer_size", "pool"))
        check_seed("explorer.seed", self.seed)
        unit("explorer.gae_lambda", self.gae_lambda)
        if self.env_threads < -1:
            raise ConfigError(f"explorer.env_threads must be -1 (auto), 0 or a thread count, got {self.env_threads}")
        self.ppo.check_keys("explorer.ppo")


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
        positives("eval", self, strict=("episodes", "num_envs"))
        check_seed("eval.seed", self.seed)
        if self.name:
            check_folder_name("eval.name", self.name, "random_explorer")
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
    """What each job asks for and runs with; launch/placement.py turns these into requests.

    A job (a Ray Tune trial with ``ray: true``) is one population shard of reward agents
    (``population.size`` members) or the explorer. ``*_cpus`` are the job's torch threads, under Ray,
    side by side and one after another alike; its CPU request under Ray also counts its env threads
    (``max(torch threads, env cores)``, their sum with ``env.pipeline=overlap``). ``*_gpus`` is a
    share of one GPU, at most 1 (a job trains on one device); < 0 means auto, over every job of the
    experiment (all the runs of a sweep): a whole GPU per job when there are as many GPUs as jobs,
    else ``1/ceil(jobs/GPUs)``, raised where the job's estimated GPU memory needs a larger share
    (0 on a cluster without GPUs). Raises ``ConfigError`` for CPUs <= 0 or GPUs > 1.
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
        for kind in ("shard", "explorer"):
            share = getattr(self, f"{kind}_gpus")
            if share > 1:
                raise ConfigError(
                    f"resources.{kind}_gpus={share:g}, but a job trains on one device and would leave the other "
                    "GPU(s) idle; use at most 1 (or -1, auto) and more jobs to fill more GPUs (population.size "
                    "splits the members into jobs; a sweep trains many runs at once)")


# The keys of the roles that once learned with ``ppo``'s settings (the explorer, IDAAC's phases):
# where no config file or override sets one, load_config gives it the value of the ``ppo`` key
# named here, so a config written before the role had its own keys, and every run trained with
# one, means what it meant.
FOLLOWS_PPO: dict[str, str] = {
    **{f"explorer.ppo.{f.name}": f"ppo.{f.name}" for f in dataclasses.fields(PPOUpdateConfig)},
    "explorer.gae_lambda": "ppo.gae_lambda",
    **{f"idaac.{k}": f"ppo.{k}" for k in ("num_minibatches", "clip_coef", "ent_coef", "anneal_lr")},
    **{f"idaac.{phase}.{f.name}": f"ppo.{f.name}" for phase in IDAAC_PHASES for f in dataclasses.fields(OptimiserConfig)},
}
