"""``engine: rllib``: one reward agent trained by RLlib's PPO (new API stack) inside our training loop.

- Network: ``ExpGenRLModule`` wraps the ``ActorCritic`` that ``NetworkSpec.build()`` makes (one
  definition for every engine), initialised from the member's seed exactly as the native trainer
  does, so the exported state dict is a plain ``ActorCritic`` checkpoint that eval.py reads.
- Env: our batched procgen, one ``ProcgenVecEnv`` per env runner (envs/rllib_env.py says why),
  sampled by ``SameStepEnvRunner``: RLlib's runner with procgen's SAME_STEP autoreset, so every env
  step procgen takes is one transition of the train batch and every finished episode is logged.
- One ``iterate`` is one ``algo.train()`` (sampling and update); logging, held-out evaluation and
  checkpoints are the shared loop's (training/loop.py).

Hyper-parameters (``ppo_config``), ours -> RLlib's, and where they differ:
- ``lr``, ``adam_eps`` (via our Learner's optimiser), ``gamma``, ``gae_lambda`` -> ``lambda_``,
  ``clip_coef`` -> ``clip_param``, ``ent_coef`` -> ``entropy_coeff``, ``vf_coef`` -> ``vf_loss_coeff``,
  ``max_grad_norm`` -> ``grad_clip`` by global norm, ``epochs`` -> ``num_epochs``; ``anneal_lr`` -> a
  linear lr schedule over the env steps; no KL penalty, no reward or observation normalisation.
- Batch: ``num_steps * num_envs`` steps per update, ``num_minibatches`` minibatches per epoch.
- Advantages: RLlib always standardises them over the whole train batch = our ``norm_adv=batch``
  (``minibatch``/``off`` have no RLlib counterpart).
- Value clipping differs: ours (``clip_vloss``, CleanRL) clips the new value to within ``clip_coef``
  of the value at collection time; RLlib's ``vf_clip_param`` clips the squared error itself at an
  absolute level, which for returns of 10 (maze) would zero the gradient of every error above
  ~sqrt(clip). We therefore leave RLlib's value loss unclipped (``vf_clip_param=inf``).
- Minibatches: RLlib appends one bootstrap row per episode chunk (masked out of the loss), so an
  epoch can take one extra, partly repeated minibatch. ``anneal_lr`` follows RLlib's env-step
  counter, which is one batch ahead of our update counter (update u uses lr * (1 - (u+1)/N)).
- Metrics are those of the last minibatch (RLlib logs loss terms with window 1), not epoch means;
  ``explained_variance`` compares the new values with the value targets (ours: the old values).
- Resuming restores the learner (weights, Adam, lr schedule, counters); the envs restart from their
  seeds, so unlike the native trainer a resumed run does not replay the interrupted one exactly.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from agents.networks import ActorCritic, NetworkSpec, run_trunk
from agents.population import seeded_network
from core.config import RUNNER_SEED_STRIDE, Config, rllib_runner_layout
from core.runtime import Runtime, apply_cuda_policy, resolve_bf16
from envs.rllib_env import register_rllib_env, rllib_env_config
from training.learner import EpisodeLog, IterationResult, MemberLearner, network_payload

log = logging.getLogger("expgen")
EPISODE_RETURNS = "expgen_episode_return"
EPISODE_LENGTHS = "expgen_episode_length"
# What a SAME_STEP reset frame's info keeps: the finished episode's entries belong to that episode.
RESET_INFO_KEYS = ("level_seed",)


class SameStepEnvRunner(SingleAgentEnvRunner):
    """RLlib's single-agent env runner for a vector env that resets a finished env inside the step
    that ends it (gymnasium's SAME_STEP autoreset, as procgen does).

    RLlib 2.60's runner assumes NEXT_STEP autoreset whatever ``env.metadata`` says: after an
    episode ends it treats that env's next step as the reset, keeps only its frame and drops its
    action, reward and ``terminated`` flag. Under SAME_STEP the frame returned with ``terminated``
    is already the next episode's first one, so this runner starts the next episode on it at once
    (and makes its ``on_episode_start`` callback): the next step is recorded as that episode's first
    transition with its reward, a one-step episode ends where procgen ended it, and every env step
    counts in RLlib's step count. The action of that step comes, as before, from the policy on
    that frame (RLlib computes it before it replaces the finished episode).
    """

    def make_env(self) -> None:
        super().make_env()
        mode = self.env.unwrapped.metadata.get("autoreset_mode")
        if mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(f"{type(self).__name__} needs a SAME_STEP autoreset env, got {mode!r}")

    def _new_episode(self, env_index: int, episodes: list | None = None) -> None:
        episodes = episodes if episodes is not None else self._ongoing_episodes
        finished = episodes[env_index]
        super()._new_episode(env_index, episodes)
        # A finished episode is only ever replaced right after the step that ended it (env resets
        # start from emptied episode lists): that step's frame is the new episode's first.
        if finished is not None and finished.is_done:
            info = finished.get_infos(-1)
            episodes[env_index].add_env_reset(observation=finished.get_observations(-1),
                                              infos={k: info[k] for k in RESET_INFO_KEYS if k in info})
            self._make_on_episode_callback("on_episode_start", env_index, episodes)


class ExpGenRLModule(TorchRLModule, ValueFunctionAPI):
    """Our ``ActorCritic`` as an RLlib module: uint8 frames (B, 64, 64, 3) -> logits, values.

    ``model_config``: ``network`` (NetworkSpec fields), ``seed`` (initialisation), ``precision``
    and ``tf32`` (``network.precision``/``network.tf32``, resolved against the device the batch
    lives on, since env runners and learners may sit on different devices and processes).
    """

    net: ActorCritic

    def setup(self) -> None:
        c = self.model_config
        self.net = seeded_network(NetworkSpec.from_dict(c["network"]), c["seed"], c["init"])

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        c = self.model_config
        return run_trunk(self.net.trunk, obs, _bf16(c["precision"], c["tf32"], obs.device.type))

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.net.actor(self._features(batch[Columns.OBS]))}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # The trunk features ride along as embeddings, so the value loss reuses them.
        h = self._features(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: self.net.actor(h), Columns.EMBEDDINGS: h}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self._features(batch[Columns.OBS])
        return self.net.critic(embeddings).squeeze(-1)


@functools.lru_cache(maxsize=None)
def _bf16(precision: str, tf32: bool, device_type: str) -> bool:
    """Env runners and learners may sit on different devices: the precision follows the batch's.
    They are RLlib's processes, which never resolve a ``Runtime``: the first CUDA batch of a
    process applies the CUDA precision policy there (core/runtime.py)."""
    if device_type == "cuda":
        apply_cuda_policy(tf32)
    return resolve_bf16(precision, torch.device(device_type))


class ExpGenPPOLearner(PPOTorchLearner):
    """RLlib's PPO learner with our Adam epsilon and CleanRL's ``approx_kl``/``clipfrac`` metrics."""

    def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
        params = self.get_parameters(self._module[module_id])
        optimizer = torch.optim.Adam(params, eps=config.learner_config_dict["adam_eps"])
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params,
                                lr_or_lr_schedule=config.lr)

    def compute_loss_for_module(self, *, module_id: str, config: Any, batch: dict[str, Any],
                                fwd_out: dict[str, Any]) -> torch.Tensor:
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        with torch.no_grad():
            dist_cls = self.module[module_id].unwrapped().get_train_action_dist_cls()
            logratio = (dist_cls.from_logits(fwd_out[Columns.ACTION_DIST_INPUTS]).logp(batch[Columns.ACTIONS])
                        - batch[Columns.ACTION_LOGP])
            if Columns.LOSS_MASK in batch:  # RLlib's artificial bootstrap steps are not samples
                logratio = logratio[batch[Columns.LOSS_MASK]]
            ratio = logratio.exp()
            self.metrics.log_dict({
                "approx_kl": ((ratio - 1) - logratio).mean(),
                "clipfrac": ((ratio - 1).abs() > config.clip_param).float().mean(),
            }, key=module_id, window=1)
        return loss


def _on_episode_end(*, episode: Any, metrics_logger: Any, **kwargs: Any) -> None:
    """Log each finished episode's return and length as our env counted them: RLlib's own episode
    metrics are window means, ours are one value per episode."""
    info = episode.get_infos(-1)  # the finished env's info of the step that ended its episode
    metrics_logger.log_value(EPISODE_RETURNS, float(info["episode_return"]), reduce="item_series")
    metrics_logger.log_value(EPISODE_LENGTHS, int(info["episode_length"]), reduce="item_series")


def ppo_config(cfg: Config, member: int) -> PPOConfig:
    """Our config's PPO, network and env settings for member ``member`` as an RLlib ``PPOConfig``."""
    p, r, seed = cfg.ppo, cfg.rllib, cfg.member_seeds[member]
    batch = cfg.steps_per_update
    learners = max(r.num_learners, 1)
    runners, per_runner = rllib_runner_layout(cfg)
    spec = NetworkSpec.from_config(cfg.network)
    env_config = rllib_env_config(cfg.env.game, cfg.env.train_levels, cfg.env.distribution_mode,
                                  cfg.env.use_backgrounds, seed * RUNNER_SEED_STRIDE, cfg.env.num_threads)
    # The native schedule, expressed on RLlib's env-step counter: lr at step 0, 0 at the budget.
    lr = [[0, p.lr], [p.total_steps, 0.0]] if p.anneal_lr else p.lr
    return (
        PPOConfig()
        .environment(env=register_rllib_env(), env_config=env_config, disable_env_checking=True)
        .env_runners(env_runner_cls=SameStepEnvRunner,
                     num_env_runners=r.num_env_runners, num_envs_per_env_runner=per_runner,
                     rollout_fragment_length=p.num_steps, gym_env_vectorize_mode="vector_entry_point")
        .learners(num_learners=r.num_learners, num_gpus_per_learner=r.num_gpus_per_learner,
                  learner_class=ExpGenPPOLearner, learner_config_dict={"adam_eps": p.adam_eps})
        .rl_module(rl_module_spec=RLModuleSpec(module_class=ExpGenRLModule, model_config={
            "network": spec.to_dict(),
            "seed": seed, "precision": cfg.network.precision, "tf32": cfg.network.tf32,
            "init": cfg.network.init,
        }))
        .training(
            lr=lr, gamma=p.gamma, lambda_=p.gae_lambda, clip_param=p.clip_coef,
            vf_clip_param=math.inf, entropy_coeff=p.ent_coef, vf_loss_coeff=p.vf_coef,
            grad_clip=p.max_grad_norm, grad_clip_by="global_norm", use_kl_loss=False, kl_coeff=0.0,
            num_epochs=p.epochs, train_batch_size_per_learner=batch // learners,
            minibatch_size=batch // learners // p.num_minibatches, shuffle_batch_per_epoch=True,
        )
        .callbacks(on_episode_end=_on_episode_end)
        .debugging(seed=seed * RUNNER_SEED_STRIDE, log_level="WARN")
    )


def ensure_ray(cfg: Config) -> None:
    """Use the Ray we run in (a Tune trial), else join ``ray_address`` or start a small local Ray
    with just the CPUs and GPUs this agent's runners and learners ask for."""
    if ray.is_initialized():
        return
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, include_dashboard=False, configure_logging=False)
        return
    r = cfg.rllib
    ray.init(num_cpus=1 + r.num_env_runners + r.num_learners,
             num_gpus=math.ceil(r.num_gpus_per_learner * max(r.num_learners, 1)),
             include_dashboard=False, log_to_driver=False, configure_logging=False)


