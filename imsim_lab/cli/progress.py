"""Presentation helpers shared by the sub-commands: phase progress bars and group help."""

from __future__ import annotations

import sys


def show_help(parser) -> int:
    """What a command group without an action does: print its help, exit code 1."""
    parser.print_help()
    return 1


class PhaseBars:
    """A ``progress(phase, done, total)`` callback drawing one tqdm bar per phase on stderr."""

    def __init__(self, quiet: bool = False, unit: str = "img"):
        self.quiet, self.unit = quiet, unit
        self.phase = None
        self.bar = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total, desc=f"{phase:>14}", unit=self.unit, file=sys.stderr,
                            unit_scale=True, dynamic_ncols=True)
        self.bar.n = done
        if done == total or done % 8 == 0:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
