"""Callbacks of the training loop: code of your own that runs after every update of every job
that this process trains (as ``BaseCallback._on_step`` does in Stable-Baselines3).

``after_update`` is a list of callables ``callback(learner)``. ``training.loop.train`` calls them in
order after each update, once its metrics are logged and any checkpoint of it is written, with
the job's ``training.learner.Learner``: ``learner.update`` (updates done), ``learner.global_step``
(env steps per agent), ``learner.agents`` (each agent's name and run directory). A callback that
raises ends the job with that error, as a failing update would: the newest checkpoint stays, and
re-running the same command resumes from it. A Ctrl-C during a callback is deferred as one during
an update is (``training.interrupt.DeferredInterrupt``).

The list belongs to one process. A job trained side by side (``resources.side_by_side``) or as a
Ray trial (``ray: true``) runs in a process of its own, which starts with the list empty: install a
callback there from code that every Python process runs at start, such as a ``sitecustomize``
module in a folder on ``PYTHONPATH`` (the child processes inherit the environment).

This module imports nothing heavy, so that such start-up code stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from training.learner import Learner

after_update: list[Callable[[Learner], None]] = []
