"""Episode videos (evaluation/video.py): the recorder, the exploration marks, the GIF fallback.
eval.py's --video end to end is in tests/test_eval.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation import video
from evaluation.video import MARK_COLOR, EpisodeRecorder, render_frames, write_video


def test_recorder_and_marks() -> None:
    rec = EpisodeRecorder(episodes=1)
    frame = np.zeros((64, 64, 3), np.uint8)
    for t, (marked, done) in enumerate([(True, False), (False, True), (True, False)]):
        rec.add(frame + t, marked)
        rec.end_step(done, level_seed=7)
    assert not rec.active and len(rec.finished) == 1
    ep = rec.finished[0]
    assert len(ep.frames) == 2 and ep.marks == [True, False] and ep.level_seed == 7
    video = render_frames(ep.frames, ep.marks, scale=4, border=2)
    assert video.shape == (2, 256, 256, 3)
    assert (video[0, 0, 100] == MARK_COLOR).all() and (video[0, 100, -1] == MARK_COLOR).all()
    assert (video[1, 0, 100] == 1).all() and (video[0, 100, 100] == 0).all()  # unmarked, interior


def test_recorder_keeps_only_counted_episodes() -> None:
    """An episode on a level eval.unseen skips (or past env 0's quota) is played but not counted:
    its video is not kept either."""
    rec = EpisodeRecorder(episodes=2)
    frame = np.zeros((64, 64, 3), np.uint8)
    for t, (done, level, counted) in enumerate([(False, 5, True), (True, 5, False), (True, 8, True),
                                                (False, 9, True), (True, 9, True)]):
        rec.add(frame + t, False)
        rec.end_step(done, level_seed=level, counted=counted)
    assert [ep.level_seed for ep in rec.finished] == [8, 9]
    assert [len(ep.frames) for ep in rec.finished] == [1, 2]  # the skipped episode's frames are gone


def test_gif_fallback_keeps_the_frame_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.setattr(video, "_mp4_error", "ffmpeg unavailable (simulated)")
    frames = render_frames([np.full((64, 64, 3), 40 * i, np.uint8) for i in range(3)], [True, False, True])
    path = write_video(tmp_path / "clip", frames, fps=15)
    assert path.suffix == ".gif"
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.size == (256, 256)
        gif.seek(1)
        assert 60 <= gif.info["duration"] <= 70  # 1000 / 15 ms, in GIF's 10 ms steps
