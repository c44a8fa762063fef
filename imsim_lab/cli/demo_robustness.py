"""The robustness phase of ``imsim-lab demo``: a short surrogate, a small PGD suite that transfers to
SSCD, and SSCD's graded suite, so that the explorer's *Adversarial robustness* page and the graded
curves of *Per-augmentation AP* are filled by the main job.

Every step goes through the library the commands use (``imsim-lab train lyakaap``, ``imsim-lab
run``, ``imsim-lab attack``, ``imsim-lab robustness``) and is cached by it: a second demo reuses the
trained weights, the surrogate's run folder, the adversarial images and the graded cells.

Sizes (README, "Robustness"): resnet18 + GeM at 112 px trained from random initialisation for
:data:`SURROGATE_STEPS` steps of 24 training images (a weak surrogate on purpose: the lesson is
that even a weak one transfers); PGD L-inf with 5 steps at ε 0, 4/255 and 16/255 on a seeded sample
of :data:`ATTACK_SAMPLE` matched queries; the graded suite on :data:`GRADED_FAMILIES` at strengths
0, 0.5 and 1 on :data:`GRADED_SAMPLE` sampled references.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from ..errors import ImsimError

SURROGATE_STEPS = 40
SURROGATE_NAME = "surrogate_r18"
#: fixed, not the demo's --workers: the trainer refuses to resume a folder under other settings
SURROGATE_WORKERS = 1
ATTACK_EPS = (0.0, 4 / 255, 16 / 255)
ATTACK_SAMPLE = 40
GRADED_FAMILIES = ("rotate", "crop", "blur", "text")
GRADED_STRENGTHS = (0.0, 0.5, 1.0)
GRADED_SAMPLE = 40


def _say(text: str) -> None:
    print(f"    {text}", flush=True)


def train_surrogate(bench: Path, train_dir: Path, steps: int = SURROGATE_STEPS,
                    workers: int = SURROGATE_WORKERS) -> tuple[list[str], bool]:
    """Train (or reuse) the toy lyakaap surrogate; returns the ``imsim-lab run`` command that
    evaluates its weights (as printed by ``imsim-lab train lyakaap``) and whether every step was
    already done."""
    from ..train.recipes import TrainSession, get_recipe

    recipe = get_recipe("lyakaap")
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    args = parser.parse_args(["--bench", str(bench), "--out", str(train_dir), "--backbone", "resnet18",
                              "--size", "112", "--batch-size", "24", "--max-steps", str(steps),
                              "--workers", str(workers), "--device", "cpu"])
    summary = recipe.run(args, TrainSession())
    if not summary.get("evaluate"):
        raise ImsimError(f"{train_dir}: training wrote no weights")
    return shlex.split(summary["evaluate"]), summary["resumed_from"] >= summary["steps"]


def evaluate_surrogate(argv: list[str], bench: Path, out: Path, workers: int):
    """Run the evaluation command of :func:`train_surrogate` into ``out`` (a run folder of the demo)."""
    from ..features import ExtractConfig
    from ..runner import RunOptions, run_method
    from .run_cmd import parse_params

    method = argv[2]
    params = [argv[i + 1] for i, a in enumerate(argv) if a in ("-p", "--param")]
    opts = RunOptions(extract=ExtractConfig(num_workers=workers), device="cpu")
    return run_method(method, bench, out, parse_params(params), opts)


def robustness_phase(bench: Path, runs: Path, work: Path, target: str = "sscd", workers: int = 1) -> dict:
    """Surrogate, attack suite with transfer to ``runs/target``, graded suite on ``runs/target``.

    Returns ``{step: seconds}``. Raises :class:`ImsimError` when the target run is missing.
    """
    from ..analysis.attacks import AttackConfig, SuiteConfig, run_attack_suite
    from ..analysis.robustness import GradedConfig, run_graded
    from ..runfolder import is_run_folder

    target_run = runs / target
    if not is_run_folder(target_run):
        raise ImsimError(f"{target_run}: the robustness phase needs the demo's {target} run (add it to --methods)")
    times = {}
    t = time.perf_counter()
    argv, reused = train_surrogate(bench, work / "surrogate")
    times["train_surrogate"] = time.perf_counter() - t
    _say(f"surrogate ({SURROGATE_STEPS} steps, resnet18 at 112 px) {'reused' if reused else 'trained'} in "
         f"{times['train_surrogate']:.1f} s")
    t = time.perf_counter()
    res = evaluate_surrogate(argv, bench, runs / SURROGATE_NAME, workers)
    times["evaluate_surrogate"] = time.perf_counter() - t
    _say(f"{SURROGATE_NAME}: µAP {res.metrics['isc2021']['micro_ap']:.3f} in {times['evaluate_surrogate']:.1f} s"
         + ("  (reused)" if res.reused else ""))
    t = time.perf_counter()
    cfg = SuiteConfig(attack=AttackConfig("pgd", "linf", steps=5), eps=ATTACK_EPS, sample=ATTACK_SAMPLE)
    curves = run_attack_suite(runs / SURROGATE_NAME, cfg, eval_runs=[target_run], device="cpu")
    times["attack"] = time.perf_counter() - t
    strong = curves[curves["eps"] == max(ATTACK_EPS)] if "eps" in curves else curves.iloc[0:0]
    summary = ", ".join(f"{r['eval_label']} ({r['kind']}) µAP {r['micro_ap']:.3f}"
                        for _, r in strong.iterrows() if r["protocol"] == "isc2021")
    _say(f"PGD L-inf, 5 steps, {ATTACK_SAMPLE} queries, white-box + transfer to {target} in {times['attack']:.1f} s"
         + (f" (at ε 16/255: {summary})" if summary else ""))
    t = time.perf_counter()
    run_graded(target_run, GradedConfig(families=GRADED_FAMILIES, strengths=GRADED_STRENGTHS, sample=GRADED_SAMPLE),
               device="cpu")
    times["graded"] = time.perf_counter() - t
    _say(f"graded suite on {target}: {', '.join(GRADED_FAMILIES)} at strengths "
         f"{', '.join(str(s) for s in GRADED_STRENGTHS)}, {GRADED_SAMPLE} references, in {times['graded']:.1f} s")
    return times
