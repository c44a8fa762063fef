"""Exceptions shared by the whole library.

Every error about user input names the file, the place in it (row, dataset) and the problem,
so that the command line can print it on one line and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path


class ImsimError(Exception):
    """Base class of the errors that the CLI reports on one line (exit code 2)."""


class FormatError(ImsimError, ValueError):
    """A file does not follow its official format.

    Args:
        path: the file.
        problem: what is wrong, in plain words.
        where: the row ("row 12"), dataset ("dataset 'query'") or column; optional.
    """

    def __init__(self, path: str | Path | None, problem: str, where: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.where = where
        parts = [p for p in (self.path, where) if p]
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class MissingDependencyError(ImsimError, ImportError):
    """An optional dependency is missing; the message names what to install."""

    def __init__(self, package: str, purpose: str, extra: str | None = None):
        hint = f"pip install 'imsim-lab[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the package '{package}': {hint}")
