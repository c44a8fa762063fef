"""``imsim-lab train RECIPE ...``: run a registered training recipe (:mod:`imsim_lab.train.recipes`).

The same arguments and the same code serve ``python -m imsim_lab.train RECIPE ...`` (which prints
its JSON summary by default, for scripts) and both work under ``torchrun``::

    torchrun --standalone --nproc_per_node 8 -m imsim_lab train lyakaap --bench DISC21 --out runs/v83 ...
    torchrun --standalone --nproc_per_node 8 -m imsim_lab.train lyakaap --bench DISC21 --out runs/v83 ...

The command is the same for every recipe: ``train`` alone lists them, ``train RECIPE --help``
explains one (its stages and published schedule, made when asked), an unknown name is one line
and exit code 2. Running one sets up the process group (:mod:`imsim_lab.distributed`), gives the
recipe a :class:`~imsim_lab.train.recipes.TrainSession`, and on rank 0 draws a progress bar on
stderr when stderr is a terminal, one line per step otherwise (CI logs), then names the weights and
the ``imsim-lab run`` command that evaluates them. Re-running a command resumes it.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ImsimError
from ..train.recipes import Recipe, RunStart, TrainSession, get_recipe, list_recipes


def register(sub) -> None:
    p = sub.add_parser("train", help="train a descriptor (resumable, multi-GPU with torchrun)",
                       description="Train a descriptor on the training/ images of a benchmark folder. "
                                   "Re-running a command resumes it; several GPUs: torchrun ... -m "
                                   "imsim_lab train RECIPE ... (or -m imsim_lab.train).",
                       epilog=recipes_epilog("imsim-lab train"), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_arguments(p)


def recipes_epilog(prog: str) -> str:
    """The list of registered recipes with their help, and how to learn more."""
    recipes = list_recipes()
    width = max((len(r.name) for r in recipes), default=0)
    lines = ["recipes:", *(f"  {r.name:<{width}}  {r.help}" for r in recipes), "",
             f"`{prog} RECIPE --help` explains a recipe, its stages and the published schedule."]
    return "\n".join(lines)


def add_recipe_arguments(parser: argparse.ArgumentParser, json_default: bool = False) -> None:
    """``RECIPE [OPTIONS...]`` on ``parser``: the options are parsed by the recipe's own parser when it runs.

    Nothing heavy is imported here (every ``imsim-lab`` command builds this parser).
    """
    parser.add_argument("recipe", nargs="?", metavar="RECIPE", help="a recipe (listed below)")
    parser.add_argument("options", nargs=argparse.REMAINDER, metavar="...", help="its options (RECIPE --help)")
    parser.set_defaults(func=lambda args: run(args, parser, json_default))


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed when help is printed (``lazy_epilog``)."""

    lazy_epilog = None

    def format_help(self) -> str:
        if self.lazy_epilog is not None and self.epilog is None:
            self.epilog = self.lazy_epilog()
        return super().format_help()


