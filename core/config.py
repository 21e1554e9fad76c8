"""The configuration: the root ``Config`` of typed sections (core/sections.py), YAML +
``key=value`` overrides (OmegaConf), the rules that tie sections together, and what may change
when a run resumes.

Unknown keys, wrong types and values outside a choice key's ``Literal`` are rejected by OmegaConf's
structured configs; each section's own rules by its ``check``; the rules across sections by
``validate``. All of it happens in ``load_config``, before any work starts (and before any Ray
trial could retry a config error), with a message naming the key and what is allowed.

How values are read, in config files and in ``key=value`` overrides alike:

- A text key (typed ``str`` or a choice: ``name``, ``runs_dir``, ``eval.name``, ``env.game``, ...)
  keeps its text as written: ``name=007`` is the run ``007``, not ``7``; ``on``, ``1e3``, ``0x1F``,
  ``1:2`` and ``null`` stay those strings too. An override's value is the text after ``=`` exactly
  (``name=`` is the empty name); quotes around it are removed (``name='a b'``).
- Every other value is YAML 1.2 (its core schema), not PyYAML's YAML 1.1: integers are decimal
  (``010`` is 10, not octal 8), ``0o17`` or ``0x1F``; ``1:2`` is not sexagesimal 62 (an error for a
  number key); ``1e3`` and ``5e-4`` are floats (``1e3`` is refused for an integer key); only
  ``true``/``false`` are YAML booleans. A boolean key also takes yes/no, on/off, y/n (any case) and
  integers (0 is false), as OmegaConf converts them.
"""
from __future__ import annotations

import dataclasses
import functools
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
    FOLLOWS_PPO,
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
    PPOUpdateConfig,
    ResourcesConfig,
    RLlibConfig,
    check_folder_name,
    check_section,
    check_seed,
    choices,
)
from envs.games import get_game
from envs.levels import check_unseen_rule, get_split
from envs.procgen_vec import MAX_RAND_SEED


@dataclass
class Config:
    name: str = MISSING  # run directory name under runs_dir
    runs_dir: str = "runs"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # base seed: member m uses seeds[m] (default seed + m)
    engine: Engine = "native"  # who trains the reward agents
    ray: bool = True  # distribute agents as Ray Tune trials; false: no Ray (see resources.side_by_side)
    # "": Ray's lookup: the cluster named by RAY_ADDRESS, else one `ray start` runs on this machine,
    # else start Ray here for this run alone. host:port: join that cluster; "auto": the lookup, but
    # fail rather than start Ray here; "local": always start Ray here.
    ray_address: str = ""
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
    the file's own on top. Values are read as the module's docstring says (text keys keep their
    text; everything else is YAML 1.2). A key of ``FOLLOWS_PPO`` that neither the files nor the
    overrides set takes its ``ppo`` key's value. Raises ``ConfigError`` naming the key or the file.
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
            key, text = override.split("=", 1)
            layer = OmegaConf.create()
            try:
                OmegaConf.update(layer, key, _override_value(key, text))
                merged = OmegaConf.merge(merged, layer)
            except OmegaConfBaseException as e:
                if getattr(e, "full_key", None) is None:
                    e.full_key = key
                raise
        _follow_ppo(merged, layers[1:], [o.split("=", 1)[0] for o in overrides])
        if OmegaConf.is_missing(merged, "name"):
            merged.name = name or (path.stem if path is not None else "run")
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e)) from None
    validate(cfg)
    return cfg


