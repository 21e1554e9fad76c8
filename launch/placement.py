"""What each job asks the cluster for, and where it goes: CPUs that count its env threads, GPU
shares that fill the GPUs, and an estimate of its GPU memory that keeps a packing inside a GPU.

Used by the Ray launcher (launch/ray_trials.py), by the side-by-side launcher without Ray
(``gpu_round_robin``) and by the projection of a run or sweep onto N GPUs (benchmarks/full_run.py).
Nothing here imports Ray.

**CPUs.** A job runs ``resources.shard_cpus`` (explorer: ``explorer_cpus``) torch threads, and steps
its env batches in ``env_workers`` threads (a population steps each member's batch in its own
thread; ``env.pipeline=overlap`` doubles that), each batch on ``env.num_threads`` procgen threads
(the explorer: its views' batches at once, each on ``explorer.env_threads``, whose auto fits them
into ``explorer_cpus``).
With ``env.pipeline=serial`` (the default) env stepping and the network never run at the same time,
so a job occupies ``max(torch threads, env cores)`` cores; with ``overlap`` they do, and it
occupies the sum. That is its CPU request, capped at the largest node's CPUs (a job cannot run on
more cores than one node has; it then runs its threads on those).

**GPUs** (``resources.*_gpus < 0``, auto), over every job of one Ray experiment (all the runs of a
sweep): a whole GPU per job when there are at least as many GPUs as jobs; otherwise a share of
``1/ceil(jobs/GPUs)``, and the explorer (the longest job: the paper's explorer trains 100M steps
against 25M per member) keeps a whole GPU when every job still runs at once. A job whose memory
estimate needs more than its share of a GPU's memory asks for that larger share, so that the jobs
Ray puts on one GPU fit its memory (Ray does not isolate GPU memory); the other jobs' shares then
shrink (1/k for a larger k) until all of them fit at once again, as far as their own memory
allows (``gpu_shares``); when memory leaves no way for all of them to run at once, the shares stay
at ``1/ceil(jobs/GPUs)`` (and the memory needs) and some jobs wait for others to finish. An
explicit share that is too small for the job's memory and a job that needs more than a GPU holds
are refused before any work; more than one GPU per job (a job trains on one device) is refused by
the config itself (``ResourcesConfig.check``).

**GPU memory** (``job_memory_gib``): the tensors autograd keeps for the backward pass, measured by
running the job's own network forward on the CPU (``torch.autograd.graph.saved_tensors_hooks``; for
the IMPALA trunk exactly the sizes its layer shapes give, tests/test_cluster.py) and scaled to its
minibatch, times ``BACKWARD_FACTOR`` (the backward pass's gradients and workspaces, the population's
batched copies), plus the rollout's frames and ``FIXED_GIB``. The two constants are fitted to the
two peaks (``torch.cuda.max_memory_allocated``) measured on an H200 with ``configs/maze.yaml`` in
fp32: 55.5 GiB for the population of 10 and 6.9 GiB for the explorer, which the estimate then
reproduces (55.4 and 6.9); no third measurement has tested it yet (IDAAC, bf16, other shapes). A
GPU's usable memory is ``USABLE_MEMORY`` of its total: each process also holds a CUDA context and
its allocator's cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from agents.networks import NetworkSpec
from agents.registry import algorithm_class, member_spec
from core.config import Config, ConfigError
from envs.procgen_vec import OBS_SHAPE
from launch.jobs import Job
from training.explorer_learner import env_threads, views
from training.native_learner import rollout_slices

GIB = 2**30
BACKWARD_FACTOR = 2.22  # fitted (module docstring)
FIXED_GIB = 1.46  # fitted (module docstring)
USABLE_MEMORY = 0.9
SHARE_QUANTUM = 1e-4  # Ray's resolution for fractional resources


def job_kind(job: Job) -> str:
    """``explorer`` or ``shard``: the ``resources.<kind>_cpus/gpus`` keys that set a job's request."""
    return "explorer" if job.explorer else "shard"


def env_workers(cfg: Config, job: Job) -> int:
    """Env batches a job steps at once, as its learner does (training/native_learner.py): one per
    member of a native population, one for the explorer, times the rollout's slices; one for the
    sb3 and rllib engines (rllib's env runners are bundles of their own)."""
    if not job.explorer and cfg.engine != "native":
        return 1
    return (1 if job.explorer else len(job.members)) * rollout_slices(cfg.env)


