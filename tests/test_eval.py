"""Tests of evaluation (evaluation/evaluate.py, evaluation/report.py, eval.py; videos end to end).

End to end on a tiny run directory: three members trained for one update and an untrained explorer
checkpoint, on bigfish (random-ish agents finish its episodes in ~150 steps, against 500 in maze)
whose threshold (8 of 10 -> 3 of 3) makes ExpGen explore. Small unit tests cover the pieces that
need no environment.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml

import compare as compare_cli
import eval as eval_cli
from agents.acting import ActionPicker, PopulationActor
from agents.networks import NetworkSpec
from agents.population import Population
from core.checkpoint import load_latest, save_checkpoint
from core.config import load_config
from core.run_layout import RunLayout
from evaluation.episodes import episode_slots
from evaluation.evaluate import evaluate_run
from evaluation.policies import ExpGenTally
from evaluation.records import COLUMNS, EPISODES_CSV, read_episode_table
from evaluation.report import markdown_table, write_report
from evaluation.runs import compare_runs
from evaluation.statistics import iqm, paired_difference
from launch.run import train_run
from tests.helpers import DEFAULT_LEVELS
from training.learner import network_payload

EPISODES = 8
DEVICE = os.environ.get("EXPGEN_TEST_DEVICE", "cpu")  # e.g. cuda, to check evaluation on a GPU
EVAL_ARGS = ["--episodes", str(EPISODES), "--device", DEVICE, "eval.num_envs=8"]
MODES = ("member", "vote", "explorer", "expgen")


pytestmark = pytest.mark.usefixtures("one_thread")
# The tests on the trained run (``run_dir``: a training run, then eval.py and compare.py on it) are
# marked slow; the unit tests, which need no run, are not.


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 members after one PPO update, plus an untrained recurrent explorer."""
    tmp = tmp_path_factory.mktemp("runs")
    cfg = load_config("configs/quickstart.yaml", [
        f"runs_dir={tmp}", "name=tiny", "env.game=bigfish", "ppo.total_steps=64", "ppo.num_steps=8",
        "env.num_envs=8", "ppo.num_minibatches=2", "ensemble.size=3", "logging.eval_interval=0",
        "logging.progress=false", "explorer.enabled=false", f"device={DEVICE}", "ray=false", *DEFAULT_LEVELS,
    ])
    train_run(cfg)
    spec = NetworkSpec(kind="small", recurrent=True)
    torch.manual_seed(0)
    net = spec.build()
    payload = {**network_payload(spec, net.state_dict()), "agent": "explorer"}
    save_checkpoint(cfg.layout.explorer.checkpoints, 5, payload)
    return cfg.layout.root


def copy_run(run_dir: Path, dest: Path, explorer: bool = True) -> Path:
    ignore = shutil.ignore_patterns("eval", "tb", *([] if explorer else ["explorer"]))
    return Path(shutil.copytree(run_dir, dest / run_dir.name, ignore=ignore))


@pytest.fixture(scope="module")
def cli_results(run_dir: Path) -> dict:
    """eval.py on the tiny run with every mode; its results.json."""
    assert eval_cli.main([str(run_dir), *EVAL_ARGS]) == 0
    return json.loads((run_dir / "eval" / "results.json").read_text())


# ---- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_writes_every_output(run_dir: Path, cli_results: dict) -> None:
    out = run_dir / "eval"
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tb" / "test").glob("events.out.tfevents.*"))
    assert list(cli_results["modes"]) == list(MODES)
    assert cli_results["skipped"] == {}
    assert cli_results["split"] == "test" and cli_results["levels"] == "levels [201, 401)"
    assert cli_results["episodes"] == EPISODES and cli_results["game"] == "bigfish"
    assert cli_results["checkpoints"] == {"members": [64, 64, 64], "explorer": 5, "step": 64}
    md = (out / "results.md").read_text()
    assert "levels [201, 401)" in md
    assert all(f"| {m} |" in md for m in ("member 2", "members (IQM)", "best member", "vote", "explorer", "expgen"))
    members = cli_results["modes"]["member"]["members"]
    best = max(members, key=lambda m: m["return"])
    best_line = next(line for line in md.splitlines() if line.startswith("| best member |"))
    assert f"| {best['return']:.2f} |" in best_line and f"member {best['member']}," in best_line


