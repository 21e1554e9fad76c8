"""Episode videos for eval.py ``--video N``: env 0's first N counted episodes of each mode.

Frames are the agent's own 64x64 observations, upscaled with nearest-neighbour (pixels stay crisp)
and framed with a red border on the steps where ExpGen handed control to the explorer. Written as
H.264 MP4 through imageio's PyAV plugin (the ``av`` package bundles FFmpeg; imageio's own ffmpeg
plugin is unusable here because gym3 pins an imageio-ffmpeg that predates imageio 2.38), or as a
GIF when that fails.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np

log = logging.getLogger("expgen")
_mp4_error: str | None = None  # set at the first MP4 failure: later videos go straight to GIF

FPS = 15  # procgen's own rendering rate
SCALE = 4
BORDER = 4  # pixels of the upscaled frame
MARK_COLOR = (255, 0, 0)


@dataclass
class RecordedEpisode:
    frames: list[np.ndarray]  # (64, 64, 3) uint8, the frames the agent acted on
    marks: list[bool]  # per frame: the action taken on it was exploration
    level_seed: int | None = None


@dataclass
class EpisodeRecorder:
    """Collects one env's frames until ``episodes`` complete episodes have been seen."""

    episodes: int
    finished: list[RecordedEpisode] = field(default_factory=list)
    current: RecordedEpisode = field(default_factory=lambda: RecordedEpisode([], []))

    @property
    def active(self) -> bool:
        return len(self.finished) < self.episodes

    def add(self, frame: np.ndarray, marked: bool) -> None:
        """The frame an action was chosen on, and whether that action was exploration."""
        if self.active:
            self.current.frames.append(np.asarray(frame, dtype=np.uint8).copy())
            self.current.marks.append(bool(marked))

    def end_step(self, terminated: bool, level_seed: int | None = None, counted: bool = True) -> None:
        """After the env stepped: close the running episode if it just ended; keep it only if the
        evaluation ``counted`` it (not one on a level ``eval.unseen`` skips, nor past the env's quota)."""
        if terminated and self.active:
            if counted:
                self.current.level_seed = None if level_seed is None else int(level_seed)
                self.finished.append(self.current)
            self.current = RecordedEpisode([], [])


def render_frames(frames: list[np.ndarray], marks: list[bool], scale: int = SCALE,
                  border: int = BORDER) -> np.ndarray:
    """(T, 64, 64, 3) frames -> (T, 64*scale, 64*scale, 3), red border where ``marks`` is True."""
    video = np.stack(frames).repeat(scale, axis=1).repeat(scale, axis=2)
    marked = np.asarray(marks, dtype=bool)
    color = np.array(MARK_COLOR, dtype=np.uint8)
    for edge in (np.s_[:, :border], np.s_[:, -border:], np.s_[:, :, :border], np.s_[:, :, -border:]):
        video[edge][marked] = color  # basic slicing is a view: this writes into ``video``
    return video


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """MP4 at ``path`` (suffix replaced), or a GIF beside it when ffmpeg is unavailable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    global _mp4_error
    mp4 = path.with_suffix(".mp4")
    if _mp4_error is None:
        try:
            iio.imwrite(mp4, np.asarray(frames), plugin="pyav", codec="libx264", fps=fps)
            return mp4
        except Exception as e:  # missing or broken ffmpeg: imageio raises several types
            mp4.unlink(missing_ok=True)
            _mp4_error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            log.warning("cannot write MP4 (%s); writing GIFs instead. For MP4: pip install av",
                        _mp4_error)
    gif = path.with_suffix(".gif")
    iio.imwrite(gif, np.asarray(frames), duration=1000 / fps, loop=0)  # pillow: milliseconds
    return gif


def write_episodes(recorder: EpisodeRecorder, folder: Path, prefix: str) -> list[Path]:
    """One file per finished episode: ``<prefix>_ep<i>_level<seed>.mp4``."""
    paths = []
    for i, ep in enumerate(recorder.finished):
        if not ep.frames:
            continue
        level = "" if ep.level_seed is None else f"_level{ep.level_seed}"
        paths.append(write_video(Path(folder) / f"{prefix}_ep{i}{level}", render_frames(ep.frames, ep.marks)))
    return paths