def torch_threads(cfg: Config, job: Job) -> int:
    """The torch threads a job runs: ``resources.<kind>_cpus``, at least 1."""
    r = cfg.resources
    return max(1, int(r.explorer_cpus if job.explorer else r.shard_cpus))


def job_cpus(cfg: Config, job: Job) -> float:
    """The CPUs a job occupies (module docstring): its torch threads and its env cores, at the same
    time only with ``env.pipeline=overlap``."""
    r = cfg.resources
    torch_cpus = r.explorer_cpus if job.explorer else r.shard_cpus
    if job.explorer:  # each view's batch on explorer.env_threads threads (0: the stepping thread itself)
        env_cores = env_workers(cfg, job) * views(cfg.env) * max(1, env_threads(cfg))
    else:
        env_cores = env_workers(cfg, job) * cfg.env.num_threads
    return torch_cpus + env_cores if rollout_slices(cfg.env) > 1 else max(torch_cpus, env_cores)


@lru_cache(maxsize=None)
def saved_bytes_per_sample(spec: object, bf16: bool, passes: int = 1) -> float:
    """Bytes autograd keeps for the backward pass per training sample of one agent whose network is
    ``spec`` (a ``NetworkSpec``, recurrent for the explorer, or an ``IDAACSpec``), measured on the
    CPU. ``passes``: forward passes with gradients per sample (``MemberAlgorithm.passes_per_sample``:
    IDAAC's invariance loss also runs the policy over a partner frame for every sample)."""
    net = spec.build(bf16)

    def saved_bytes(n: int) -> int:
        saved: dict[int, int] = {}  # by storage: views of one tensor count once

        def pack(t: torch.Tensor) -> torch.Tensor:
            if not isinstance(t, nn.Parameter):  # weights and optimiser state: in FIXED_GIB's fit
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        obs = torch.zeros((n,) + OBS_SHAPE, dtype=torch.uint8)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if getattr(spec, "recurrent", False):
                out = net(obs.unsqueeze(1), net.initial_state(1), torch.zeros(n, 1))
            elif hasattr(spec, "algo"):  # IDAAC/DAAC: the policy pass (the value phase comes later, alone)
                out = net(obs, torch.zeros(n, dtype=torch.long), head="policy")
            else:
                out = net(obs)
        del out
        return sum(saved.values())

    # The slope between two batch sizes: what grows with the minibatch (the CPU's convolutions
    # also keep a fixed copy of their weights).
    per_sample = (saved_bytes(4) - saved_bytes(2)) / 2
    return per_sample * passes


def job_memory_gib(cfg: Config, job: Job) -> float:
    """Estimated peak GPU memory of a job, in GiB (module docstring).

    The trunk is counted in fp32 unless ``network.precision=bf16``: ``auto`` is bf16 only on GPUs
    that multiply bf16 natively, which the estimate cannot see; fp32 is the larger.
    """
    bf16 = cfg.network.precision == "bf16"
    agents = 1 if job.explorer else len(job.members)
    samples = cfg.steps_per_update // cfg.ppo.num_minibatches  # one minibatch per agent
    if job.explorer:
        saved = saved_bytes_per_sample(NetworkSpec.from_config(cfg.network, recurrent=True), bf16)
    else:
        saved = saved_bytes_per_sample(member_spec(cfg), bf16, algorithm_class(cfg.member.algo).passes_per_sample)
    frames = cfg.steps_per_update * math.prod(OBS_SHAPE)  # uint8 rollout frames per agent
    return (BACKWARD_FACTOR * saved * samples * agents + frames * agents) / GIB + FIXED_GIB


@dataclass(frozen=True)
class Request:
    """What one job asks for: CPUs, GPUs (a fraction: a share of one GPU), its torch threads and
    its estimated GPU memory in GiB (``job_memory_gib``; 0 when it gets no GPU)."""

    cpus: float
    gpus: float
    threads: int
    memory_gib: float = 0.0

    def resources(self) -> dict[str, float]:
        """As Ray names them."""
        return {"CPU": self.cpus, "GPU": self.gpus}


def _round_down(share: float) -> float:
    return round(math.floor(share / SHARE_QUANTUM + 1e-9) * SHARE_QUANTUM, 4)


def _round_up(share: float) -> float:
    return round(math.ceil(share / SHARE_QUANTUM - 1e-9) * SHARE_QUANTUM, 4)


