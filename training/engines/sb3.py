"""``engine: sb3``: one reward agent trained by Stable-Baselines3's PPO inside our training loop.

SB3 does the rollout, GAE and PPO epochs (one ``iterate`` = one SB3 ``learn`` of one rollout); the
loop (training/loop.py) keeps everything around them: CleanRL-named TensorBoard metrics, held-out
evaluations, atomic checkpoints, resuming. The network is ours: SB3's policy runs our trunk
(``build_trunk`` + ``run_trunk``) as its features extractor and heads shaped and initialised like
``ActorCritic``'s, from the same weights a native member with the same seed starts from.
Checkpoints hold a plain ``ActorCritic`` state dict, so eval.py evaluates SB3-trained members
unchanged.

How ``ppo.*`` maps onto SB3's PPO, and where SB3's PPO differs from our native one:

- ``num_steps`` -> ``n_steps``; ``num_steps * num_envs / num_minibatches`` -> ``batch_size``
  (the config requires it to divide evenly, so SB3 never trains a short last minibatch); ``epochs`` ->
  ``n_epochs``; ``adam_eps`` -> Adam's ``eps``; ``anneal_lr`` -> a learning-rate schedule that
  decays linearly per update, as the native loop does; ``clip_coef`` -> ``clip_range``.
- ``norm_adv``: ``minibatch`` is SB3's own ``normalize_advantage``; ``batch`` (the native default)
  normalises the whole rollout's advantages once, in a callback after SB3's GAE; ``none`` disables
  both. All three therefore behave as natively.
- Value loss: SB3 minimises ``vf_coef * mean((R - v)^2)`` where we minimise ``vf_coef * 0.5 *
  mean(...)``, so SB3 receives ``vf_coef / 2`` (same gradients) and ``losses/value_loss`` is logged
  halved, comparable with native curves. With ``clip_vloss`` SB3 clips the prediction
  (``clip_range_vf = clip_coef``) and uses the clipped error only, where CleanRL takes the maximum of
  the clipped and unclipped errors: a difference SB3 offers no setting for.
- SB3 reads every minibatch's losses on the host (``.item()``), and ``approx_kl`` is the mean over
  the last epoch only; no ``grad_norm`` is reported.
"""
from __future__ import annotations

from typing import Any

# isort: off
from envs.sb3_vec_env import ProcgenSB3VecEnv  # first: it imports SB3 without gym's import banner
# isort: on

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from agents.networks import NetworkSpec, build_trunk, run_trunk
from agents.population import Population
from core.config import Config
from core.runtime import Runtime
from envs.make import make_env
from training.learner import EpisodeLog, IterationResult, MemberLearner, NonFiniteError, network_payload


class TrunkExtractor(BaseFeaturesExtractor):
    """Our trunk as SB3's features extractor: frames (B, 64, 64, 3) -> features (B, hidden)."""

    def __init__(self, observation_space: gym.spaces.Box, spec: NetworkSpec, bf16: bool = False) -> None:
        super().__init__(observation_space, features_dim=spec.hidden)
        self.trunk = build_trunk(spec)
        self.bf16 = bf16

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        # SB3 hands over a float copy of the uint8 frames (normalize_images=False: unscaled, HWC).
        # Back to uint8, so that our preprocess is the one scaling, bit for bit as in ActorCritic.
        return run_trunk(self.trunk, observations.to(torch.uint8), self.bf16)


