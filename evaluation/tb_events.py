"""One TensorBoard point per step in an evaluation's event folder (``eval/[<name>/]tb/<split>/``).

eval.py logs every number of an evaluation at one step, the members' newest checkpoint step. Run
again on the same checkpoints (another seed, more episodes), it must replace the points of that
step, not add a second event file whose points TensorBoard shows beside the old ones. Points at
other steps stay: a run trained further and evaluated again keeps one point per checkpoint step
evaluated, a curve. ``write_replacing_steps`` does this without ever losing the old points before
the new ones are complete:

1. the new events are written, completely, into a staging folder beside the target
   (``tb/.<split>.staging-*``, removed whatever happens);
2. they are merged with the target's events: the steps the new events have are dropped from the
   old ones, and every other step keeps the events of the newest file that has it (so a folder
   that older versions left with several files per step collapses to one point per step);
3. the merged events, in step order, are written as one file in the staging folder, moved into
   the target with one rename, and only then are the old files deleted.

Interrupted before 3's rename, the target is as it was; between the rename and the deletions, the
merged file sits beside the old ones (nothing lost), and the next evaluation collapses them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

STAGING = ".{split}.staging-"


def event_files(folder: Path) -> list[Path]:
    """The event files TensorBoard reads in ``folder`` (not in its subfolders), in its order."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and "tfevents" in p.name)


def read_records(path: Path) -> list[tuple[bytes, Event]]:
    """Every complete record of an event file, raw and parsed (a truncated tail is left out)."""
    return [(raw, Event.FromString(raw)) for raw in RawEventFileLoader(str(path)).Load()]


def newest_per_step(files: list[list[tuple[bytes, Event]]]) -> dict[int, int]:
    """step -> index of the file whose events at that step were written last (ties: the later file)."""
    newest: dict[int, tuple[float, int]] = {}
    for i, records in enumerate(files):
        for _, event in records:
            if event.HasField("file_version"):
                continue
            key = (event.wall_time, i)
            if event.step not in newest or key >= newest[event.step]:
                newest[event.step] = key
    return {step: i for step, (_, i) in newest.items()}


def merge(old: list[list[tuple[bytes, Event]]], new: list[tuple[bytes, Event]]) -> list[bytes]:
    """The new file's records, plus the old records of the steps the new ones lack (one file per
    step, the newest): a file-version header first, then the events in step order."""
    header = [raw for raw, e in new if e.HasField("file_version")][:1]
    events = [(e.step, raw) for raw, e in new if not e.HasField("file_version")]
    replaced = {step for step, _ in events}
    keep = newest_per_step(old)
    for i, records in enumerate(old):
        events += [(e.step, raw) for raw, e in records
                   if not e.HasField("file_version") and e.step not in replaced and keep.get(e.step) == i]
    events.sort(key=lambda pair: pair[0])  # stable: within a step, the order written
    return header + [raw for _, raw in events]


def write_records(path: Path, records: list[bytes]) -> None:
    with open(path, "wb") as f:
        writer = RecordWriter(f)
        for raw in records:
            writer.write(raw)
        f.flush()
        os.fsync(f.fileno())


def write_replacing_steps(folder: Path, write: Callable[[SummaryWriter], None]) -> Path:
    """Call ``write`` with a SummaryWriter, then make its events replace, in ``folder``, every
    event at the steps it wrote; events at other steps stay. Returns ``folder``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    prefix = STAGING.format(split=folder.name)
    # Left by an evaluation that was killed (SIGKILL) mid-write: TensorBoard would read its events
    # as another run. Two evaluations writing the same eval folder at once are not supported (they
    # would overwrite each other's results.json too).
    for stale in folder.parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=folder.parent))
    try:
        writer = SummaryWriter(str(staging))
        try:
            write(writer)
        finally:
            writer.close()
        (new_file,) = event_files(staging)
        olds = event_files(folder)
        merged = merge([read_records(p) for p in olds], read_records(new_file))
        staged = staging / "merged"
        write_records(staged, merged)
        folder.mkdir(exist_ok=True)
        target = folder / new_file.name
        while target.exists():  # the same second, host and process as an old file: never overwrite one
            target = target.with_name(target.name + "_")
        os.replace(staged, target)
        for old in olds:
            old.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
