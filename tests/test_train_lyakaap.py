"""lyakaap's recipe on a benchmark folder, and the ``python -m imsim_lab.train`` entry point."""

import json

import pytest
import torch

from imsim_lab.train.lyakaap import iscnet, model_args, split_queries, torchrun_command
from imsim_lab.train.views import LYAKAAP_SCHEDULE


@pytest.fixture(scope="module")
def tiny(tiny_bench):
    return tiny_bench


def test_torchrun_command_follows_the_schedule(tmp_path):
    cmd = torchrun_command("/b", tmp_path / "s3", LYAKAAP_SCHEDULE[2], 8, init="/w.pt")
    s = " ".join(cmd)
    assert "--nproc_per_node=8" in s and "-m imsim_lab.train lyakaap" in s
    assert "--stage v98" in s and "--batch-size 8" in s and "--lr-schedule linear" in s
    assert "--reference-negatives 2" in s and "--init /w.pt" in s and "--pretrained" not in s
    assert "--pretrained" in torchrun_command("/b", tmp_path, LYAKAAP_SCHEDULE[0], 4)


def test_split_queries_is_reproducible_and_disjoint():
    a, b = split_queries([f"Q{i:05d}" for i in range(11)], 0.5, seed=1)
    assert (a, b) == split_queries([f"Q{i:05d}" for i in range(10, -1, -1)], 0.5, seed=1)
    assert not set(a) & set(b) and len(a) + len(b) == 11


def test_iscnet_weights_round_trip(tmp_path):
    m = iscnet("test_resnet", 32, device="cpu")
    torch.save(m.module.state_dict(), tmp_path / "w.pt")
    args = model_args("test_resnet", 32, weights_path=tmp_path / "w.pt")
    assert len(args["weights_sha256"]) == 64
    m2 = iscnet("test_resnet", 32, device="cpu", weights_path=tmp_path / "w.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.module.eval()(x), m2.module.eval()(x))


@pytest.mark.slow
def test_module_entry_point_trains_resumes_and_refuses(tiny, tmp_path, capsys):
    from imsim_lab.train.__main__ import main

    out = tmp_path / "stage"
    argv = ["lyakaap", "--bench", str(tiny), "--out", str(out), "--backbone", "test_resnet", "--size", "32",
            "--max-steps", "2", "--batch-size", "4", "--memory-size", "64", "--workers", "0",
            "--reference-negatives", "1", "--checkpoint-every", "1"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["steps"] == 2 and (out / "weights.pt").is_file() and res["world_size"] == 1
    assert main(argv) == 0  # finished: resumes at the end, nothing to do
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_from"] == 2
    assert main(argv[:-2] + ["--checkpoint-every", "5", "--lr", "0.01"]) == 2  # another configuration
    assert "another configuration" in capsys.readouterr().err
    assert main(["lyakaap", "--bench", str(tmp_path), "--out", str(out)]) == 2  # not a benchmark
