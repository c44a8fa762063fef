"""What a training recipe is: :class:`Recipe`, and what it is given and gives back.

A recipe turns parsed command-line arguments into its frozen configuration and trains it:

* ``add_arguments(parser)`` adds its options to an ``argparse`` parser (nothing heavy imported:
  every ``imsim-lab`` command builds its parsers);
* ``run(args, session)`` checks the values, builds the configuration, trains (under ``torchrun``
  too: ``session`` says the rank and world size) and returns a JSON-able summary made with
  :func:`training_summary`: the weights and the ``imsim-lab run METHOD ...`` command that
  evaluates them. It raises :class:`~imsim_lab.errors.ImsimError` on bad input and prints nothing:
  before the first step it calls ``session.start(RunStart(...))``, which gives the trainer's
  ``on_step`` callback of the command that presents it (a progress bar, one line per step);
* ``schedule()``, where the recipe has a published one, gives it as commands
  (:class:`PublishedStep`), shown by ``--help`` after ``details()`` (stage tables...).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class PublishedStep:
    """One step of a recipe's published schedule.

    Attributes:
        title: what the step is (stage, epochs, lr, batch, what changes), one line.
        argv: the command that runs it; empty when it is not a command yet (``title`` says how).
    """

    title: str
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunStart:
    """What a recipe announces before its first step (rank 0 shows it).

    Attributes:
        text: one line: what is trained, on which data, by how many processes, into which folder.
        images_per_step: training images per optimiser step, all processes together (img/s).
        epochs, max_steps: as configured (the progress total).
    """

    text: str
    images_per_step: int
    epochs: int
    max_steps: int | None = None


OnStep = Callable[[dict], None]


@dataclass(frozen=True)
class TrainSession:
    """What the command gives a recipe's ``run``: where it runs and who presents its progress.

    Attributes:
        rank, world: this process in the ``torchrun`` group ((0, 1) alone).
        on_start: called on rank 0 with the :class:`RunStart`; returns the trainer's ``on_step``
            callback (or None). None: nothing is shown (tests, notebooks).
    """

    rank: int = 0
    world: int = 1
    on_start: Callable[[RunStart], OnStep | None] | None = None

    def start(self, start: RunStart) -> OnStep | None:
        """Announce the run; returns the ``on_step`` to give the trainer (None off rank 0)."""
        if self.rank != 0 or self.on_start is None:
            return None
        return self.on_start(start)


@dataclass(frozen=True)
class Recipe:
    """A training recipe of ``imsim-lab train RECIPE`` (and ``python -m imsim_lab.train RECIPE``).

    Attributes:
        name: the command word (``lyakaap``).
        help: one line for the list of recipes.
        description: what it trains and writes (``RECIPE --help``).
        add_arguments: adds its options to a parser; imports nothing heavy.
        run: ``(args, TrainSession) -> summary`` (:func:`training_summary`); raises ImsimError.
        details: ``--help`` text before the schedule, made when help is asked (may import the
            recipe's modules): its stages, its magnitudes.
        schedule: the published schedule as commands, in order (None: it has none).
        notes: ``--help`` text after the schedule (how to try it on a CPU...).
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, TrainSession], dict]
    details: Callable[[], str] | None = None
    schedule: Callable[[], Sequence[PublishedStep]] | None = None
    notes: str = ""

    def epilog(self) -> str:
        """The ``--help`` text after the options: details, the published schedule, notes."""
        parts = [self.details()] if self.details else []
        if self.schedule:
            lines = ["published schedule (in order):"]
            for step in self.schedule():
                lines.append(f"  {step.title}")
                if step.argv:
                    lines.append(f"    {shlex.join(step.argv)}")
            parts.append("\n".join(lines))
        if self.notes:
            parts.append(self.notes)
        return "\n\n".join(parts)


def training_summary(recipe: str, result, world: int, images_per_step: int,
                     evaluate: Sequence[str] | None = None) -> dict:
    """The JSON-able summary a recipe's ``run`` returns, from the trainer's result.

    Args:
        recipe: its name.
        result: the :class:`~imsim_lab.train.trainer.TrainResult`.
        world: processes that trained.
        images_per_step: training images per optimiser step, all processes together.
        evaluate: the ``imsim-lab run ...`` command that evaluates the weights (None: no weights).

    Returns:
        ``recipe``, ``out``, ``steps``, ``total_steps``, ``resumed_from``, ``seconds``,
        ``world_size``, ``weights``, ``images_per_second`` (steps done now; None when none was),
        ``history`` (the loss file) and ``evaluate`` (the command as one shell line, or None).
    """
    done = result.steps - result.resumed_from
    step_seconds = result.history[-1]["seconds"] if done and result.history else 0.0
    return {"recipe": recipe, "out": str(result.out), "steps": result.steps, "total_steps": result.total_steps,
            "resumed_from": result.resumed_from, "seconds": round(result.seconds, 2), "world_size": world,
            "weights": str(result.weights) if result.weights else None,
            "images_per_second": round(done * images_per_step / step_seconds, 2) if step_seconds else None,
            "history": str(result.out / "history.json"),
            "evaluate": shlex.join(evaluate) if evaluate else None}


def default_workers() -> int:
    """Loader workers per rank by default: every usable core, at most 4 (none on a single core). On a
    CPU run the trainer's ``auto`` loader then makes each batch with all of them between the steps
    (:class:`~imsim_lab.train.data.SyncBatches`); on CUDA they work while the GPU steps."""
    from ...system import usable_cores

    cores = usable_cores()
    return min(4, cores) if cores > 1 else 0


def add_trainer_arguments(p) -> None:
    """The options every recipe passes to the shared trainer: AMP, loader workers, checkpoint
    interval, seed and device (one definition, the same defaults and help in every recipe)."""
    p.add_argument("--amp", default="auto", help="auto (bf16/fp16 on CUDA, off on CPU), off, bf16 or fp16")
    workers = default_workers()
    p.add_argument("--workers", type=int, default=workers,
                   help=f"processes per rank that make the training batches (default: the usable cores, at "
                        f"most 4: {workers} here)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="optimiser steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda (default: CUDA if present)")


def check_backbone(name: str) -> None:
    """Refuse a ``--backbone`` that timm does not know (hub and local-folder names pass through)."""
    import timm

    from ...errors import ImsimError

    if not name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not timm.is_model(name):
        raise ImsimError(f"--backbone {name!r}: not a timm model (list them with timm.list_models('pattern*'))")


def check_global_batch(bench_root, n_images: int, batch_size: int, world: int, unit: str = "images") -> None:
    """Refuse a training folder with fewer images than one global batch (``batch_size`` per process
    times ``world`` processes); ``unit`` names what one batch counts (images, classes)."""
    from pathlib import Path

    from ...errors import ImsimError

    glob = batch_size * world
    if n_images < glob:
        raise ImsimError(f"{Path(bench_root) / 'training'}: {n_images} training images cannot fill one global batch "
                         f"of {glob} {unit}; lower --batch-size")