def check_summary(r: dict, episodes: int) -> None:
    low, high = r["return_ci"]
    assert low <= r["return"] <= high
    assert 0.0 <= r["success"] <= 1.0
    assert r["episodes"] == episodes and r["length"] >= 1


@pytest.mark.slow
def test_numbers_are_in_range(cli_results: dict) -> None:
    modes = cli_results["modes"]
    for mode in ("vote", "explorer", "expgen"):
        check_summary(modes[mode], EPISODES)
    member = modes["member"]
    check_summary(member, 3 * EPISODES)
    assert [m["member"] for m in member["members"]] == [0, 1, 2]
    for m in member["members"]:
        check_summary(m, EPISODES)
    returns = np.array([m["return"] for m in member["members"]])
    assert member["iqm"]["return"] == pytest.approx(float(iqm(returns)))
    assert member["iqm"]["return_ci"][0] <= member["iqm"]["return"] <= member["iqm"]["return_ci"][1]
    # bigfish's easy range is (1, 40).
    assert modes["vote"]["normalised"] == pytest.approx((modes["vote"]["return"] - 1) / 39)


@pytest.mark.slow
def test_expgen_statistics(cli_results: dict) -> None:
    r = cli_results["modes"]["expgen"]
    hist = np.array(r["vote_histogram"])
    assert len(hist) == cli_results["members"] + 1 and hist[0] == 0  # the anchor votes for itself
    assert hist.sum() == r["steps"] == round(r["length"] * r["episodes"])  # counted episodes' steps
    assert 0.0 <= r["explore_fraction"] <= 1.0 and 0.0 < r["agreement"] <= 1.0
    assert r["controller"]["threshold"] == 3  # bigfish's k = 8 of 10, scaled to 3 members
    # Below threshold 3 there is no consensus, and no consensus always explores.
    assert r["explore_fraction"] >= (hist[:3].sum() / hist.sum()) - 1e-9


@pytest.mark.slow
def test_same_seed_same_numbers(run_dir: Path, cli_results: dict) -> None:
    """Each mode is seeded on its own: re-running two modes reproduces their numbers exactly."""
    again = evaluate_run(run_dir, [f"eval.episodes={EPISODES}", "eval.num_envs=8", f"device={DEVICE}",
                                   "eval.modes=[member,expgen]"])
    again = json.loads(json.dumps(again))
    for mode in ("member", "expgen"):
        assert again["modes"][mode] == cli_results["modes"][mode]


@pytest.mark.slow
def test_missing_explorer_skips_its_modes(run_dir: Path, tmp_path: Path) -> None:
    bare = copy_run(run_dir, tmp_path, explorer=False)
    results = evaluate_run(bare, ["eval.modes=[vote,explorer,expgen]", "eval.episodes=2", "eval.num_envs=2",
                                  f"device={DEVICE}"])
    assert list(results["modes"]) == ["vote"] and set(results["skipped"]) == {"explorer", "expgen"}
    assert "no explorer checkpoint" in results["skipped"]["explorer"]
    assert "Skipped `explorer`" in markdown_table(results)
    # The random-explorer ablation needs no explorer.
    results = evaluate_run(bare, ["eval.modes=[explorer,expgen]", "expgen.random_explorer=true",
                                  "eval.episodes=2", "eval.num_envs=2", f"device={DEVICE}"])
    assert list(results["modes"]) == ["expgen"] and list(results["skipped"]) == ["explorer"]