class RLlibLearner(MemberLearner):
    """Trains ensemble member ``member`` with RLlib's PPO; checkpoints in our format."""

    def __init__(self, cfg: Config, member: int, runtime: Runtime) -> None:
        super().__init__(cfg, member, runtime)
        ensure_ray(cfg)
        self.algo: Algorithm = ppo_config(cfg, member).build_algo()
        self.lr = cfg.ppo.lr

    @property
    def module(self) -> ExpGenRLModule:
        """The learner's RLModule (the one updated; env runners get its weights after each update)."""
        return self.algo.get_module(DEFAULT_MODULE_ID)

    def iterate(self) -> IterationResult:
        """One whole RLlib iteration (sampling and update), read back under our metric names."""
        result = self.algo.train()
        runners, learner = result["env_runners"], result["learners"][DEFAULT_MODULE_ID]
        episodes = EpisodeLog()
        for ours, theirs in (("charts/episodic_return", EPISODE_RETURNS), ("charts/episodic_length", EPISODE_LENGTHS)):
            # RLlib reduces a series of one item to the bare item, so both shapes arrive.
            values = np.atleast_1d(np.asarray(runners.get(theirs, []), np.float64))
            if len(values):
                episodes.add(ours, 0, values)
        self.lr = float(learner.get("default_optimizer_learning_rate", self.lr))
        names = {"policy_loss": "policy_loss", "value_loss": "vf_loss", "entropy": "entropy",
                 "approx_kl": "approx_kl", "clipfrac": "clipfrac", "explained_variance": "vf_explained_var"}
        metrics = {ours: np.array([float(learner[theirs])]) for ours, theirs in names.items() if theirs in learner}
        self.update += 1
        return IterationResult(episodes, metrics, self.lr)

    def exported_state(self) -> dict[str, torch.Tensor]:
        """The learner's network as a plain ``ActorCritic`` state dict on the CPU: the checkpoint format."""
        return {k: v.detach().cpu().clone() for k, v in self.module.net.state_dict().items()}

    def state(self, i: int) -> dict[str, Any]:
        # RLlib's own state (learner weights, Adam moments, lr schedule, counters) for resuming;
        # env runners are left out: their envs restart from the seed on resume.
        return {**network_payload(self.spec, self.exported_state()), "seed": self.seed,
                "rllib": self.algo.get_state(components=["learner_group", "metrics_logger"])}

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        self.algo.set_state(ckpt["rllib"])
        # Push the restored weights to the env runners before they sample again.
        self.algo.env_runner_group.sync_weights(from_worker_or_learner_group=self.algo.learner_group,
                                                inference_only=True)
        saved = (ckpt.get("lr_schedule") or {}).get("num_updates", self.num_updates)
        if self.cfg.ppo.anneal_lr and saved != self.num_updates:
            log.warning("%s: the budget changed from %d to %d updates; RLlib anneals the learning rate "
                        "over its own env-step counter, so it now follows lr * (1 - steps / %d) from "
                        "here, not the native engines' continuation from the last rate used",
                        self.agents[0].name, saved, self.num_updates, self.cfg.ppo.total_steps)

    def close(self) -> None:
        self.algo.stop()