def _follow_ppo(merged: DictConfig, files: list[DictConfig], overridden: list[str]) -> None:
    """Give each key of ``FOLLOWS_PPO`` that no file of ``files`` and no override key of
    ``overridden`` sets (itself or a section above it) the value of its ``ppo`` key in ``merged``."""
    unset = object()
    for key, source in FOLLOWS_PPO.items():
        if any(OmegaConf.select(f, key, default=unset) is not unset for f in files):
            continue
        if any(key == o or key.startswith(o + ".") for o in overridden):
            continue
        OmegaConf.update(merged, key, OmegaConf.select(merged, source))


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema for untagged values instead of YAML 1.1's:
    no octal ``010``, sexagesimal ``1:2``, ``on``/``yes`` booleans or timestamps."""

    yaml_implicit_resolvers: dict = {}  # this class's own table, filled below

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:  # 1.1's would read 010 as octal 8
        text = self.construct_scalar(node)
        return int(text, 0) if text.startswith(("0o", "0x")) else int(text, 10)


for _tag, _pattern, _first in [
    ("null", r"~|null|Null|NULL|", "~nN"),
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    ("float", r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
     "-+0123456789."),
    ("merge", r"<<", "<"),
]:
    _Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"),
                                        [*_first, ""] if _tag == "null" else list(_first))
_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _Yaml12Loader.construct_yaml_int)
_STR_TAG = "tag:yaml.org,2002:str"


def _load_yaml(text: str, hint: Any, where: str) -> Any:
    """``text`` as YAML 1.2 for a value typed ``hint`` (``Config`` for a whole file): a text key's
    scalars keep their text (``_keep_text``). None for an empty document; yaml.YAMLError if invalid."""
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _keep_text(node, hint, "", where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _keep_text(node: yaml.Node, hint: Any, key: str, where: str) -> None:
    """Re-tag the scalars of text keys (typed ``str`` or a choice, or lists of them) as strings, so
    that ``007`` stays ``'007'``; raise ``ConfigError`` for a key given twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        hints = typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else {}
        seen: set[str] = set()
        for key_node, value_node in node.value:
            child = f"{key}{key_node.value}"
            if child in seen:
                raise ConfigError(f"{where}: {child} is given twice")
            seen.add(child)
            _keep_text(value_node, hints.get(key_node.value, str if child == "base" else None), f"{child}.", where)
    elif isinstance(node, yaml.SequenceNode) and typing.get_origin(hint) is list:
        for item in node.value:
            _keep_text(item, typing.get_args(hint)[0], key, where)
    elif isinstance(node, yaml.ScalarNode) and _is_text(hint):
        node.tag = _STR_TAG


def _is_text(hint: Any) -> bool:
    """Whether a key typed ``hint`` holds text: ``str`` or a choice (``Literal`` of strings)."""
    return hint is str or (typing.get_origin(hint) is not list and choices(hint) is not None)


def _override_value(key: str, text: str) -> Any:
    """The value of the override ``key=text`` (see the module's docstring)."""
    if _is_text(_hint_of(key)) and not text.startswith(("'", '"')):
        return text  # as typed: no YAML reading at all (007, on, 1:2, null, a#b stay themselves)
    try:
        return _load_yaml(text, _hint_of(key), f"override {key}={text}")
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}={text}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                          "quote a text value, e.g. key='a: b'") from None


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """A config file as a mapping, merged onto its ``base`` file if it names one; an empty file, a
    list, a scalar, bad YAML, a key given twice, a missing base or a cycle of bases is an error (an
    empty file would otherwise start the full default run)."""
    if path.resolve() in chain:
        raise ConfigError(f"config file {str(path)!r} is its own base (through {' -> '.join(map(str, chain))})")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = _load_yaml(path.read_text(), Config, f"config file {str(path)!r}")
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, dict) or not loaded:
        what = "empty" if not loaded else f"a {type(loaded).__name__}, not a mapping"
        raise ConfigError(f"config file {str(path)!r} is {what}; it must be a mapping of sections "
                          "(env:, ppo:, ...), e.g. configs/quickstart.yaml")
    own = OmegaConf.create(loaded)
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
        near = re.search(r"Did you mean: '(.+?)'\?", msg)  # OmegaConf's guess, a name in the same section
        section = key.rpartition(".")[0] + "." if key and "." in key else ""
        guess = f" (did you mean {section}{near.group(1)}?)" if near else ""
        return (f"unknown config key {key!r}{guess}: python train.py --help lists every key with its default "
                "and allowed values (the schema: core/config.py and core/sections.py)")
    allowed = _choices_of(key or "")
    value = re.match(r"Invalid value '(.*?)', expected one of", msg)
    if allowed and value:  # the same words as check_section's, whoever caught it
        return f"{key}={value.group(1)!r} is not allowed; choose one of: {', '.join(allowed)}"
    return f"bad value for config key {key!r}: {msg}"


def _hint_of(key: str) -> Any:
    """The type of the config key ``key`` (``section.name``; ``eval.modes[1]``: the list's); None
    for an unknown key."""
    hint: Any = Config
    for part in re.sub(r"\[\d+\]$", "", key).split("."):
        hint = typing.get_type_hints(hint).get(part) if dataclasses.is_dataclass(hint) else None
        if hint is None:
            return None
    return hint