def eval_folder(run: Path) -> dict[str, bytes]:
    """Every file under ``run``/eval, with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "eval").rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_request_that_can_evaluate_nothing_is_refused(run_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """--modes expgen on a run trained without an explorer: exit 2 naming what is missing and what
    the run can evaluate, and the earlier evaluation's files untouched."""
    bare = copy_run(run_dir, tmp_path, explorer=False)
    write_report(fake_results(64, 1.0), RunLayout(bare))  # an earlier evaluation
    before = eval_folder(bare)
    assert eval_cli.main([str(bare), "--modes", "expgen", "--device", DEVICE]) == 2
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and "'expgen' needs the explorer: no explorer checkpoint" in err
    assert "This run can evaluate: member, vote, expgen with expgen.random_explorer=true" in err
    assert eval_folder(bare) == before


@pytest.mark.slow
def test_another_split_without_a_name_gets_its_own_folder(run_dir: Path, tmp_path: Path) -> None:
    """--split train without --name: eval/train/, its results beside the test split's (which eval/
    keeps), compared with compare.py --name train."""
    run = copy_run(run_dir, tmp_path)
    write_report(fake_results(64, 1.0), RunLayout(run))  # the test split's evaluation
    before = eval_folder(run)
    assert eval_cli.main([str(run), "--split", "train", "--modes", "vote", "--episodes", "2", "--device", DEVICE,
                          "eval.num_envs=2"]) == 0
    assert {k: v for k, v in eval_folder(run).items() if not k.startswith("eval/train/")} == before
    train = json.loads((run / "eval" / "train" / "results.json").read_text())
    assert train["split"] == "train" and train["name"] == "train" and train["levels"] == "levels [0, 200)"
    assert tb_points(run / "eval" / "train" / "tb" / "train", "eval/vote_return") == [
        (64, pytest.approx(train["modes"]["vote"]["return"]))]
    comp = compare_runs({"x": [run]}, name="train", reps=100)
    assert comp["algorithms"][0]["mean"] == pytest.approx(train["modes"]["vote"]["return"])