class ExpGenSB3Policy(ActorCriticPolicy):
    """SB3's actor-critic with our network: ``TrunkExtractor`` -> actor Linear(hidden, 15) and
    critic Linear(hidden, 1) (no extra MLP), starting from ``Population(spec, [init_seed])``'s
    weights, i.e. exactly where a native member with seed ``init_seed`` starts."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Discrete,
                 lr_schedule: Schedule, spec: NetworkSpec, init_seed: int, bf16: bool = False,
                 init: str = "torch", **kwargs: Any) -> None:
        self.spec, self.init_seed, self.init = spec, init_seed, init
        super().__init__(
            observation_space, action_space, lr_schedule, net_arch=[],
            ortho_init=False,  # SB3's init (gain sqrt(2) on the trunk) is replaced by ours in _build
            normalize_images=False,  # our network scales uint8 frames itself
            features_extractor_class=TrunkExtractor,
            features_extractor_kwargs={"spec": spec, "bf16": bf16}, **kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        # In-place copies: the optimizer SB3 just built keeps pointing at these parameters.
        self.load_actor_critic_state(Population(self.spec, [self.init_seed], init=self.init).member_state_dict(0))

    def _parts(self) -> dict[str, torch.nn.Module]:
        """ActorCritic's submodule names -> the SB3 modules that play their role."""
        return {"trunk": self.features_extractor.trunk, "actor": self.action_net, "critic": self.value_net}

    def actor_critic_state(self) -> dict[str, torch.Tensor]:
        """The policy as a plain ``ActorCritic`` state dict (the checkpoint's ``model``), on the CPU."""
        return {f"{name}.{k}": v.detach().cpu().clone()
                for name, module in self._parts().items() for k, v in module.state_dict().items()}

    def load_actor_critic_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, module in self._parts().items():
            prefix = f"{name}."
            own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(own)  # strict: a missing or unexpected key of this part raises