def _choices_of(key: str) -> tuple[str, ...] | None:
    """The allowed values of a choice key (``section.name``), from its ``Literal``; None otherwise."""
    return choices(_hint_of(key))


def validate(cfg: Config) -> None:
    """Every section's own rules (``check``), then the root's and those across sections; raises
    ``ConfigError`` naming the key. ``load_config`` calls it; call it after changing a ``Config``."""
    for f in dataclasses.fields(cfg):
        if dataclasses.is_dataclass(section := getattr(cfg, f.name)):
            check_section(f.name, section)
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r}: choose auto, cpu, cuda or cuda:N")
    check_folder_name("name", cfg.name, "maze_s1")  # the run's folder: never outside runs_dir
    check_seed("seed", cfg.seed)
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
    _validate_member_seeds(cfg)
    _validate_member(cfg)
    if cfg.expgen.members > cfg.ensemble.size:
        raise ConfigError(f"expgen.members must lie in [0, ensemble.size={cfg.ensemble.size}]")
    if cfg.expgen.threshold > cfg.eval_members:
        raise ConfigError(
            f"expgen.threshold={cfg.expgen.threshold} exceeds the {cfg.eval_members} members evaluated "
            "(expgen.members or ensemble.size): consensus would be impossible"
        )


def _validate_batches(cfg: Config) -> None:
    """PPO's batch arithmetic, for the members (``ppo``) and the explorer (``explorer.ppo``): a
    rollout of env.num_envs x ppo.num_steps samples cut into num_minibatches."""
    batch, n = cfg.steps_per_update, cfg.env.num_envs
    members = "ppo.minibatch=sequences cuts minibatches of whole env sequences" if cfg.ppo.minibatch == "sequences" else ""
    _validate_ppo_batches("ppo", cfg.ppo, batch, n, members)
    if cfg.ppo.minibatch == "sequences" and cfg.engine != "native":
        raise ConfigError(f"ppo.minibatch=sequences is implemented by the native engine only, not "
                          f"engine={cfg.engine}; use ppo.minibatch=samples")
    if cfg.explorer.enabled:
        _validate_ppo_batches("explorer.ppo", cfg.explorer.ppo, batch, n,
                              "the explorer's minibatches are sets of whole env sequences", " (or set explorer.enabled=false)")


