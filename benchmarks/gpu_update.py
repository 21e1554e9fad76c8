"""The members' update and the explorer's GRU replay measured alone by ``benchmarks/gpu_suite.sh``,
and its learning check.

``members_update``: the members' PPO update per ``population.forward_mode`` (vmap, loop) x
precision (fp32, tf32, bf16), with its achieved TFLOP/s and what ``forward_mode=auto`` measured
and chose per precision; ``members_compile``: ``population.compile=true`` at the fastest of those;
``gru_replay``: one replay of the explorer's update at T = ppo.num_steps; ``learning_check``: the
paper config's members trained in fp32 and in the chosen precision at once, held-out curves side
by side.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from benchmarks.gpu_context import CONFIG, Context, StageFailed, device_sync, timed


def flop_per_frame(network: Any) -> float:
    """FLOP of one member network's forward and backward pass per frame, as PPO's update computes
    them for each frame of a minibatch (the frames need no gradient), counted on a CPU batch by
    ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, two FLOP per
    multiply-add; element-wise work is not counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    frames = 4
    obs = torch.zeros((frames, 64, 64, 3), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        sum(t.float().sum() for t in network(obs)).backward()
    return counter.get_total_flops() / frames


# The members' update per forward mode and precision. Precisions as benchmarks/precision_check.py
# defines them: fp32 (IEEE everywhere), tf32 (fp32 weights, TF32 tensor cores), bf16 (the trunk in
# bf16 autocast, network.tf32=false: every other op IEEE fp32).
FORWARD_MODES = ("vmap", "loop")
UPDATE_PRECISIONS = ("fp32", "tf32", "bf16")
# Each update (and each GRU replay) is timed over this fraction of the suite's --seconds (2 s on
# the GPU: one or two updates after the warm-up one): an update is seconds of steady GPU work, and
# the matrix times six combinations in one stage.
UPDATE_WINDOW = 0.4


@contextlib.contextmanager
def update_learner(ctx: Context, overrides: list[str]) -> Iterator[Any]:
    """A fresh learner of the config's members (``overrides`` applied) in this process, its lr set
    as at update 0 and one rollout collected: ``learn`` then updates on that rollout. Closed and
    freed (the device's cache emptied) on exit."""
    import gc

    import torch

    from benchmarks.full_run import job_threads
    from core.runtime import Runtime
    from launch.jobs import Job, build_learner

    cfg = ctx.config(*overrides)
    job = Job("members", tuple(range(cfg.ensemble.size)))
    torch.set_num_threads(job_threads(cfg, job))
    runtime = Runtime.from_config(cfg)
    cuda = runtime.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    learner = build_learner(cfg, job, runtime)
    try:
        learner.algorithm.set_lr(learner.lr_schedule(0))
        learner.collect()
        yield learner
    finally:
        learner.close()
        del learner
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()  # the next learner starts from an empty cache


def time_learn(ctx: Context, learner: Any) -> dict[str, Any]:
    """``learner.learn`` timed (``timed``: one warm-up update, then updates on the same rollout
    for ``UPDATE_WINDOW`` x --seconds, once at least), with the device's peak memory meanwhile."""
    import torch

    cuda = learner.runtime.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # this mode's own peak, not the learner's earlier one
    times = timed(learner.learn, ctx.seconds * UPDATE_WINDOW, device_sync(learner.runtime.device))
    return {"runtime": learner.runtime.describe(), "update_s": sum(times) / len(times), "updates": len(times),
            "update_s_each": times, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def members_update(ctx: Context) -> None:
    """The members' PPO update alone (``learn``: GAE, then ppo.epochs x ppo.num_minibatches
    minibatch steps for the whole population), per precision one fresh learner
    (``update_learner``) built with ``population.forward_mode=auto``, so that on CUDA it measures
    both modes at its start as a training job does (``forward_mode_auto``: its times and choice
    per precision), then timed in each forward mode in turn (``time_learn``); a combination that
    runs out of device memory is recorded and the others still measured. Achieved TFLOP/s = FLOP
    per update / seconds per update, FLOP per update = ``flop_per_frame`` x members x frames per
    update (env.num_envs x ppo.num_steps) x ppo.epochs (configs/maze.yaml: 180.1 MFLOP x 10 x
    16,384 x 3 = 88.5 TFLOP)."""
    import torch

    from agents.networks import NetworkSpec
    from benchmarks.precision_check import PRECISION_OVERRIDES

    base = ctx.config()
    if base.member.algo != "ppo":
        raise StageFailed(f"the FLOP count assumes PPO members; {CONFIG.name} has member.algo={base.member.algo}")
    members = base.ensemble.size
    frames = members * base.steps_per_update * base.ppo.epochs  # member-frames through forward and backward
    per_frame = flop_per_frame(NetworkSpec.from_config(base.network).build())  # a PPO member's network
    flop = per_frame * frames  # per update
    ctx.save(flop_per_frame=per_frame, flop_per_update=flop,
             flop_formula=f"flop_per_frame x members x env.num_envs x ppo.num_steps x ppo.epochs = {per_frame:.4g} "
                          f"x {members} x {base.env.num_envs} x {base.ppo.num_steps} x {base.ppo.epochs}")
    results: dict[str, Any] = {f"{m}/{p}": {"forward_mode": m, "precision": p,
                                            "overrides": [f"population.forward_mode={m}", *PRECISION_OVERRIDES[p]]}
                               for m in FORWARD_MODES for p in UPDATE_PRECISIONS}
    auto: dict[str, Any] = {}

    def out_of_memory(keys: list[str], e: Exception) -> None:
        for key in keys:
            results[key]["error"] = f"OutOfMemoryError: {str(e).splitlines()[0]}"
            print(f"members' update, {key}: {results[key]['error']}", flush=True)
        torch.cuda.empty_cache()
        ctx.save(updates=results)

    for precision in UPDATE_PRECISIONS:
        keys = [f"{m}/{precision}" for m in FORWARD_MODES]
        try:
            with update_learner(ctx, ["population.forward_mode=auto", *PRECISION_OVERRIDES[precision]]) as learner:
                # "auto" left as it was: not measured here (a CPU, or one member), the device's default
                auto[precision] = {"times": dict(learner.forward_mode_times), "chosen": learner.pop.forward_mode}
                ctx.save(forward_mode_auto=auto)
                for mode, key in zip(FORWARD_MODES, keys):
                    learner.pop.forward_mode = mode
                    entry = results[key]
                    try:
                        entry.update(time_learn(ctx, learner))
                    except torch.cuda.OutOfMemoryError as e:
                        out_of_memory([key], e)
                        continue
                    entry["tflops"] = flop / entry["update_s"] / 1e12
                    ctx.save(updates=results)
                    print(f"members' update, {mode:<4} {precision:<4}: {entry['update_s']:.3f} s "
                          f"({entry['updates']} timed), {entry['tflops']:.3g} TFLOP/s ({entry['runtime']})", flush=True)
        except torch.cuda.OutOfMemoryError as e:
            out_of_memory([k for k in keys if "update_s" not in results[k] and "error" not in results[k]], e)
    done = {k: r for k, r in results.items() if "update_s" in r}
    fastest = min(done, key=lambda k: done[k]["update_s"]) if done else None
    iteration = ctx.previous("members").get("members", {}).get("breakdown")
    ctx.save(fastest=fastest, summary={
        "members_update_s": {k: r["update_s"] for k, r in done.items()},
        "members_update_tflops": {k: r["tflops"] for k, r in done.items()},
        "members_update_tflop": flop / 1e12, "members_update_fastest": fastest,
        "members_update_forward_mode_auto": {p: a["chosen"] for p, a in auto.items()},
        "members_update_share_of_iteration": iteration["update"] / iteration["total"] if iteration else None})
    failed = [k for k, r in results.items() if "error" in r]
    if failed:
        raise StageFailed(f"out of device memory: {', '.join(failed)} (the others are measured)")


def members_compile(ctx: Context) -> None:
    """The members' update with ``population.compile=true`` at the fastest combination of
    ``members_update`` (its forward mode and precision): the first update, which compiles
    (``compile_s``: tracing, code generation, the compiled update), then timed as there
    (``time_learn``), against the same combination eager (``compiled_vs_eager``: eager seconds
    over compiled seconds per update)."""
    import torch
    import torch._dynamo

    from benchmarks.precision_check import PRECISION_OVERRIDES

    matrix = ctx.previous("members_update")
    fastest = matrix.get("fastest")
    if fastest is None:
        raise StageFailed("members_update measured no combination to compile")
    eager = matrix["updates"][fastest]
    mode, precision = eager["forward_mode"], eager["precision"]
    overrides = [f"population.forward_mode={mode}", *PRECISION_OVERRIDES[precision], "population.compile=true"]
    ctx.save(combination=fastest, overrides=overrides)
    torch._dynamo.utils.counters.clear()
    with update_learner(ctx, overrides) as learner:
        sync = device_sync(learner.runtime.device)
        sync()
        begin = time.perf_counter()
        learner.learn()
        sync()
        compile_s = time.perf_counter() - begin
        ctx.save(compile_s=compile_s)
        print(f"members' update, {mode} {precision}, population.compile=true: first update (compiling) "
              f"{compile_s:.1f} s", flush=True)
        timing = time_learn(ctx, learner)
    stats = torch._dynamo.utils.counters["stats"]
    speedup = eager["update_s"] / timing["update_s"]
    ctx.save(**timing, eager_update_s=eager["update_s"], compiled_vs_eager=speedup,
             graph_breaks=sum(torch._dynamo.utils.counters["graph_break"].values()),
             unique_graphs=stats.get("unique_graphs", 0),
             summary={"members_compile": {"combination": fastest, "compile_s": compile_s, "update_s": timing["update_s"],
                                          "compiled_vs_eager": speedup}})
    print(f"members' update, {mode} {precision}, compiled: {timing['update_s']:.3f} s ({timing['updates']} timed), "
          f"{speedup:.2f}x eager ({eager['update_s']:.3f} s)", flush=True)


def gru_replay(ctx: Context) -> None:
    """One replay of the explorer's update at T = ppo.num_steps (512 in configs/maze.yaml): a minibatch
    of whole sequences (env.num_envs / explorer.ppo.num_minibatches of them), forward and backward, in
    the config's precision and TF32 (the trunk in bf16 where ``precision=auto`` picks it; the GRU
    in fp32 always): the GRU alone (``networks.gru_sequence``, episode starts as a mask), torch's
    multi-step GRU at the same sizes without resets (cuDNN's fused kernels on CUDA: what a fused call
    would cost), and the whole network (trunk over all T x B frames, GRU, heads). Per update the
    explorer replays explorer.ppo.epochs x num_minibatches of them."""
    import torch

    from agents.networks import NetworkSpec, gru_sequence
    from benchmarks.full_run import job_threads
    from core.runtime import Runtime
    from launch.jobs import Job

    cfg = ctx.config()
    runtime = Runtime.from_config(cfg)
    device, sync = runtime.device, device_sync(runtime.device)
    torch.set_num_threads(job_threads(cfg, Job("explorer")))
    steps, ppo = cfg.ppo.num_steps, cfg.explorer.ppo
    sequences = cfg.env.num_envs // ppo.num_minibatches
    net = NetworkSpec.from_config(cfg.network, recurrent=True).build(runtime.bf16).to(device)
    hidden = net.spec.hidden
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, sequences, hidden, generator=gen).to(device).requires_grad_()
    state = torch.zeros(sequences, hidden, device=device)
    starts = (torch.rand(steps, sequences, generator=gen) < 0.01).float().to(device)  # the cost is the same for any
    obs = torch.randint(0, 256, (steps, sequences, 64, 64, 3), generator=gen, dtype=torch.uint8).to(device)
    fused = torch.nn.GRU(hidden, hidden).to(device)
    g = net.gru

    def gru_alone() -> None:
        x.grad = None
        net.zero_grad(set_to_none=True)
        out, _ = gru_sequence(x, state, starts, [g.weight_ih, g.weight_hh, g.bias_ih, g.bias_hh])
        out.sum().backward()

    def torch_gru() -> None:
        x.grad = None
        fused.zero_grad(set_to_none=True)
        out, _ = fused(x, state[None])
        out.sum().backward()

    def whole() -> None:
        net.zero_grad(set_to_none=True)
        out = net(obs, state, starts)
        (out.logits.sum() + out.values.sum()).backward()

    replays = ppo.epochs * ppo.num_minibatches
    ctx.save(steps=steps, sequences=sequences, hidden=hidden, replays_per_update=replays, runtime=runtime.describe())
    seconds = {}
    for name, fn in (("gru_sequence", gru_alone), ("torch_gru", torch_gru), ("network", whole)):
        times = timed(fn, ctx.seconds * UPDATE_WINDOW, sync)
        seconds[name] = sum(times) / len(times)
        ctx.save(replay_s=seconds, calls={**ctx.result.get("calls", {}), name: len(times)})
        print(f"one replay at T={steps}, {sequences} sequences, forward and backward: {name} "
              f"{1000 * seconds[name]:.1f} ms ({len(times)} timed)", flush=True)
    update = ctx.previous("explorer").get("explorer", {}).get("breakdown", {}).get("update")
    gru_per_update = replays * seconds["gru_sequence"]
    ctx.save(gru_per_update_s=gru_per_update, summary={
        "gru_replay_ms": {k: 1000 * v for k, v in seconds.items()},
        "gru_share_of_explorer_update": gru_per_update / update if update else None})


# The learning check: members only (the explorer does not change how members learn: it only plays at
# evaluation), the paper config otherwise. GPU: 4 members x 8 updates (131,072 steps each), held-out
# curves every 4 updates on 16 episodes per split (3 points), both runs at once on the one GPU:
# about a minute and a half, a check that the chosen precision trains like fp32 from the same
# seeds, not a learning curve. Dry run: DRY's tiny members, 4 updates, a point every 2 updates on
# one episode.
LEARNING = ["explorer.enabled=false", "logging.eval_splits=[train,test]"]
LEARNING_GPU = ["ensemble.size=4", "ppo.total_steps=131072", "logging.eval_interval=4", "logging.eval_episodes=16"]
LEARNING_DRY = ["ppo.total_steps=256", "logging.eval_interval=2", "logging.eval_episodes=1"]


def chosen_precision(ctx: Context) -> tuple[str, str]:
    """The precision the learning check trains against fp32, and why: ``--precision``, else the one
    of tf32 and bf16 whose members' update was fastest (members_update), else bf16."""
    given = ctx.suite.get("learning_precision")
    if given:
        return given, "--precision"
    best: dict[str, float] = {}  # each precision's fastest update over the forward modes
    for r in ctx.previous("members_update").get("updates", {}).values():
        if r["precision"] != "fp32" and "update_s" in r:
            best[r["precision"]] = min(r["update_s"], best.get(r["precision"], float("inf")))
    if not best:
        return "bf16", "the default: members_update measured nothing"
    name = min(best, key=best.get)
    return name, f"the faster members' update in members_update ({', '.join(f'{p} {s:.3f} s' for p, s in best.items())})"


def learning_run(cfg: Any) -> dict[str, Any]:
    """Train ``cfg``'s run as train.py does (launch.run.train_run), with its job's torch threads."""
    import torch

    from benchmarks.full_run import job_threads
    from launch.jobs import plan
    from launch.run import train_run

    torch.set_num_threads(job_threads(cfg, plan(cfg)[0]))
    return train_run(cfg)


def learning_check(ctx: Context) -> None:
    """The paper config trained in fp32 and in the chosen precision (``chosen_precision``), same
    seeds, both at once on the device (forked like the stages, or spawned where the suite could not
    fork; a dry run trains them one after the other: two runs and their held-out evaluation threads
    would oversubscribe a 2-core CPU), each with held-out evaluation on train and test levels under
    the config's logging.eval_overlap; then their held-out curves side
    by side, from the members' TensorBoard: per evaluation step each member's return under both
    precisions and the paired differences (chosen - fp32, member by member: same seed)."""
    import multiprocessing

    import numpy as np
    import torch

    from benchmarks.curves import scalars
    from benchmarks.precision_check import PRECISION_OVERRIDES

    chosen, why = chosen_precision(ctx)
    precisions = ("fp32", chosen)
    sizes = LEARNING_DRY if ctx.dry else LEARNING_GPU
    overrides = {p: [*LEARNING, *sizes, *PRECISION_OVERRIDES[p], f"name=learning_{p}"] for p in precisions}
    cfgs = {p: ctx.config(*o) for p, o in overrides.items()}
    forked = (ctx.suite.get("preload") or {}).get("stages") == "forked" and not torch.cuda.is_initialized()
    ctx.save(precision=chosen, chosen_by=why, overrides=overrides, seeds=cfgs["fp32"].member_seeds,
             start="forked" if forked else "spawned")
    print(f"learning check: fp32 against {chosen} ({why}), members {cfgs['fp32'].member_seeds}, "
          f"{cfgs['fp32'].final_step()} steps each", flush=True)
    with multiprocessing.get_context("fork" if forked else "spawn").Pool(1 if ctx.dry else len(cfgs)) as pool:
        pending = {p: pool.apply_async(learning_run, (cfg,)) for p, cfg in cfgs.items()}
        runs = {p: r.get() for p, r in pending.items()}
    ctx.save(runs={p: {"wall_s": r["wall_s"], "steps": [a["steps"] for a in r["agents"]]} for p, r in runs.items()})
    members = range(cfgs["fp32"].ensemble.size)
    curves, final = {}, {}
    for split in cfgs["fp32"].logging.eval_splits:
        tag = f"eval/{split}_return"
        points = {p: [dict(scalars(cfgs[p].layout.member(m).tb).get(tag, [])) for m in members] for p in precisions}
        steps = sorted(set.intersection(*(set(s) for p in precisions for s in points[p])))
        if not steps:
            raise StageFailed(f"no held-out {split} curve in both runs' TensorBoard ({tag})")
        rows = []
        for step in steps:
            values = {p: [points[p][m][step] for m in members] for p in precisions}
            differences = np.subtract(values[chosen], values["fp32"])
            rows.append({"step": step, **{p: float(np.mean(values[p])) for p in precisions},
                         "difference": float(differences.mean()),
                         "difference_sd": float(differences.std(ddof=1)) if len(differences) > 1 else None,
                         **{f"{p}_members": values[p] for p in precisions}})
        curves[split] = rows
        final[split] = {k: rows[-1][k] for k in ("step", *precisions, "difference", "difference_sd")}
        print(f"held-out {split} return (mean of {len(members)} members; {chosen} - fp32, paired by seed, "
              "and its sd over seeds):", flush=True)
        for r in rows:
            sd = "no spread: one seed" if r["difference_sd"] is None else f"sd {r['difference_sd']:.2f}"
            print(f"  step {r['step']:>9,}: fp32 {r['fp32']:6.2f}  {chosen} {r[chosen]:6.2f}  "
                  f"difference {r['difference']:+.2f} ({sd})", flush=True)
    ctx.save(curves=curves, summary={"learning_check": {"precision": chosen, "seeds": len(members), "final": final}})