def place(jobs: list[tuple[Config, Job]], gpus: float, gpu_memory_gib: float | None = None,
          node_cpus: float | None = None) -> list[Request]:
    """Each job's request (module docstring), in the order of ``jobs``.

    ``jobs``: every (run config, job) of one experiment. ``gpus``: the cluster's GPUs.
    ``gpu_memory_gib``: the memory of its smallest GPU, or None when unknown (shares are then not
    checked against memory). ``node_cpus``: the CPUs of its largest node (None: no cap). Raises
    ``ConfigError`` naming the key to change.
    """
    # Shares above 1 never get here: the config refuses them (core/sections.py: ResourcesConfig).
    explicit = [cfg.resources.explorer_gpus if job.explorer else cfg.resources.shard_gpus for cfg, job in jobs]
    memory = [job_memory_gib(cfg, job) if gpus else 0.0 for cfg, job in jobs]
    usable = gpu_memory_gib * USABLE_MEMORY if gpu_memory_gib and gpus else None
    need = [0.0] * len(jobs)
    if usable:
        for (cfg, job), share, mem in zip(jobs, explicit, memory):
            if mem > usable:
                raise ConfigError(
                    f"{cfg.name}/{job.name} needs about {mem:.1f} GiB of GPU memory, more than the "
                    f"{usable:.1f} GiB usable on this cluster's GPUs ({gpu_memory_gib:.1f} GiB each): use a "
                    f"smaller population.size (fewer members per job), fewer env.num_envs or more "
                    f"ppo.num_minibatches")
            if 0 < share < _round_up(mem / usable):
                raise ConfigError(
                    f"{cfg.name}/{job.name} needs about {mem:.1f} GiB of GPU memory; with "
                    f"resources.{job_kind(job)}_gpus={share:g}, {int(1 / share)} such jobs may share one GPU "
                    f"of {usable:.1f} GiB usable and run out of memory: ask for at least "
                    f"{_round_up(mem / usable):g} (or -1, auto)")
        need = [_round_up(mem / usable) for mem in memory]
    shares = gpu_shares([job.explorer for _, job in jobs], explicit, need, gpus)
    out = []
    for (cfg, job), share, mem in zip(jobs, shares, memory):
        cpus = job_cpus(cfg, job)
        out.append(Request(cpus if node_cpus is None else min(cpus, node_cpus), share, torch_threads(cfg, job),
                           mem if share else 0.0))
    return out


def gpu_shares(explorer: list[bool], explicit: list[float], need: list[float], gpus: float) -> list[float]:
    """Each job's GPU share: ``explicit`` ones (>= 0) as given; auto ones (< 0) a whole GPU when
    there are as many GPUs as jobs, else ``1/k`` but at least the job's memory ``need`` (a fraction
    of a GPU), with ``k`` the smallest from ``ceil(jobs/GPUs)`` up whose shares add up to no more
    than the GPUs (every job at once), or ``ceil(jobs/GPUs)`` when memory allows no such ``k``; then
    explorers get a whole GPU if every job still fits at once."""
    if not gpus:
        return [max(s, 0.0) for s in explicit]
    if gpus >= len(explicit):
        return [s if s >= 0 else max(1.0, n) for s, n in zip(explicit, need)]

    def shares_at(k: int) -> list[float]:
        return [s if s >= 0 else max(_round_down(1 / k), n) for s, n in zip(explicit, need)]

    k = first = math.ceil(len(explicit) / gpus)
    # Smaller shares stop helping once every auto job is down to its memory need; if they never
    # let every job run at once, some wait anyway, and 1/ceil(jobs/GPUs) packs no tighter than needed.
    while sum(shares_at(k)) > gpus + 1e-9:
        if not any(s < 0 and n < _round_down(1 / k) for s, n in zip(explicit, need)):
            k = first
            break
        k += 1
    shares = shares_at(k)
    auto_explorers = [i for i, (e, s) in enumerate(zip(explorer, explicit)) if e and s < 0]
    if sum(shares) + sum(1 - shares[i] for i in auto_explorers) <= gpus + 1e-9:
        for i in auto_explorers:
            shares[i] = 1.0
    return shares


def gpu_round_robin(jobs: list[Job], visible: list[str]) -> dict[str, str | None]:
    """``ray=false`` on a machine with several GPUs: each job's GPU (an entry of ``visible``, the
    ids CUDA_VISIBLE_DEVICES would list), the explorer first, then the member jobs in turn; None for
    every job when there is at most one GPU (they all use the default device)."""
    if len(visible) < 2:
        return {j.name: None for j in jobs}
    ordered = sorted(jobs, key=lambda j: not j.explorer)
    return {j.name: visible[i % len(visible)] for i, j in enumerate(ordered)}