@pytest.mark.slow
def test_results_of_another_split_are_never_replaced(run_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """A folder that holds another split's results.json (an --split test-full evaluation written into
    eval/ before it had its own folder, or a --name reused): refused before any work, files kept."""
    run = copy_run(run_dir, tmp_path)
    write_report(fake_results(64, 1.0, split="test-full"), RunLayout(run))
    before = eval_folder(run)
    assert eval_cli.main([str(run), "--modes", "vote", "--device", DEVICE]) == 2
    err = capsys.readouterr().err
    assert "holds an evaluation on split 'test-full'" in err and "--name test" in err
    assert eval_folder(run) == before


def with_member_checkpoint(run: Path, member: int, step: int, drop: int | None = None) -> None:
    """Give ``member`` a checkpoint at ``step`` whose policy always picks action 0 (so evaluating it
    changes the numbers), and delete its checkpoint at ``drop``: a member further trained."""
    folder = RunLayout(run).member(member).checkpoints
    ckpt = load_latest(folder)
    bias = torch.full_like(ckpt["model"]["actor.bias"], -50.0)
    bias[0] = 50.0
    ckpt["model"]["actor.bias"] = bias
    save_checkpoint(folder, step, {k: v for k, v in ckpt.items() if k not in ("format", "step")})
    if drop is not None:
        (folder / f"ckpt_{drop:012d}.pt").unlink()


@pytest.mark.slow
def test_members_are_evaluated_at_the_newest_step_they_all_have(run_dir: Path, cli_results: dict,
                                                                tmp_path: Path) -> None:
    """A member trained further (a run still training): every member at step 64, as if the newer
    checkpoint were not there, and results.json names the one passed over."""
    run = copy_run(run_dir, tmp_path)
    with_member_checkpoint(run, 0, 128)
    assert eval_cli.main([str(run), *EVAL_ARGS, "--modes", "member,vote"]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["checkpoints"] == {"members": [64, 64, 64], "explorer": 5, "step": 64, "newer": {"member_0": 128}}
    for mode in ("member", "vote"):
        assert results["modes"][mode] == cli_results["modes"][mode]  # the step-64 numbers


@pytest.mark.slow
def test_members_without_a_common_step_are_said_to_be_mixed(run_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    run = copy_run(run_dir, tmp_path)
    with_member_checkpoint(run, 0, 128, drop=64)  # more than the kept checkpoints ahead
    assert eval_cli.main([str(run), "--modes", "vote", "--episodes", "2", "--device", DEVICE, "eval.num_envs=2"]) == 0
    out = capsys.readouterr().out
    assert "warning: the members are at different checkpoint steps (member 0 at 128, member 1 at 64, member 2 at 64)" in out
    ckpts = json.loads((run / "eval" / "results.json").read_text())["checkpoints"]
    assert ckpts["members"] == [128, 64, 64] and ckpts["step"] is None
    assert "different checkpoint steps" in ckpts["warning"] and "TensorBoard point is at the newest step, 128" in ckpts["warning"]
    assert [step for step, _ in tb_points(run / "eval" / "tb" / "test", "eval/vote_return")] == [128]


@pytest.mark.slow
def test_an_unwritable_fingerprint_cache_only_warns(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """XDG_CACHE_HOME that cannot hold the level cache (here under a file, as a read-only home on a
    cluster node): the evaluation runs, with a warning, and finds the same unseen levels."""
    run = copy_run(run_dir, tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.delenv("EXPGEN_LEVEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    args = [str(run), "--modes", "vote", "--episodes", "2", "--device", DEVICE, "eval.num_envs=2"]
    with caplog.at_level(logging.WARNING, logger="expgen"):
        assert eval_cli.main(args) == 0
    assert f"cannot keep level fingerprints in {blocker / 'cache'}" in caplog.text and "EXPGEN_LEVEL_CACHE" in caplog.text
    uncached = json.loads((run / "eval" / "results.json").read_text())
    monkeypatch.undo()  # the tests' writable cache again
    assert eval_cli.main([*args, "--name", "cached"]) == 0
    cached = json.loads((run / "eval" / "cached" / "results.json").read_text())
    assert uncached["unseen"] == cached["unseen"] and uncached["modes"] == cached["modes"]


@pytest.mark.slow
def test_video_output(run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path)
    assert eval_cli.main([str(run), "--video", "1", "--modes", "vote,expgen", "--episodes", "2",
                          "--device", DEVICE, "eval.num_envs=2"]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    videos = sorted((run / "eval" / "videos").iterdir())
    assert [p.name.split("_")[0] for p in videos] == ["expgen", "vote"]
    assert all(p.suffix == ".mp4" and p.stat().st_size > 0 for p in videos)
    frames = iio.imread(videos[0], plugin="pyav")  # a real video: decodable, upscaled frames
    assert frames.ndim == 4 and frames.shape[1:] == (256, 256, 3) and len(frames) > 1
    assert sorted(results["videos"]) == [str(p.relative_to(run)) for p in videos]


@pytest.mark.slow
def test_cli_errors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert eval_cli.main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert eval_cli.main([str(empty)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    shutil.copy(run_dir / "config.yaml", empty / "config.yaml")
    assert eval_cli.main([str(empty)]) == 2
    assert "no readable checkpoint" in capsys.readouterr().err
    assert eval_cli.main([str(run_dir), "--split", "validation"]) == 2
    err = capsys.readouterr().err
    assert "eval.split" in err and "test-full" in err
    assert eval_cli.main([str(run_dir), "--modes", "member,dance"]) == 2
    assert "eval.modes" in capsys.readouterr().err
    assert eval_cli.main([str(run_dir), "expgen.threshold=4"]) == 2  # 3 members: 4 is impossible
    assert "expgen.threshold" in capsys.readouterr().err


# ---- pieces --------------------------------------------------------------------------------------


def test_tally_counts_only_counted_episodes() -> None:
    """Env 0's first episode counts, env 1's does not (its quota is met, or its level is skipped):
    the steps of episodes that do not count are left out."""
    tally = ExpGenTally(2, members=3)
    no, yes = np.array([False, False]), np.array([True, True])
    tally.step(np.array([3, 1]), np.array([False, True]), np.array([True, False]), no, no)
    tally.step(np.array([1, 1]), np.array([True, True]), np.array([False, False]), yes, np.array([True, False]))
    tally.step(np.array([2, 2]), yes, no, yes, no)  # ends that do not count: ignored
    assert tally.votes.tolist() == [0, 1, 0, 1] and tally.steps == 2
    assert tally.explore_steps == 1 and tally.consensus_steps == 1


def test_explorer_state_resets_at_episode_start() -> None:
    device = torch.device(DEVICE)
    # the explorer as eval.py loads it: a recurrent population of one
    net = Population(NetworkSpec(kind="small", recurrent=True), [0], "loop").eval().to(device)
    obs = torch.randint(0, 256, (1, 2, 64, 64, 3), dtype=torch.uint8, device=device)
    with torch.no_grad():
        actor = PopulationActor(net, 2, ActionPicker([0], device, salt=0), device)
        fresh = actor(obs)[1]
        actor.episode_ended(0, np.array([True, False]))
        later = actor(obs)[1]
    assert torch.allclose(later[0, 0], fresh[0, 0], atol=1e-6)  # env 0 restarted: memory cleared
    assert not torch.allclose(later[0, 1], fresh[0, 1])  # env 1 carries its state


@pytest.mark.slow
def test_named_evaluation_sits_beside_the_main_one(run_dir: Path, tmp_path: Path) -> None:
    """--name writes eval/<name>/ (an ablation, another split) and leaves eval/ as it was."""
    run = copy_run(run_dir, tmp_path)
    common = ["--modes", "member", "--episodes", "2", "--device", DEVICE, "eval.num_envs=2"]
    assert eval_cli.main([str(run), *common]) == 0
    main = (run / "eval" / "results.json").read_text()
    assert eval_cli.main([str(run), *common, "--split", "train", "--name", "train"]) == 0
    assert (run / "eval" / "results.json").read_text() == main
    named = json.loads((run / "eval" / "train" / "results.json").read_text())
    assert named["split"] == "train" and named["name"] == "train"
    assert list((run / "eval" / "train" / "tb" / "train").glob("events.out.tfevents.*"))
    assert eval_cli.main([str(run), *common, "--name", "../elsewhere"]) == 2
    assert not (run / "elsewhere").exists()


# ---- TensorBoard: one point per step and split, the newest ---------------------------------------


def tb_points(folder: Path, tag: str = "eval/member_return") -> list[tuple[int, float]]:
    """(step, value) of every point TensorBoard's loader reads in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["", "again"])
def test_rerun_replaces_the_tensorboard_point(run_dir: Path, tmp_path: Path, name: str) -> None:
    """Two eval.py runs on the same checkpoints with different seeds: one point, the second's."""
    run = copy_run(run_dir, tmp_path)
    common = ["--modes", "member", "--episodes", "2", "--device", DEVICE, "eval.num_envs=2",
              *(["--name", name] if name else [])]
    out = RunLayout(run).eval(name)
    returns = []
    for seed in ("1", "2"):
        assert eval_cli.main([str(run), *common, "--seed", seed]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["seed"] == int(seed)
        returns.append(results["modes"]["member"]["iqm"]["return"])
        (point,) = tb_points(out / "tb" / "test")
        assert point == (64, pytest.approx(returns[-1]))
    assert len(list((out / "tb" / "test").iterdir())) == 1  # one event file, no staging left
    assert [p.name for p in (out / "tb").iterdir()] == ["test"]


def fake_results(step: int, ret: float, split: str = "test", name: str = "") -> dict:
    """results.json of a vote-only evaluation of checkpoints at ``step`` (no episodes played)."""
    vote = {"return": ret, "return_ci": [ret - 1, ret + 1], "success": 0.5, "normalised": 0.1, "length": 9.0,
            "episodes": 4}
    return {"run": "tiny", "name": name, "game": "bigfish", "distribution_mode": "easy", "split": split,
            "levels": "levels [201, 401)", "episodes": 4, "seed": 0, "members": 1, "sample": True,
            "checkpoints": {"members": [step], "explorer": None}, "modes": {"vote": vote}, "skipped": {}}


def test_points_of_other_steps_and_splits_stay(tmp_path: Path) -> None:
    """A run evaluated, trained further and evaluated again keeps a curve: only the same step and
    split is replaced, and the curve stays in step order."""
    layout = RunLayout(tmp_path)
    tb = tmp_path / "eval" / "tb"
    write_report(fake_results(128, 3.0), layout)
    write_report(fake_results(64, 1.0), layout)
    write_report(fake_results(64, 1.0, split="train"), layout)
    assert tb_points(tb / "test", "eval/vote_return") == [(64, 1.0), (128, 3.0)]
    write_report(fake_results(64, 2.0), layout)  # the step-64 checkpoints again, another seed
    assert tb_points(tb / "test", "eval/vote_return") == [(64, 2.0), (128, 3.0)]
    assert tb_points(tb / "train", "eval/vote_return") == [(64, 1.0)]
    assert len(list((tb / "test").iterdir())) == 1


def test_older_duplicate_points_collapse_to_the_newest(tmp_path: Path) -> None:
    """A folder left with two files at one step (as eval.py wrote before): one point, the newest."""
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "eval" / "tb" / "test"
    for value in (5.0, 6.0):  # the old write: a new event file per evaluation
        with SummaryWriter(str(folder)) as writer:
            writer.add_scalar("eval/vote_return", value, 64, walltime=100 + value)
            writer.add_scalar("eval/vote_return", value, 32, walltime=100 + value)
    assert len(tb_points(folder, "eval/vote_return")) == 4
    write_report(fake_results(32, 1.0), RunLayout(tmp_path))
    assert tb_points(folder, "eval/vote_return") == [(32, 1.0), (64, 6.0)]


def test_interrupted_write_keeps_the_old_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the new events are written: the old point and results.json stay, nothing half-written."""
    from torch.utils.tensorboard import SummaryWriter

    layout = RunLayout(tmp_path)
    write_report(fake_results(64, 1.0), layout)
    before = (tmp_path / "eval" / "results.json").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SummaryWriter, "add_text", interrupted)  # after the scalars are written
    with pytest.raises(KeyboardInterrupt):
        write_report(fake_results(64, 2.0), layout)
    tb = tmp_path / "eval" / "tb"
    assert tb_points(tb / "test", "eval/vote_return") == [(64, 1.0)]
    assert [p.name for p in tb.iterdir()] == ["test"]  # the staging folder is gone
    assert (tmp_path / "eval" / "results.json").read_text() == before


# ---- per-episode records and paired differences ----------------------------------------------------


@pytest.mark.slow
def test_episode_records_are_what_was_played(run_dir: Path, cli_results: dict) -> None:
    """eval/episodes.csv: one row per counted episode of every mode and agent, whose returns average
    to the table's means, in the quota layout, every agent on the same level in the same slot."""
    table = read_episode_table(run_dir / "eval" / EPISODES_CSV)
    assert list(table.columns) == list(COLUMNS)
    modes = cli_results["modes"]
    assert table.groupby("mode", sort=False).size().to_dict() == {"member": 3 * EPISODES, "vote": EPISODES,
                                                                  "explorer": EPISODES, "expgen": EPISODES}
    means = table.groupby("agent")["return"].mean()
    for m in modes["member"]["members"]:
        assert means[f"member_{m['member']}"] == pytest.approx(m["return"])
    for mode in ("vote", "explorer", "expgen"):
        assert means[mode] == pytest.approx(modes[mode]["return"])
        assert table[table["agent"] == mode]["success"].mean() == pytest.approx(modes[mode]["success"])
    env, env_episode = episode_slots(EPISODES, cli_results["num_envs"])
    levels = None
    for _, rows in table.groupby("agent"):
        assert rows["episode"].tolist() == list(range(EPISODES))
        assert rows["env"].tolist() == env.tolist() and rows["env_episode"].tolist() == env_episode.tolist()
        levels = rows["level_seed"].tolist() if levels is None else levels
        assert rows["level_seed"].tolist() == levels  # paired: the same level in every mode and member
    expgen = table[table["mode"] == "expgen"]
    assert expgen["explore_fraction"].between(0, 1).all()
    steps = (expgen["explore_fraction"] * expgen["length"]).round()  # explored steps, per episode
    assert steps.sum() / expgen["length"].sum() == pytest.approx(modes["expgen"]["explore_fraction"])
    assert table[table["mode"] != "expgen"]["explore_fraction"].isna().all()


@pytest.mark.slow
def test_paired_differences_are_over_the_same_episodes(run_dir: Path, cli_results: dict) -> None:
    table = read_episode_table(run_dir / "eval" / EPISODES_CSV)
    returns = {agent: rows.sort_values("episode")["return"].to_numpy() for agent, rows in table.groupby("agent")}
    diffs = {d["b"]: d for d in cli_results["differences"]}
    assert list(diffs) == ["best member", "members (IQM)", "vote", "explorer"]
    best = max(cli_results["modes"]["member"]["members"], key=lambda m: m["return"])["member"]
    assert diffs["best member"]["agent"] == f"member_{best}"
    for label, others in [("best member", [f"member_{best}"]), ("members (IQM)", ["member_0", "member_1", "member_2"]),
                          ("vote", ["vote"]), ("explorer", ["explorer"])]:
        again = paired_difference(returns["expgen"], [returns[o] for o in others], cli_results["seed"])
        assert diffs[label]["return"] == again, label  # the CSV holds the exact returns
    d = diffs["explorer"]["return"]
    assert d["difference"] == pytest.approx(cli_results["modes"]["expgen"]["return"] - cli_results["modes"]["explorer"]["return"])
    md = (run_dir / "eval" / "results.md").read_text()
    assert f"- ExpGen - explorer {d['difference']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] in return" in md
    assert f"ExpGen - best member (member {best})" in md


def test_a_report_without_records_removes_an_older_file(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / EPISODES_CSV).write_text("stale\n")
    paths = write_report(fake_results(64, 1.0), layout)
    assert "episodes" not in paths and not (tmp_path / "eval" / EPISODES_CSV).exists()


# ---- runs as the unit: eval.py with several runs, compare.py -------------------------------------


def seed_run(run_dir: Path, dest: Path, name: str, explorer_seed: int) -> Path:
    """A copy of the tiny run whose explorer is another network with a decided policy (an untrained
    head's near-uniform logits let the shared sampling noise pick every action): a run with its own
    scores in the explorer and ExpGen modes (the members are shared)."""
    run = Path(shutil.copytree(run_dir, dest / name, ignore=shutil.ignore_patterns("eval", "tb", "ckpt_*")))
    spec = NetworkSpec(kind="small", recurrent=True)
    torch.manual_seed(explorer_seed)
    state = spec.build().state_dict()
    state["actor.bias"] = torch.randn(15)
    payload = {**network_payload(spec, state), "agent": "explorer"}
    save_checkpoint(run / "explorer" / "checkpoints", 5, payload)
    for m in range(3):
        shutil.copytree(run_dir / f"member_{m}" / "checkpoints", run / f"member_{m}" / "checkpoints", dirs_exist_ok=True)
    return run


RUN_ARGS = ["--modes", "vote,expgen", "--episodes", "4", "--device", DEVICE, "eval.num_envs=4"]


@pytest.fixture(scope="module")
def seed_runs(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Config a: three runs evaluated by one eval.py call; config b: two runs evaluated one by one."""
    tmp = tmp_path_factory.mktemp("seeds")
    # explorer seeds whose episodes end in ~100 steps (some decided policies survive ~1,000)
    a = [seed_run(run_dir, tmp, f"a_s{k}", seed) for k, seed in enumerate((1, 2, 3))]
    b = [seed_run(run_dir, tmp, f"b_s{k}", seed) for k, seed in enumerate((10, 12))]
    assert eval_cli.main([*map(str, a), *RUN_ARGS]) == 0
    for run in b:
        assert eval_cli.main([str(run), *RUN_ARGS]) == 0
    return {"a": a, "b": b}


def scores(runs: list[Path], mode: str) -> np.ndarray:
    return np.array([json.loads((r / "eval" / "results.json").read_text())["modes"][mode]["return"] for r in runs])


@pytest.mark.slow
def test_eval_of_several_runs_aggregates_them(seed_runs: dict, capsys: pytest.CaptureFixture) -> None:
    a = seed_runs["a"]
    assert all((r / "eval" / "results.json").is_file() and (r / "eval" / EPISODES_CSV).is_file() for r in a)
    lengths = [json.loads((r / "eval" / "results.json").read_text())["modes"]["expgen"]["length"] for r in a]
    assert len(set(lengths)) > 1  # the runs' explorers play differently
    comp = compare_runs({"a": a}, reps=1000)
    expgen = next(x for x in comp["algorithms"] if x["mode"] == "expgen")
    assert expgen["runs"] == 3 and expgen["mean"] == pytest.approx(scores(a, "expgen").mean())
    assert expgen["iqm_ci"][0] <= expgen["iqm"] <= expgen["iqm_ci"][1]
    assert [(p["x"], p["y"]) for p in comp["improvements"]] == [("expgen", "vote")]
    assert comp["games"] == ["bigfish"] and comp["metric"] == "return"


@pytest.mark.slow
def test_compare_two_configs(seed_runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b, out = seed_runs["a"], seed_runs["b"], tmp_path / "cmp"
    capsys.readouterr()
    assert compare_cli.main([*map(str, a), "--vs", *map(str, b), "--reps", "1000", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "P(X > Y)" in printed and "a: expgen" in printed and "b: expgen" in printed
    comp = json.loads((out / "results.json").read_text())
    assert list(comp["groups"]) == ["a", "b"] and comp["modes"] == ["vote", "expgen"]
    by = {x["label"]: x for x in comp["algorithms"]}
    assert by["b: expgen"]["runs"] == 2
    assert by["b: expgen"]["mean"] == pytest.approx(scores(b, "expgen").mean())
    assert sorted(by["a: expgen"]["scores"].values()) == sorted(scores(a, "expgen").tolist())
    poi = {(p["x"], p["y"]): p for p in comp["improvements"]}
    assert set(poi) == {("a: vote", "b: vote"), ("a: expgen", "b: expgen")}
    x, y = scores(a, "expgen"), scores(b, "expgen")
    by_hand = np.mean([(xi > yi) + 0.5 * (xi == yi) for xi in x for yi in y])
    assert poi[("a: expgen", "b: expgen")]["probability"] == pytest.approx(by_hand)
    assert poi[("a: vote", "b: vote")]["probability"] == 0.5  # the same members: every pair ties
    assert (out / "profiles.png").read_bytes()[:4] == b"\x89PNG" and "| a: expgen |" in (out / "results.md").read_text()
    assert len(comp["profile"]["curves"]["a: expgen"]["fraction"]) == len(comp["profile"]["taus"])


@pytest.mark.slow
def test_compare_errors_say_what_to_do(seed_runs: dict, run_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    a = [str(r) for r in seed_runs["a"]]
    bare = copy_run(run_dir, tmp_path)  # never evaluated
    assert compare_cli.main([*a, "--vs", str(bare)]) == 2
    assert "has no evaluation" in (err := capsys.readouterr().err) and "python eval.py" in err
    assert compare_cli.main([*a, "--modes", "member"]) == 2
    assert "mode 'member' was not evaluated" in capsys.readouterr().err
    assert compare_cli.main([*a, "--modes", "dance"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert compare_cli.main([*a, "--labels", "x,y"]) == 2
    assert "--labels" in capsys.readouterr().err
    other = seed_run(run_dir, tmp_path, "c_s0", 2)  # a config evaluated on its own split, train, in eval/
    saved = yaml.safe_load((other / "config.yaml").read_text())
    saved["eval"]["split"] = "train"
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    assert eval_cli.main([str(other), *RUN_ARGS, "--modes", "vote"]) == 0
    assert compare_cli.main([*a, "--vs", str(other)]) == 2
    assert "different split" in (err := capsys.readouterr().err) and "--split" in err
