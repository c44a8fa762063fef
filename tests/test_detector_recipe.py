"""``imsim-lab train detector`` (issue 14): imgFp's overlay detector trained on the benchmark's
training composites by the shared trainer, resumable, measured on the held-out queries, with the
``imsim-lab run imgfp`` commands that use it; bad input is one line. At toy size on disc-synth ``tiny``."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from imsim_lab.cli import main
from imsim_lab.cli import train_cmd

TOY = ["--size", "32", "--width", "4", "--composites", "64", "--batch-size", "16", "--epochs", "2",
       "--workers", "0", "--device", "cpu"]


def _errors(capsys) -> list[str]:
    """stderr without the start line and the step lines of the progress."""
    lines = capsys.readouterr().err.strip().splitlines()
    return [ln for ln in lines if not ln.startswith(("train detector ", "step "))]


def _train(bench, out, *extra):
    return main(["train", "detector", "--bench", str(bench), "--out", str(out), *TOY, *extra])


def test_train_prints_the_held_out_box_metrics_and_the_commands_that_use_the_detector(tiny_bench, tmp_path, capsys):
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.features.detector import OverlayNet, bench_boxes

    assert _train(tiny_bench, tmp_path / "det", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["recipe"] == "detector" and s["steps"] == s["total_steps"] == 2 * (64 // 16)
    det = OverlayNet.load(s["detector"])
    assert (det.config.input_size, det.config.width, det.config.head) == (32, 4, "grid")
    bench = load_benchmark(tiny_bench)
    n_true = int((~torch.from_numpy(bench_boxes(bench, bench.query_ids)).isnan().any(1)).sum())
    assert [b["threshold"] for b in s["boxes"]] == [0.5, 0.55]
    assert all(b["true_boxes"] == n_true > 0 and 0 <= b["hits"] <= b["kept"] <= len(bench.query_ids)
               for b in s["boxes"])
    argv = shlex.split(s["evaluate"])
    assert argv[:3] == ["imsim-lab", "run", "imgfp"] and f"detector={s['detector']}" in argv
    crops = shlex.split(s["evaluate_global_crops"])
    assert f"candidates.crops={s['detector']}" in crops
    # the printed command runs as printed (a cheaper candidate method and fewer keypoints, for the test)
    crops[crops.index("--out") + 1] = str(tmp_path / "imgfp")
    assert main([*crops[1:], "-p", "candidates.method=pdq", "-p", "max_keypoints=40", "--device", "cpu"]) == 0
    cfg = json.loads((tmp_path / "imgfp" / "config.json").read_text())
    assert cfg["candidates"]["crops_threshold"] == 0.55 and cfg["candidates"]["crops"] == s["detector"]
    assert cfg["matcher_report"]["crops"]["threshold"] == 0.5
    capsys.readouterr()
    # the human-readable summary names the measurement and the command
    assert _train(tiny_bench, tmp_path / "det") == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "box recall" in out and "threshold 0.55" in out
    assert "imsim-lab run imgfp" in out


def test_a_cut_run_resumes_and_ends_where_an_uninterrupted_one_ends(tiny_bench, tmp_path, capsys, monkeypatch):
    args = ("--checkpoint-every", "1", "--json")
    assert _train(tiny_bench, tmp_path / "whole", *args) == 0
    capsys.readouterr()
    real_call = train_cmd.StepProgress.__call__

    def killed_at_step_3(self, rec):
        real_call(self, rec)
        if rec["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_cmd.StepProgress, "__call__", killed_at_step_3)
    assert _train(tiny_bench, tmp_path / "cut", *args) == 130
    assert not (tmp_path / "cut" / "detector.pt").exists()
    monkeypatch.setattr(train_cmd.StepProgress, "__call__", real_call)
    capsys.readouterr()
    assert _train(tiny_bench, tmp_path / "cut", *args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["resumed_from"] == 2 and again["steps"] == 8
    a = torch.load(tmp_path / "whole" / "detector.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "cut" / "detector.pt", weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another shape in the same folder is another configuration: one line
    assert _train(tiny_bench, tmp_path / "cut", "--width", "8") == 2
    err = _errors(capsys)
    assert len(err) == 1 and "another configuration" in err[0] and str(tmp_path / "cut") in err[0]


@pytest.mark.parametrize("case", ["shape", "garbage", "missing"])
def test_an_init_detector_of_another_shape_is_one_line_and_exit_2(tiny_bench, tmp_path, capsys, case):
    from imsim_lab.features.detector import DetectorConfig, OverlayNet

    init = tmp_path / "init.pt"
    if case == "shape":
        OverlayNet(DetectorConfig(input_size=32, width=8)).save(init)
    elif case == "garbage":
        init.write_bytes(b"not a checkpoint")
    assert _train(tiny_bench, tmp_path / "det", "--init", str(init)) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith("imsim-lab: error: ") and str(init) in err[0], err
    if case == "shape":
        assert "width 8 (asked 4)" in err[0]
    assert not (tmp_path / "det").exists()


def test_an_init_of_the_same_shape_is_the_starting_point(tiny_bench, tmp_path, capsys):
    from imsim_lab.features.detector import DetectorConfig, OverlayNet

    init = tmp_path / "init.pt"
    OverlayNet(DetectorConfig(input_size=32, width=4, seed=7)).save(init)
    assert _train(tiny_bench, tmp_path / "a", "--init", str(init), "--max-steps", "1", "--lr", "1e-9", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    got = torch.load(s["detector"], weights_only=True)["state"]
    ref = OverlayNet.load(init).net.state_dict()
    conv = "body.0.0.weight"
    assert torch.allclose(got[conv], ref[conv], atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() and __import__("os").environ.get("IMSIM_REQUIRE_GPU") != "1",
                    reason="needs CUDA")
def test_the_recipe_trains_on_cuda_with_amp(tiny_bench, tmp_path, capsys):
    from imsim_lab.features.detector import OverlayNet

    assert _train(tiny_bench, tmp_path / "det", "--device", "cuda", "--amp", "auto", "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["steps"] == 8 and len(s["boxes"]) == 2
    det = OverlayNet.load(s["detector"])  # saved from the CPU copy: loads anywhere
    assert next(det.net.parameters()).device.type == "cpu"
