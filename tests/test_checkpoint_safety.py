"""Checkpoints are read without running code (core/checkpoint.py): a planted file whose unpickling
would execute something is refused like a corrupt one, by the loader, by eval.py and by a resumed
train.py, which all fall back to the previous valid checkpoint; and what resuming stores beyond
tensors (numpy arrays, tuples) survives the safe format exactly."""
from __future__ import annotations

import json
import logging
import pathlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_cli
import train
from core.checkpoint import (
    FORMAT,
    CheckpointError,
    checkpoint_steps,
    decode,
    encode,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from core.run_layout import RunLayout

STEPS_PER_UPDATE = 4 * 8  # the small config: env.num_envs * ppo.num_steps
GAME = "env.game=starpilot"  # untrained agents finish its episodes within about 200 steps


pytestmark = pytest.mark.usefixtures("one_thread")


class Planted:
    """Unpickling this calls ``Path.touch(marker)``: code execution, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def plant(path: Path, marker: Path, how: str) -> None:
    """A checkpoint-shaped file (right name, right format tag) carrying the payload."""
    obj = {"format": FORMAT, "step": 0, "model": Planted(marker)}
    if how == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, about the plain-pickle file
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_planted_file_is_refused_without_running_it(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    planted = tmp_path / "ckpt_000000000096.pt"
    plant(planted, marker, how)
    # Control: the file really is dangerous when loaded the unsafe way (on a separate marker).
    control_marker = tmp_path / "control"
    control = tmp_path / "control.pt"
    plant(control, control_marker, how)
    if how == "torch.save":
        torch.load(control, weights_only=False)
    else:
        pickle.loads(control.read_bytes())
    assert control_marker.exists()

    with pytest.raises(CheckpointError) as e:
        load_checkpoint(planted)
    assert str(planted) in str(e.value) and "refused" in str(e.value)
    assert "could run code" in str(e.value)  # refused as unsafe, not misreported as corrupt
    assert not marker.exists()


@pytest.fixture
def planted_run(tmp_path: Path, small_cli_args):
    """train.py: 1 member, 2 updates, a checkpoint after each (32, 64); then a planted ckpt at 96."""
    args = small_cli_args(GAME)
    assert train.main(args) == 0
    layout = RunLayout(tmp_path / "quickstart")
    folder = layout.member(0).checkpoints
    assert checkpoint_steps(folder) == [64, 32]
    marker = tmp_path / "pwned"
    planted = folder / f"ckpt_{96:012d}.pt"
    plant(planted, marker, "torch.save")
    assert list_checkpoints(folder)[0] == planted  # the newest by name
    return layout, planted, marker


@pytest.mark.slow  # trains a run, then eval.py on it
def test_eval_uses_the_previous_checkpoint(planted_run) -> None:
    layout, planted, marker = planted_run
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint") as record:
        assert eval_cli.main([str(layout.root), "--episodes", "2", "--modes", "member", "--device", "cpu",
                              "eval.num_envs=2"]) == 0
    assert any(str(planted) in str(w.message) for w in record)
    results = json.loads((layout.eval() / "results.json").read_text())
    assert results["checkpoints"]["members"] == [64]
    assert results["modes"]["member"]["members"][0]["step"] == 64
    assert not marker.exists()


@pytest.mark.slow  # trains a run, then resumes it
def test_resumed_training_skips_the_planted_checkpoint(planted_run, small_cli_args, caplog) -> None:
    layout, planted, marker = planted_run
    caplog.set_level(logging.INFO, logger="expgen")
    total = 4 * STEPS_PER_UPDATE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train.main(small_cli_args(GAME, f"ppo.total_steps={total}")) == 0
    assert not marker.exists()
    assert any("skipping unreadable checkpoint" in str(w.message) for w in caught)
    assert "resuming at step 64" in caplog.text  # from the last valid checkpoint, not from scratch
    folder = layout.member(0).checkpoints
    assert checkpoint_steps(folder) == [128, 96, 64]
    ckpt = load_checkpoint(planted)  # update 3 rewrote step 96 with a real checkpoint
    assert ckpt["step"] == 96 and ckpt["update"] == 3 and "model" in ckpt
    assert load_checkpoint(folder / f"ckpt_{total:012d}.pt")["update"] == 4
    summary = json.loads(layout.summary.read_text())
    assert [a["steps"] for a in summary["agents"]] == [total]


def test_encode_decode_round_trip(tmp_path: Path) -> None:
    """Arrays come back with their dtype and values, tuples as tuples: in memory and via a file."""
    arrays = {
        "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "u32": np.array([0, 1, 2**32 - 1, 123456789], dtype=np.uint32),
        "i64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        "f32": np.linspace(-1, 1, 7, dtype=np.float32),
        "f64": np.array([np.pi, -0.0, np.inf]),
        "bool": np.array([[True, False], [False, True]]),
        "strided": np.arange(20, dtype=np.int32)[::3],  # non-contiguous input
    }
    payload = {
        "arrays": arrays,
        "pair": (np.array([7, 8], np.uint32), (np.array([True]), "label", 3)),
        "list": [np.zeros(2, np.float16), 1.5],
        "tensor": torch.arange(3),
    }
    in_memory = decode(encode(payload))
    path = save_checkpoint(tmp_path, 5, payload)
    from_file = load_checkpoint(path)
    assert from_file["step"] == 5 and from_file["format"] == FORMAT
    for restored in (in_memory, from_file):
        for name, a in arrays.items():
            b = restored["arrays"][name]
            assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape, name
            np.testing.assert_array_equal(b, a, err_msg=name)
        pair = restored["pair"]
        assert type(pair) is tuple and type(pair[1]) is tuple
        assert pair[0].dtype == np.uint32 and pair[0].tolist() == [7, 8]
        assert pair[1][0].dtype == np.bool_ and pair[1][0].tolist() == [True]
        assert pair[1][1:] == ("label", 3)
        assert type(restored["list"]) is list and restored["list"][0].dtype == np.float16
        assert torch.equal(restored["tensor"], torch.arange(3))
    # The decoded arrays do not share memory with the originals.
    in_memory["arrays"]["u32"][0] = 9
    assert arrays["u32"][0] == 0
    with pytest.raises(TypeError):
        encode(np.array([object()], dtype=object))


def test_zero_dim_array_keeps_its_shape() -> None:
    """SOURCE BUG (core/checkpoint.py, ``encode``): ``np.ascontiguousarray`` returns at least 1-d, so
    a 0-d array comes back from ``decode(encode(x))`` with shape (1,): decode is not the inverse of
    encode there. No state saved today holds a 0-d array, so nothing breaks yet."""
    x = np.array(7, dtype=np.int64)
    y = decode(encode(x))
    assert y.shape == x.shape == () and y.dtype == x.dtype and y == x
