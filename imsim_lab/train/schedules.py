"""Learning-rate rules that depend on the losses seen so far: S-square's ReduceLROnPlateau.

S-square (Papadakis & Addicam, arXiv 2112.03415; ``docs/methods.md``, "S-square") trains with Adam
at 1e-3 and ``ReduceLROnPlateau(factor=0.9, patience=2)`` on the epoch loss. Here the rule is a
pure function of the trainer's history (one record per step: ``epoch`` as a fraction, ``loss``),
so a resumed run recomputes exactly the learning rate an uninterrupted run would use, with no
scheduler state to checkpoint. ``lr_schedule="plateau"`` of
:class:`~imsim_lab.train.trainer.TrainConfig` selects it.
"""

from __future__ import annotations

from typing import Sequence

#: published settings of S-square's scheduler
PLATEAU_FACTOR, PLATEAU_PATIENCE = 0.9, 2


def epoch_losses(history: Sequence[dict], steps_per_epoch: int) -> list[float]:
    """Mean loss of every finished epoch in ``history`` (records ``step``, ``loss``), in order."""
    sums: dict[int, list[float]] = {}
    for rec in history:
        e = (int(rec["step"]) - 1) // max(1, steps_per_epoch)
        sums.setdefault(e, []).append(float(rec["loss"]))
    done = [e for e in sorted(sums) if len(sums[e]) and (e + 1) * steps_per_epoch <= int(history[-1]["step"])]
    return [sum(sums[e]) / len(sums[e]) for e in done]


def plateau_lr(base_lr: float, losses: Sequence[float], factor: float = PLATEAU_FACTOR,
               patience: int = PLATEAU_PATIENCE) -> float:
    """torch's ``ReduceLROnPlateau(mode="min", threshold=0)`` applied to ``losses`` (one per epoch):
    after more than ``patience`` epochs without a new minimum the rate is multiplied by ``factor``
    and the count starts again."""
    lr, best, bad = float(base_lr), float("inf"), 0
    for v in losses:
        if v < best:
            best, bad = v, 0
        else:
            bad += 1
            if bad > patience:
                lr, bad = lr * factor, 0
    return lr
