"""Fixtures shared by the test modules (pytest passes them by name; no module imports this file).

* ``tiny_bench``: the disc-synth ``tiny`` preset (seed :data:`support.TINY_SEED`), built once per
  test process (once per pytest-xdist worker) under ``tmp_path_factory``. Read it, never write
  into it: every test of the process sees the same folder.
* ``tiny_bench_copy``: a private copy of ``tiny_bench`` in the test's ``tmp_path``, for a test that
  writes into the benchmark folder (a realism report, deleted images, ...).
* ``mini_bench``: :func:`support.make_mini_bench` once per process, for the explorer and report
  tests that read it (hand-made, so every query's family and strength is known).
* ``demo_results``: (results folder, benchmark folder) made by the real ``imsim-lab demo --preset
  tiny``, once per test session, shared between xdist workers through a file lock.

Plain helpers (functions, constants, model wrappers) are in ``tests/support.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# ``support`` is imported inside the fixtures: it pulls in the run machinery, which a session that
# runs only, say, the metric tests should not pay for.


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """The disc-synth ``tiny`` benchmark folder (read only)."""
    from imsim_lab.data.synth import BuildConfig, build_benchmark
    from support import TINY_SEED, TINY_WORKERS

    root = tmp_path_factory.mktemp("tiny_bench") / "bench"
    build_benchmark(BuildConfig("tiny", seed=TINY_SEED, workers=TINY_WORKERS), root)
    return root


@pytest.fixture
def tiny_bench_copy(tiny_bench, tmp_path) -> Path:
    """A copy of ``tiny_bench`` that the test may modify."""
    return Path(shutil.copytree(tiny_bench, tmp_path / "tiny_bench"))


@pytest.fixture(scope="session")
def mini_bench(tmp_path_factory) -> Path:
    """The :func:`support.make_mini_bench` folder (read only)."""
    from support import make_mini_bench

    return make_mini_bench(tmp_path_factory.mktemp("mini_bench") / "bench")


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory):
    """(results folder, benchmark folder) made by the real ``imsim-lab demo --preset tiny``."""
    from filelock import FileLock

    from imsim_lab.cli import main
    from support import DEMO_METHODS

    reuse = os.environ.get("IMSIM_TEST_DEMO_DIR")  # a finished demo folder, to iterate on the pages quickly
    if reuse:
        return Path(reuse) / "runs", Path(reuse) / "bench"
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base
    out = shared / "explorer-demo"
    with FileLock(str(shared / "explorer-demo.lock")):
        if not (out / "done").exists():
            rc = main(["demo", "--preset", "tiny", "--out", str(out), "--methods", DEMO_METHODS, "--no-serve",
                       "--no-robustness", "--workers", "0"])
            assert rc == 0
            (out / "done").write_text("ok")
    return out / "runs", out / "bench"