def recipe_parser(recipe: Recipe, prog: str, json_default: bool = False) -> argparse.ArgumentParser:
    """The parser of ``prog`` (``imsim-lab train lyakaap``): the recipe's options, then ``--json``."""
    p = _Parser(prog=prog, description=recipe.description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.lazy_epilog = recipe.epilog
    recipe.add_arguments(p)
    p.add_argument("--json", action="store_true", default=json_default, help="print the summary as one JSON object")
    return p


def run(args, parser: argparse.ArgumentParser, json_default: bool = False) -> int:
    """Parse the recipe's options and run it (see the module docstring); the exit code."""
    if args.recipe is None:
        parser.print_help()
        return 1
    recipe = get_recipe(args.recipe)
    return run_recipe(recipe, recipe_parser(recipe, f"{parser.prog} {recipe.name}", json_default)
                      .parse_args(args.options))


def run_recipe(recipe: Recipe, args: argparse.Namespace) -> int:
    """Run ``recipe`` with its parsed options in this process's group; rank 0 presents. Raises ImsimError."""
    from ..distributed import destroy_distributed, init_distributed

    rank, world = init_distributed()
    progress = []

    def on_start(start: RunStart):
        print(f"train {recipe.name} {start.text}", file=sys.stderr)
        progress.append(StepProgress(start.images_per_step, start.epochs, start.max_steps, tty=sys.stderr.isatty()))
        return progress[-1]

    try:
        summary = recipe.run(args, TrainSession(rank, world, on_start))
    except ImsimError as e:
        if rank > 0:  # every rank meets the same bad input: rank 0 says it once
            return 2
        raise _from_worker(e) from None
    finally:
        for p in progress:
            p.close()
        destroy_distributed()
    if rank == 0:
        present(summary, args.json)
    return 0


def present(summary: dict, as_json: bool) -> None:
    """Print a recipe's summary: one JSON line, or the run, its weights and the evaluation command."""
    if as_json:
        print(json.dumps(summary))
        return
    done = summary["steps"] - summary["resumed_from"]
    if done == 0:
        state = f"already finished: {summary['steps']} of {summary['total_steps']} steps, nothing redone"
    else:
        rate = f", {summary['images_per_second']:.1f} img/s" if summary["images_per_second"] else ""
        steps = (f"steps {summary['resumed_from'] + 1}-{summary['steps']} of {summary['total_steps']} (resumed)"
                 if summary["resumed_from"] else f"{summary['steps']} of {summary['total_steps']} steps")
        state = f"{steps}, {summary['seconds']:.1f} s{rate}"
    print(f"training run : {summary['out']}  ({state})")
    print(f"weights      : {summary['weights']}")
    print(f"loss history : {summary['history']}")
    for line in summary.get("report") or ():  # what a recipe measured itself (the detector's box recall)
        print(line)
    if summary.get("evaluate"):
        print("evaluate them as a run on the benchmark:")
        print(f"  {summary['evaluate']}")


def _from_worker(e: ImsimError) -> ImsimError:
    """An error raised in a DataLoader worker arrives wrapped in the worker's traceback: keep its
    last line, the message itself (e.g. the training image that cannot be read)."""
    text = str(e)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return e
    last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
    head, sep, rest = last.partition(": ")
    return ImsimError(rest if sep and " " not in head and head.endswith(("Error", "Exception")) else last)


class StepProgress:
    """The ``on_step`` callback of the trainer: a tqdm bar on a terminal, one line per step otherwise.

    Args:
        per_step: training images per optimiser step, all processes together (for img/s).
        epochs, max_steps: as configured (the total is known from the first record's epoch fraction).
        tty: draw a bar (True) or write lines (False), both on stderr.
    """

    def __init__(self, per_step: int, epochs: int, max_steps: int | None, tty: bool):
        self.per_step, self.epochs, self.max_steps, self.tty = per_step, epochs, max_steps, tty
        self.bar = None
        self.last = None  # (step, seconds) of the previous record

    def rate(self, rec: dict) -> float:
        prev_step, prev_s = self.last if self.last else (rec["step"] - 1, 0.0)
        dt = rec["seconds"] - prev_s
        return self.per_step * (rec["step"] - prev_step) / dt if dt > 0 else float("nan")

    def total(self, rec: dict) -> int:
        per_epoch = max(1, round(rec["step"] / rec["epoch"])) if rec["epoch"] else 1
        total = self.epochs * per_epoch
        return min(total, self.max_steps) if self.max_steps else total

    def __call__(self, rec: dict) -> None:
        rate = self.rate(rec)
        self.last = (rec["step"], rec["seconds"])
        if not self.tty:
            print(f"step {rec['step']}/{self.total(rec)} epoch {rec['epoch']:.2f} loss {rec['loss']:.4f} "
                  f"lr {rec['lr']:.4g} {rate:.1f} img/s", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total(rec), initial=rec["step"] - 1, desc="train", unit="step",
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"loss {rec['loss']:.4f}, {rate:.1f} img/s, lr {rec['lr']:.3g}", refresh=False)
        self.bar.update(rec["step"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: list[str] | None = None, prog: str = "python -m imsim_lab.train") -> int:
    """``python -m imsim_lab.train RECIPE ...``: the recipes of ``imsim-lab train``, JSON summary by default."""
    from . import main as run_command

    ap = argparse.ArgumentParser(prog=prog, description="Train a descriptor (the same as `imsim-lab train`, "
                                 "printing the summary as one JSON line). Re-running a command resumes it.",
                                 epilog=recipes_epilog(prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_arguments(ap, json_default=True)
    return run_command(argv, ap)