class ChannelsLastPPO(PPO):
    """SB3's PPO without its automatic ``VecTransposeImage``: our network takes HWC frames
    directly (``preprocess`` permutes them as a free view), so a transposing copy would be waste."""

    @staticmethod
    def _wrap_env(env: VecEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        return env


class IterationCallback(BaseCallback):
    """Gathers one SB3 iteration's finished episodes and, for ``norm_adv: batch``, normalises the
    rollout's advantages once after SB3's GAE (returns are already computed by then)."""

    def __init__(self, normalise_batch: bool) -> None:
        super().__init__()
        self.normalise_batch = normalise_batch
        self.episodes = EpisodeLog()

    def _on_rollout_start(self) -> None:
        self.episodes = EpisodeLog()

    def _on_step(self) -> bool:
        done = np.flatnonzero(self.locals["dones"])
        if len(done):
            stats = [self.locals["infos"][i]["episode"] for i in done]  # written by VecMonitor
            self.episodes.add("charts/episodic_return", 0, np.array([s["r"] for s in stats]))
            self.episodes.add("charts/episodic_length", 0, np.array([s["l"] for s in stats]))
        return True

    def _on_rollout_end(self) -> None:
        if self.normalise_batch:
            buf = self.model.rollout_buffer
            # Same statistic as agents/ppo.py:normalise (unbiased std, + 1e-8).
            buf.advantages = (buf.advantages - buf.advantages.mean()) / (buf.advantages.std(ddof=1) + 1e-8)


class SB3Learner(MemberLearner):
    """Trains reward agent ``member`` (seed ``cfg.member_seeds[member]``) with SB3's PPO."""

    def __init__(self, cfg: Config, member: int, runtime: Runtime) -> None:
        super().__init__(cfg, member, runtime)
        p, n = cfg.ppo, cfg.env.num_envs
        self.env = ProcgenSB3VecEnv(make_env(cfg.env, n, "train", self.seed))
        self.monitor = VecMonitor(self.env)
        policy_kwargs = {"spec": self.spec, "init_seed": self.seed, "bf16": runtime.bf16, "init": cfg.network.init,
                         "optimizer_kwargs": {"eps": p.adam_eps}}
        self.model = ChannelsLastPPO(ExpGenSB3Policy, self.monitor, seed=self.seed, device=runtime.device,
                                     policy_kwargs=policy_kwargs, **sb3_ppo_kwargs(cfg, self._learning_rate))
        # A silent logger of our own: SB3 would otherwise build a new one on every learn() call.
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.policy: ExpGenSB3Policy = self.model.policy
        self.callback = IterationCallback(normalise_batch=p.norm_adv == "batch")

    def _learning_rate(self, _progress_remaining: float) -> float:
        """SB3's progress counter spans one learn() call (one iteration), so anneal by our update
        counter instead: the native schedule."""
        return self.lr_schedule(self.update)

    def iterate(self) -> IterationResult:
        """One whole SB3 iteration: a rollout of ``num_steps`` per env, GAE and the PPO epochs.

        ``learn`` with ``reset_num_timesteps=False`` continues from SB3's ``_last_obs`` and stops
        once ``num_timesteps`` has grown by one rollout, i.e. after exactly one collect + train.
        """
        lr = self._learning_rate(1.0)
        try:
            self.model.learn(self.steps_per_update, callback=self.callback, log_interval=None,
                             reset_num_timesteps=False)
        except ValueError as e:
            # SB3's Categorical refuses NaN logits mid-update (torch's argument validation): the
            # error the loop gives for any non-finite loss (training/loop.py), with what to do.
            if "found invalid values" not in str(e):
                raise
            self.update += 1
            raise NonFiniteError.of(self, 0, "action logits") from None
        logged = self.model.logger.name_to_value
        metrics = {
            "policy_loss": logged["train/policy_gradient_loss"],
            "value_loss": 0.5 * logged["train/value_loss"],  # CleanRL's 0.5 * MSE (see module doc)
            "entropy": -logged["train/entropy_loss"],
            "approx_kl": logged["train/approx_kl"],
            "clipfrac": logged["train/clip_fraction"],
            "explained_variance": logged["train/explained_variance"],
        }
        self.model.logger.dump(self.model.num_timesteps)  # clears the values for the next iteration
        self.update += 1
        return IterationResult(self.callback.episodes, {k: np.array([float(v)]) for k, v in metrics.items()}, lr)

    def exported_state(self) -> dict[str, torch.Tensor]:
        return self.policy.actor_critic_state()

    def state(self, i: int) -> dict[str, Any]:
        return {
            **network_payload(self.spec, self.exported_state()),
            "seed": self.seed,
            "engine": "sb3",
            "optimizer": self.policy.optimizer.state_dict(),
            # SB3 samples actions with torch's and shuffles minibatches with numpy's global generators.
            "rng": {"torch": torch.get_rng_state(), "numpy": list(np.random.get_state()),
                    "cuda": torch.cuda.get_rng_state_all() if self.runtime.device.type == "cuda" else None},
            "env": self.env.get_state(),
            "episode_starts": self.model._last_episode_starts.copy(),
            "n_updates": self.model._n_updates,
        }

    def load_state(self, i: int, ckpt: dict[str, Any]) -> None:
        self.policy.load_actor_critic_state(ckpt["model"])
        self.policy.optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(tuple(ckpt["rng"]["numpy"]))
        # SB3 samples on the policy's device: a run saved on another device type (or with another
        # number of GPUs) continues from the CPU and numpy streams only, with CUDA's as seeded.
        cuda = ckpt["rng"]["cuda"]
        if cuda is not None and self.runtime.device.type == "cuda" and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        # With _last_obs set, SB3's learn() continues these episodes instead of resetting the envs.
        self.model._last_obs = self.env.set_state(ckpt["env"])
        self.model._last_episode_starts = ckpt["episode_starts"]
        self.model.num_timesteps = ckpt["step"]
        self.model._n_updates = ckpt["n_updates"]
        # VecMonitor's running episode sums continue from ProcGen's saved ones.
        self.monitor.episode_returns = ckpt["env"]["ep_return"].astype(np.float32)
        self.monitor.episode_lengths = ckpt["env"]["ep_length"].astype(np.int32)

    def close(self) -> None:
        self.monitor.close()


def sb3_ppo_kwargs(cfg: Config, learning_rate: Schedule) -> dict[str, Any]:
    """``ppo.*`` as SB3 PPO arguments (see the module docstring for the mapping's fine print)."""
    p = cfg.ppo
    samples = cfg.steps_per_update  # config validation ensures num_minibatches divides it
    return {
        "learning_rate": learning_rate,
        "n_steps": p.num_steps,
        "batch_size": samples // p.num_minibatches,
        "n_epochs": p.epochs,
        "gamma": p.gamma,
        "gae_lambda": p.gae_lambda,
        "clip_range": p.clip_coef,
        "clip_range_vf": p.clip_coef if p.clip_vloss else None,
        "normalize_advantage": p.norm_adv == "minibatch",
        "ent_coef": p.ent_coef,
        "vf_coef": p.vf_coef / 2,  # SB3's value loss has no 0.5 factor: same gradients as ours
        "max_grad_norm": p.max_grad_norm,
    }
