"""Placement (launch/placement.py) and a Ray cluster simulated on this machine: jobs land where the
placement says, all that fit run at once, and a worker node that dies mid-run loses nothing.

The cluster (``ray.cluster_utils.Cluster``) has a head without resources and two worker nodes
that declare one logical GPU each: Ray schedules by them and hands the trials GPU ids, while the
jobs train on the CPU (``device=cpu``).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from agents.networks import NetworkSpec
from core.checkpoint import load_latest
from core.config import ConfigError, load_config
from core.run_layout import AgentDir
from launch.jobs import Job, plan
from launch.placement import gpu_round_robin, job_cpus, job_memory_gib, place, saved_bytes_per_sample
from tests import faults
from tests.faults import Fault
from tests.helpers import QUICKSTART, SMALL, logged_steps, make_small_cfg

ROOT = Path(__file__).resolve().parents[1]
MAZE = ROOT / "configs" / "maze.yaml"
IDAAC = ROOT / "configs" / "maze_idaac.yaml"
H100_GIB = 79.1  # what torch reports for an 80 GB H100


def shares(cfg, gpus: float, memory: float | None = None) -> dict[str, float]:
    jobs = [(cfg, j) for j in plan(cfg)]
    return {j.name: r.gpus for (_, j), r in zip(jobs, place(jobs, gpus, memory))}


# ---- GPU shares -----------------------------------------------------------------------------------


def test_whole_gpus_when_there_are_as_many_gpus_as_jobs():
    cfg = load_config(MAZE, ["population.size=5"])  # 2 shards + the explorer
    assert shares(cfg, 3) == {"members_0-4": 1.0, "members_5-9": 1.0, "explorer": 1.0}
    assert shares(cfg, 8) == {"members_0-4": 1.0, "members_5-9": 1.0, "explorer": 1.0}


def test_fewer_gpus_than_jobs_pack_and_the_explorer_keeps_a_whole_gpu_where_all_still_fit():
    """population.size=1 on 8 GPUs: 11 jobs. ceil(11/8) = 2 jobs per GPU, so shares of 1/2: the
    10 members fill 5 GPUs, which leaves a whole GPU for the explorer (the old even split, 8/11 =
    0.727 each, ran 8 and left 3 waiting)."""
    cfg = load_config(MAZE, ["population.size=1"])
    got = shares(cfg, 8)
    assert got == {**{f"member_{m}": 0.5 for m in range(10)}, "explorer": 1.0}
    # 2 GPUs: ceil(11/2) = 6 per GPU; a whole GPU for the explorer would leave 10 x 1/6 on one.
    assert set(shares(cfg, 2).values()) == {0.1666}


def test_memory_raises_a_share_and_the_others_shrink_to_fit_beside_it():
    """configs/maze.yaml on one 80 GB GPU: the population of 10 needs ~55.4 GiB of the 71.2 GiB
    usable (0.7784 of the GPU, rounded up to Ray's 1e-4); the explorer then takes 1/5 (the largest
    1/k that fits beside it), not 1/2, and both run at once."""
    cfg = load_config(MAZE)
    assert shares(cfg, 1) == {"members_0-9": 0.5, "explorer": 0.5}  # memory unknown
    got = shares(cfg, 1, H100_GIB)
    usable = 0.9 * H100_GIB
    assert got["members_0-9"] == pytest.approx(55.41 / usable, abs=2e-4)
    assert got["explorer"] == 0.2
    assert sum(got.values()) <= 1


def test_shares_that_cannot_fit_a_gpus_memory_are_refused_before_any_work():
    cfg = load_config(MAZE, ["resources.shard_gpus=0.5"])  # two populations of 10 on one GPU
    with pytest.raises(ConfigError, match=r"members_0-9 needs about 55\.4 GiB.*shard_gpus=0.5, 2 such jobs.*at least 0.778"):
        shares(cfg, 4, H100_GIB)
    cfg = load_config(IDAAC)  # 10 IDAAC members in one job: ~108 GiB (a second policy pass for the invariance loss)
    with pytest.raises(ConfigError, match=r"members_0-9 needs about 10\d\.\d GiB.*more than the 71\.2 GiB usable"):
        shares(cfg, 8, H100_GIB)
    assert shares(load_config(IDAAC, ["population.size=5"]), 8, H100_GIB)["members_0-4"] == 1.0


def test_more_than_one_gpu_per_job_is_refused():
    for key in ("shard_gpus", "explorer_gpus"):
        with pytest.raises(ConfigError, match=rf"resources.{key}=2, but a job trains on one device"):
            load_config(MAZE, [f"resources.{key}=2"])
    assert load_config(MAZE, ["resources.shard_gpus=1"]).resources.shard_gpus == 1.0


# ---- CPUs -----------------------------------------------------------------------------------------


def test_cpu_requests_count_the_env_threads(tmp_path):
    """A population steps each member's env batch in a thread of its own (procgen releases the GIL):
    with the serial pipeline those threads and torch take turns, with overlap they run together."""
    cfg = make_small_cfg(tmp_path, "ensemble.size=3", "explorer.enabled=true")
    members, explorer = plan(cfg)
    assert (job_cpus(cfg, members), job_cpus(cfg, explorer)) == (3, 1)
    cfg = make_small_cfg(tmp_path, "ensemble.size=3", "explorer.enabled=true", "env.pipeline=overlap",
                         "resources.shard_cpus=2", "env.num_threads=2")
    # The explorer steps its batches on explorer.env_threads (auto: 0 for one CPU), not env.num_threads.
    assert (job_cpus(cfg, members), job_cpus(cfg, explorer)) == (2 + 3 * 2 * 2, 1 + 2 * 1)
    jobs = [(cfg, members), (cfg, explorer)]
    assert [r.cpus for r in place(jobs, 0, node_cpus=4)] == [4, 3]  # no more than the largest node has
    twin = make_small_cfg(tmp_path, "explorer.enabled=true", "env.game=coinrun", "explorer.env_threads=3")
    assert job_cpus(twin, plan(twin)[-1]) == 2 * 3  # the agent view and its full-view twin at once


def test_without_ray_children_take_the_gpus_in_turn_explorer_first():
    jobs = [Job("members", (0, 1)), Job("members", (2, 3)), Job("members", (4,)), Job("explorer")]
    assert gpu_round_robin(jobs, ["0", "1", "2"]) == {"explorer": "0", "members_0-1": "1", "members_2-3": "2",
                                                      "member_4": "0"}
    assert gpu_round_robin(jobs, ["GPU-a"]) == dict.fromkeys(["members_0-1", "members_2-3", "member_4", "explorer"])


# ---- GPU memory -----------------------------------------------------------------------------------


def impala_saved_bytes(channels=(16, 32, 32), hidden=256) -> int:
    """What autograd keeps per frame through the IMPALA trunk in fp32, counted from the layer
    shapes: each stack's convolution input, the max-pool's input and int64 indices, and two ReLU
    outputs per residual block (each also its convolution's input); then the final ReLU's output,
    its flattened copy (the frame is channels-last) for the Linear, and the Linear's ReLU."""
    total, c_in, size = 0, 3, 64
    for c in channels:
        half = (size + 1) // 2
        total += 4 * c_in * size * size + 4 * c * size * size + 8 * c * half * half + 2 * 2 * 4 * c * half * half
        c_in, size = c, half
    return total + 2 * 4 * c_in * size * size + 4 * hidden


def test_saved_activations_are_those_of_the_layer_shapes():
    cfg = load_config(MAZE)
    assert saved_bytes_per_sample(NetworkSpec.from_config(cfg.network), False) == impala_saved_bytes()


def test_memory_estimate_reproduces_the_h200_peaks_it_was_fitted_to():
    """The two constants of the estimate were fitted to these two peaks (README, one H200,
    configs/maze.yaml): a change to the networks or the rollout shapes shows here."""
    cfg = load_config(MAZE)
    members, explorer = plan(cfg)
    assert job_memory_gib(cfg, members) == pytest.approx(55.5, abs=0.15)
    assert job_memory_gib(cfg, explorer) == pytest.approx(6.9, abs=0.15)


# ---- a cluster on this machine --------------------------------------------------------------------


STEP = 8 * 16
CLUSTER = ["ray=true", "device=cpu", "env.num_envs=8", "ppo.num_steps=16", "ppo.num_minibatches=2",
           "ensemble.size=2", "population.size=1", "explorer.enabled=true", "ppo.total_steps=512",
           "explorer.total_steps=512", "logging.checkpoint_interval=1", "resources.max_failures=2"]


@pytest.fixture
def cluster(tmp_path):
    """A head without resources and two worker nodes of 2 CPUs and one logical GPU each. The
    nodes' processes inherit the fault environment (tests/faults.py) of the test's spec file."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    spec = tmp_path / "fault.json"
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", **faults.environment(spec)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    workers = [c.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield c, workers, spec
    finally:
        ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def raylet_of(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow  # a Ray cluster
def test_jobs_land_as_placed_all_at_once_and_resume_when_a_node_dies(cluster, tmp_path):
    """One run, 3 jobs (2 members, the explorer) on 2 GPUs: the placement gives the explorer a
    whole GPU and the members half of the other, so all three train at once: each holds after its
    update 1 (a checkpoint each), and all three are seen holding together, the explorer alone on
    its node. Then the members' node dies and the explorer's process is killed: Tune restarts the
    three jobs on the surviving node, they resume from their update-1 checkpoints, and every agent
    ends with every step logged once and the weights of an uninterrupted run (trained without
    Ray, side by side). Tune's state lives on a storage path apart from the run directory, as on a cluster."""
    from launch.sweep import expand, train

    c, workers, spec = cluster
    shared = tmp_path / "shared"  # what a cluster's nodes would mount
    faults.arm(spec, Fault("hold", after_update=1))
    overrides = {o.split("=", 1)[0]: o for o in [*SMALL, *CLUSTER, f"runs_dir={shared / 'runs'}", "name=c"]}
    sweep = expand([str(QUICKSTART)], list(overrides.values()), storage=str(shared / "tune"))
    cfg = sweep.runs[0].cfg
    agents = ["member_0", "member_1", "explorer"]
    events: dict[str, object] = {}

    def watch() -> None:
        """Wait for all three to hold, note where they run, then kill the members' node and the
        explorer's process. On any failure, kill every held process so that training ends."""
        try:
            deadline = time.monotonic() + 900  # bounds a failure only
            while not all(faults.held_file(spec, a).exists() for a in agents):
                assert time.monotonic() < deadline, "the three jobs never held together"
                time.sleep(0.2)
            pids = {a: int(faults.held_file(spec, a).read_text()) for a in agents}
            raylets = {raylet_of(w): w for w in workers}
            events["nodes"] = {a: raylets[parent_of(pid)].unique_id for a, pid in pids.items()}
            spec.unlink()  # disarmed: the restarted jobs train to the end
            members_node = raylets[parent_of(pids["member_0"])]
            events["killed"] = members_node.unique_id
            c.remove_node(members_node)
            os.kill(pids["explorer"], signal.SIGKILL)
        except BaseException as e:  # surfaced by the test below
            events["error"] = e
            for pid in faults.recorded_pids(spec):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    train(sweep)
    watcher.join()
    assert "error" not in events, events.get("error")
    nodes = events["nodes"]
    assert nodes["member_0"] == nodes["member_1"] != nodes["explorer"]  # explorer alone on its GPU
    survivor = next(w.unique_id for w in workers if w.unique_id != events["killed"])
    assert survivor == nodes["explorer"]

    # Without Ray, side by side: each job in a process of its own with one torch thread, as in a trial
    # (the thread count changes how a CPU sums, so in this process the weights would differ).
    reference = make_small_cfg(tmp_path / "uninterrupted", *CLUSTER, "ray=false", "resources.side_by_side=true",
                               name="c")
    from launch.run import train_run

    train_run(reference)
    for agent in agents:
        got, want = (load_latest(run.layout.root / agent / "checkpoints") for run in (cfg, reference))
        assert got["step"] == want["step"] == 512
        assert got["model"].keys() == want["model"].keys()
        assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"]), agent
        assert logged_steps(AgentDir(cfg.layout.root / agent, None)) == list(range(STEP, 513, STEP)), agent
    summary = json.loads(cfg.layout.summary.read_text())
    assert {a["agent"]: a["steps"] for a in summary["agents"]} == dict.fromkeys(agents, 512)
    assert not cfg.layout.ray.exists() and list((shared / "tune").iterdir())  # Tune's state on its own path
    print(f"cluster test: trained, held, killed and resumed in {time.perf_counter() - start:.0f} s")
