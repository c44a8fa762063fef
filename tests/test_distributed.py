"""imsim_lab.distributed: the process-group set-up shared by training and extraction (the
multi-process runs themselves are tested in test_train_trainer.py, test_cli_train.py and test_extract.py)."""

import socket
import subprocess
import sys

import pytest

from imsim_lab.distributed import (DistributedError, current_group, destroy_distributed, dist_info, init_distributed,
                                   init_from_env, process_group_args)
from imsim_lab.errors import ImsimError


def test_process_group_arguments():
    assert process_group_args(None, False, 0, 0) == ("gloo", None)
    assert process_group_args(None, True, 1, 2) == ("nccl", 1)
    assert process_group_args("gloo", True, 3, 2) == ("gloo", None)  # gloo binds no GPU
    with pytest.raises(DistributedError, match="LOCAL_RANK 2 but this node has 2 GPU"):
        process_group_args(None, True, 2, 2)
    with pytest.raises(DistributedError, match="needs CUDA"):
        process_group_args("nccl", False, 0, 0)
    assert issubclass(DistributedError, ImsimError)  # the CLI says it on one line, exit 2


def test_without_torchrun_it_is_one_process_and_initialises_nothing(monkeypatch):
    import torch
    import torch.distributed as dist

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert init_distributed() == (0, 1) and not dist.is_initialized()
    rank, world, device = init_from_env()
    assert (rank, world) == (0, 1) and device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert dist_info() == (0, 1) and current_group() == (0, 1, None)
    destroy_distributed()  # nothing to destroy: no error


def test_a_single_process_gloo_group_is_seen_and_destroyed(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(s.getsockname()[1]))
    try:
        assert init_distributed("gloo") == (0, 1)
        assert init_distributed("gloo") == (0, 1)  # already initialised: kept
        rank, world, module = current_group()
        assert (rank, world) == (0, 1) and module is dist
    finally:
        destroy_distributed()
    assert not dist.is_initialized() and current_group()[2] is None


def test_extraction_and_the_command_line_do_not_import_the_trainer():
    code = ("import sys, imsim_lab.features.extract, imsim_lab.features.torchrun_extract, imsim_lab.distributed; "
            "print(sorted(m for m in sys.modules if m.startswith('imsim_lab.train')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    code = ("import sys; from imsim_lab.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'imsim_lab.train.trainer' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False False", r.stderr


# scripts/gpu_checks.sh sets IMSIM_REQUIRE_GPU=1: a gpu test without CUDA then fails instead of skipping
def _cuda():
    import os

    import torch

    return torch.cuda.is_available() or os.environ.get("IMSIM_REQUIRE_GPU") == "1"


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_nccl_group_binds_this_ranks_gpu(monkeypatch):
    import torch
    import torch.distributed as dist

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(k, v)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(s.getsockname()[1]))
    try:
        assert init_from_env() == (0, 1, "cuda:0")
        assert dist.get_backend() == "nccl" and torch.cuda.current_device() == 0
        x = torch.ones(3, device="cuda")
        dist.all_reduce(x)  # a collective on the bound device
        assert x.tolist() == [1.0, 1.0, 1.0]
    finally:
        destroy_distributed()
