"""``imsim-lab train``: one definition shared with ``python -m imsim_lab.train``, progress, resume,
the evaluation command it prints, refusals of bad input, ``--json``, torchrun."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imsim_lab.cli import main
from imsim_lab.cli import train_cmd
from test_runs import make_bench

TINY = ["--backbone", "test_resnet", "--size", "32", "--batch-size", "4", "--memory-size", "64", "--workers", "0"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("bench") / "b", n_train=16)


def _train(bench, out, *extra):
    return main(["train", "lyakaap", "--bench", str(bench), "--out", str(out), *TINY, *extra])


def test_help_lists_recipes_and_explains_the_stages(capsys):
    assert main(["train"]) == 1
    assert "lyakaap" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["train", "lyakaap", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for stage, size in (("v83", 256), ("v86", 384), ("v98", 512)):
        assert f"{stage}  {size} px" in out
    assert "--init runs/v86/weights.pt" in out and "--reference-negatives 2" in out and "v107" in out


def test_both_entry_points_share_one_parser_and_one_implementation():
    import imsim_lab.train.__main__ as module_entry
    from imsim_lab.cli import build_parser

    assert module_entry.main is train_cmd.main

    def options(parser, path):
        for name in path:
            parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
        return {s: (a.default, a.help) for a in parser._actions for s in a.option_strings}, parser.get_default("func")

    cli, cli_func = options(build_parser(), ["train", "lyakaap"])
    ap = train_cmd.argparse.ArgumentParser()
    train_cmd.add_recipes(ap, json_default=True)
    mod, mod_func = options(ap, ["lyakaap"])
    assert cli.pop("--json")[0] is False and mod.pop("--json")[0] is True  # scripts get JSON by default
    assert cli == mod and cli_func is mod_func is train_cmd.run_lyakaap


def test_parser_building_does_not_import_torch():
    code = "import sys; from imsim_lab.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_train_prints_weights_and_the_command_that_evaluates_them(bench, tmp_path, capsys):
    out = tmp_path / "stage"
    assert _train(bench, out, "--max-steps", "3") == 0
    cap = capsys.readouterr()
    assert [ln.split()[1] for ln in cap.err.splitlines() if ln.startswith("step ")] == ["1/3", "2/3", "3/3"]
    assert "img/s" in cap.err and "loss" in cap.err
    assert f"weights      : {out / 'weights.pt'}" in cap.out
    cmd = next(ln.strip() for ln in cap.out.splitlines() if ln.strip().startswith("imsim-lab run"))
    argv = shlex.split(cmd)
    assert argv[:3] == ["imsim-lab", "run", train_cmd.EVAL_METHOD] and f"model.weights_path={out / 'weights.pt'}" in argv

    # the printed command is a real run of the trained network: its descriptors are the trained net's
    assert main(argv[1:] + ["--workers", "0", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    run = Path(res["out"])
    assert run == out / "eval" and 0.0 <= res["isc2021"]["micro_ap"] <= 1.0
    from imsim_lab.train.lyakaap import iscnet

    net = iscnet("test_resnet", 32, device="cpu", weights_path=out / "weights.pt")
    ids = np.load(run / "features" / "query_ids.npy", allow_pickle=False)
    with Image.open(bench / "queries" / f"{ids[0]}.jpg") as im:
        x = net.embed([net.preprocess(im.convert("RGB"))])
    np.testing.assert_allclose(np.load(run / "features" / "query.npy")[0], x[0], atol=1e-5)


def test_resume_does_not_redo_steps_and_ends_where_an_uninterrupted_run_ends(bench, tmp_path, capsys, monkeypatch):
    args = ("--max-steps", "3", "--checkpoint-every", "1", "--json")
    assert _train(bench, tmp_path / "whole", *args) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["steps"] == 3 and whole["resumed_from"] == 0 and whole["world_size"] == 1
    assert whole["weights"] == str(tmp_path / "whole" / "weights.pt") and whole["images_per_second"] > 0
    assert whole["evaluate"].startswith("imsim-lab run iscnet ")

    real_call = train_cmd.StepProgress.__call__

    def killed_at_step_2(self, rec):
        real_call(self, rec)
        if rec["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_cmd.StepProgress, "__call__", killed_at_step_2)
    assert _train(bench, tmp_path / "cut", *args) == 130  # checkpoint of step 1 is on disk
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(train_cmd.StepProgress, "__call__", real_call)

    assert _train(bench, tmp_path / "cut", *args) == 0
    cap = capsys.readouterr()
    again = json.loads(cap.out)
    assert again["resumed_from"] == 1 and again["steps"] == 3
    assert [ln.split()[1] for ln in cap.err.splitlines() if ln.startswith("step ")] == ["2/3", "3/3"]
    a = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    before = (tmp_path / "cut" / "weights.pt").read_bytes()
    assert _train(bench, tmp_path / "cut", *args[:-1]) == 0  # finished: nothing is redone
    cap = capsys.readouterr()
    assert "already finished: 3 of 3 steps" in cap.out and "step " not in cap.err
    assert (tmp_path / "cut" / "weights.pt").read_bytes() == before


def _bad_init(tmp_path, kind):
    from imsim_lab.train.lyakaap import iscnet

    p = tmp_path / f"{kind}.pt"
    if kind == "shapes":
        torch.save(iscnet("test_resnet", 32, dim=64, device="cpu").module.state_dict(), p)
    elif kind == "garbage":
        p.write_bytes(b"not a torch file")
    return p


@pytest.mark.parametrize("case, message", [
    ("not_a_benchmark", "not a benchmark folder"),
    ("no_training", "no training images"),
    ("init_missing", "--init weights file not found"),
    ("init_shapes", "tensors of other shapes"),
    ("init_garbage", "not a readable weights file"),
    ("stage", "--stage 'v99': unknown"),
    ("backbone", "not a timm model"),
    ("corrupt_training", "unreadable training image"),
])
def test_bad_input_is_one_line_naming_the_file_and_exit_2(bench, tmp_path, capsys, case, message):
    import shutil

    target, extra = bench, []
    named = None
    if case == "not_a_benchmark":
        target = named = tmp_path
    elif case == "no_training":
        target = tmp_path / "b"
        shutil.copytree(bench, target)
        for f in (target / "training").iterdir():
            f.unlink()
        named = target / "training"
    elif case.startswith("init_"):
        named = _bad_init(tmp_path, case[5:])
        extra = ["--init", str(named)]
    elif case == "stage":
        extra = ["--stage", "v99"]
    elif case == "backbone":
        extra = ["--backbone", "no_such_net"]
    else:  # read in a DataLoader worker: the message still comes out on one line
        target = tmp_path / "b"
        shutil.copytree(bench, target)
        named = target / "training" / "T000003.jpg"
        named.write_bytes(b"not a jpeg")
        extra = ["--workers", "1", "--max-steps", "4"]
    out = tmp_path / "stage"
    assert main(["train", "lyakaap", "--bench", str(target), "--out", str(out), *TINY, *extra]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith(("train lyakaap ", "step "))]
    assert len(err) == 1 and err[0].startswith("imsim-lab: error: ") and message in err[0], err
    if named is not None:
        assert str(named) in err[0]
    if case != "corrupt_training":  # found while training: the run folder holds its configuration only
        assert not out.exists()  # nothing written for a command that cannot run


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise(capsys):
    recs = [{"step": s, "epoch": s / 4, "loss": 1.0 / s, "lr": 0.1, "seconds": 0.5 * (s - 1)} for s in (2, 3, 4)]
    lines = train_cmd.StepProgress(per_step=8, epochs=2, max_steps=None, tty=False)
    for r in recs:
        lines(r)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("step 2/8 epoch 0.50 loss 0.5000") and err[1].endswith("16.0 img/s") and len(err) == 3

    bar = train_cmd.StepProgress(per_step=8, epochs=2, max_steps=6, tty=True)
    for r in recs:
        bar(r)
    assert bar.bar.total == 6 and bar.bar.n == 4
    bar.close()
    err = capsys.readouterr().err
    assert "train" in err and "4/6" in err and "16.0 img/s" in err and "step 2/" not in err


@pytest.mark.slow
def test_torchrun_two_processes_through_the_cli(bench, tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "imsim_lab", "train", "lyakaap", "--bench", str(bench), "--out", str(out), *TINY,
                        "--max-steps", "2", "--json"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # rank 0 only
    res = json.loads(lines[0])
    assert res["world_size"] == 2 and res["steps"] == 2 and Path(res["weights"]).is_file()
    assert sum(ln.startswith("step ") for ln in r.stderr.splitlines()) == 2