def _validate_ppo_batches(path: str, ppo: PPOUpdateConfig, batch: int, n: int, sequences: str, fix: str = "") -> None:
    """The minibatch rules of the PPO update at ``path`` over a rollout of ``batch`` samples from
    ``n`` envs; ``sequences``: why its minibatches are whole env sequences ("" for single samples);
    ``fix``: another way out, appended to that error."""
    mb = ppo.num_minibatches
    if batch % mb:
        raise ConfigError(f"env.num_envs * ppo.num_steps = {batch} is not divisible by {path}.num_minibatches = {mb}")
    if sequences and n % mb:
        raise ConfigError(f"{sequences}: env.num_envs={n} must be divisible by {path}.num_minibatches={mb}{fix}")
    # Normalising advantages divides by their std over the samples: undefined (NaN) for one sample.
    normalised = {"batch": ("env.num_envs * ppo.num_steps", batch),
                  "minibatch": (f"env.num_envs * ppo.num_steps / {path}.num_minibatches", batch // mb)}
    if ppo.norm_adv in normalised and normalised[ppo.norm_adv][1] < 2:
        what, size = normalised[ppo.norm_adv]
        raise ConfigError(f"{path}.norm_adv={ppo.norm_adv} normalises advantages over {what} = {size} "
                          f"sample(s); it needs at least 2: use more env.num_envs or ppo.num_steps, fewer "
                          f"{path}.num_minibatches, or {path}.norm_adv=none")


def _validate_member_seeds(cfg: Config) -> None:
    """The seeds derived from the config's (``check_seed`` checks those) stay procgen seeds too:
    ``seed`` + member index and, with ``engine=rllib``, member seed x ``RUNNER_SEED_STRIDE`` +
    runner index. A refusal names the keys and the largest value that works."""
    size, top = cfg.ensemble.size, MAX_RAND_SEED
    if not cfg.ensemble.seeds and cfg.seed + size - 1 > top:
        raise ConfigError(f"seed={cfg.seed} gives member {size - 1} the seed {cfg.seed + size - 1} (seed + member "
                          f"index), above {top}, the largest procgen takes: use seed <= {top - size + 1} or "
                          "list ensemble.seeds")
    if cfg.engine == "rllib":
        runners, stride = cfg.rllib.num_env_runners, RUNNER_SEED_STRIDE
        highest = max(cfg.member_seeds)
        if highest * stride + runners > top:
            fix = (f"list ensemble.seeds of at most {(top - runners) // stride}" if cfg.ensemble.seeds else
                   f"use seed <= {(top - runners) // stride - size + 1}")
            raise ConfigError(f"engine=rllib seeds a member's envs and env runners from the member's seed x {stride} "
                              f"+ runner index: member seed {highest} gives {highest * stride + runners}, above "
                              f"{top}, the largest procgen takes: {fix}")


def _validate_member(cfg: Config) -> None:
    """The member algorithm's rules across sections: the engines other than ``native`` train PPO
    members with their library's PPO; a member algorithm's own section checks its rules against the
    sections it depends on (``IDAACConfig.check_members``)."""
    if cfg.engine != "native" and cfg.member.algo != "ppo":
        raise ConfigError(f"engine={cfg.engine} trains PPO members (its library's PPO); member.algo="
                          f"{cfg.member.algo} is implemented by the native engine: use engine=native or member.algo=ppo")
    if cfg.member.algo in IDAACConfig.members:
        cfg.idaac.check_members(cfg.env, cfg.steps_per_update)


# RLlib seeds env runner r of an algorithm with ``config.seed + r``: member seeds are spaced this
# far apart (training/engines/rllib.py) so that every (member, runner) pair has its own levels.
RUNNER_SEED_STRIDE = 1000


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


def config_help(cfg: Config | None = None, source: str = "") -> str:
    """Every config key as ``key = default  (allowed values or type)``, read from the schema: the
    values of a choice key are its ``Literal``'s; a key of ``FOLLOWS_PPO`` shows ``<ppo.key>``, the
    key whose value it takes unless set. With ``cfg`` (loaded from ``source``), each key shows its
    value there instead of the default. The epilog of train.py's, eval.py's and sweep.py's --help."""
    if cfg is None:
        lines = ["config keys (key=value overrides; key = default  (allowed values or type)):"]
    else:
        lines = [f"config keys (key=value overrides; key = its value in {source}  (allowed values or type)):"]

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
            if f"{prefix}{f.name}" in FOLLOWS_PPO:
                shown = f"<{FOLLOWS_PPO[prefix + f.name]}>"
            if cfg is not None:
                shown = functools.reduce(getattr, (prefix + f.name).split("."), cfg)
            lines.append(f"  {prefix}{f.name} = {shown}  ({kind(hints[f.name])})")

    walk(Config, "")
    return "\n".join(lines)


def save_config(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), path)


def _flat(cfg: Config) -> dict[str, Any]:
    """Every key's value by its dotted name (``explorer.ppo.lr``)."""
    out: dict[str, Any] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)), "")  # type: ignore[arg-type]
    return out


# What a trained run's checkpoints depend on: changing these and resuming would train a different
# experiment on top of the old one (or fail to restore). Budgets, logging, evaluation, resources
# and the controller may change between invocations.
FIXED_KEYS = ("env.game", "env.num_envs", "env.distribution_mode", "env.start_level", "env.num_levels",
              "env.use_backgrounds", "network.kind", "network.channels", "network.hidden", "network.init",
              "seed", "ensemble.seeds", "engine", "member.algo", "explorer.gamma", "explorer.gae_lambda", "explorer.k",
              "explorer.buffer_size", "explorer.pool", "explorer.seed")
FIXED_SECTIONS = ("ppo.", "idaac.", "explorer.ppo.")  # every PPO and IDAAC setting except the budget
CHANGEABLE = ("ppo.total_steps",)


def incompatible_changes(saved: Config, new: Config) -> list[str]:
    """The keys whose value ``new`` changes from the ``saved`` config of a run that has trained."""
    a, b = _flat(saved), _flat(new)
    # The discount the explorer trains with, not how it was written: 0.9 and -1 (maze's per-game
    # value from envs/games.py) are the same experiment.
    a["explorer.gamma"], b["explorer.gamma"] = saved.explorer_gamma, new.explorer_gamma
    keys = [k for k in a if k in FIXED_KEYS or (k.startswith(FIXED_SECTIONS) and k not in CHANGEABLE)]
    return [f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in keys if a[k] != b.get(k)]
