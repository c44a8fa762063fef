"""``imsim-lab train``: one definition shared with ``python -m imsim_lab.train``, progress, resume,
the evaluation command it prints, refusals of bad input, ``--json``, torchrun; the recipe registry
(listing, an unknown name, a second recipe through the same command, the published schedule)."""

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
from imsim_lab.train import recipes
from imsim_lab.train.recipes.lyakaap import EVAL_METHOD
from support import make_bench

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


def _routed(monkeypatch, entry, argv):
    """What ``entry(argv)`` hands to the implementation: (recipe, parsed options)."""
    seen = []
    monkeypatch.setattr(train_cmd, "run_recipe", lambda recipe, args: seen.append((recipe, args)) or 0)
    assert entry(argv) == 0
    return seen[0]


def test_both_entry_points_share_one_parser_and_one_implementation(monkeypatch):
    import imsim_lab.train.__main__ as module_entry

    assert module_entry.main is train_cmd.main
    argv = ["lyakaap", "--bench", "B", "--out", "O", "--stage", "v86", "--lr", "0.05"]
    cli_recipe, cli = _routed(monkeypatch, main, ["train", *argv])
    mod_recipe, mod = _routed(monkeypatch, train_cmd.main, argv)
    assert cli_recipe is mod_recipe is recipes.get_recipe("lyakaap")
    assert cli.json is False and mod.json is True  # scripts get JSON by default
    assert {**vars(cli), "json": None} == {**vars(mod), "json": None}
    assert (cli.stage, cli.lr, cli.epochs, cli.memory_size) == ("v86", 0.05, 1, 20_000)


def test_parser_building_and_the_recipe_list_do_not_import_torch():
    code = ("import sys; from imsim_lab.cli import build_parser, main; build_parser(); "
            "assert main(['train']) == 1; print('torch' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stderr.strip() == "False", r.stderr
    assert "lyakaap" in r.stdout


def test_train_prints_weights_and_the_command_that_evaluates_them(bench, tmp_path, capsys):
    out = tmp_path / "stage"
    assert _train(bench, out, "--max-steps", "3") == 0
    cap = capsys.readouterr()
    assert [ln.split()[1] for ln in cap.err.splitlines() if ln.startswith("step ")] == ["1/3", "2/3", "3/3"]
    assert "img/s" in cap.err and "loss" in cap.err
    assert f"weights      : {out / 'weights.pt'}" in cap.out
    cmd = next(ln.strip() for ln in cap.out.splitlines() if ln.strip().startswith("imsim-lab run"))
    argv = shlex.split(cmd)
    assert argv[:3] == ["imsim-lab", "run", EVAL_METHOD] and f"model.weights_path={out / 'weights.pt'}" in argv

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


# ------------------------------------------------------------------------------------------------
# the registry: every recipe goes through the same command


def _toy_run(args, session):
    """A recipe that 'trains' ``--steps`` steps without a network: announces, reports steps, writes weights."""
    from imsim_lab.errors import ImsimError
    from imsim_lab.train import TrainResult

    if args.steps < 1:
        raise ImsimError(f"{args.out}: --steps must be >= 1")
    on_step = session.start(recipes.RunStart(f"{args.steps} steps -> {args.out}", 2 * session.world, 1, None))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history = [{"step": s, "epoch": s / args.steps, "loss": 1.0 / s, "lr": 0.1, "seconds": 0.5 * s}
               for s in range(1, args.steps + 1)]
    for rec in history:
        if on_step:
            on_step(rec)
    torch.save({"w": torch.ones(2)}, out / "weights.pt")
    res = TrainResult(out, args.steps, args.steps, history, 1.25, 0, out / "weights.pt")
    evaluate = ["imsim-lab", "run", "toy-method", "--bench", args.bench, "--out", str(out / "eval")]
    return recipes.training_summary("toy", res, session.world, 2, evaluate)


def _toy_arguments(p):
    p.add_argument("--bench", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3, help="steps to pretend")


TOY = recipes.Recipe(
    name="toy", help="a recipe of the tests", description="Pretends to train.", add_arguments=_toy_arguments,
    run=_toy_run, details=lambda: "stages: just one",
    schedule=lambda: [recipes.PublishedStep("s1: 3 steps", ("imsim-lab", "train", "toy", "--bench", "B", "--out",
                                                            "runs/s1")),
                      recipes.PublishedStep("then s2: by hand")],
    notes="on a CPU: always")


@pytest.fixture
def with_toy(monkeypatch):
    from imsim_lab.registry import Registry

    reg = Registry("recipe")
    for r in recipes.list_recipes():
        reg.add(r.name, r)
    reg.add("toy", TOY)
    monkeypatch.setattr(recipes, "RECIPES", reg)
    return TOY


def test_train_alone_lists_every_registered_recipe_with_its_help(with_toy, capsys):
    import re

    assert main(["train"]) == 1
    out = capsys.readouterr().out
    # names in one column as wide as the longest (``detector``, 8 letters, since issue 14)
    assert re.search(r"\n  lyakaap +one stage of lyakaap's", out) and re.search(r"\n  toy +a recipe of the tests", out)
    col = {m.group(1): m.end(2) - m.start(1) for m in re.finditer(r"\n  (\w+)( +)\S", out)}
    assert col["lyakaap"] == col["toy"] == col["detector"]
    assert train_cmd.main([]) == 1
    assert re.search(r"\n  toy +a recipe of the tests", capsys.readouterr().out)


@pytest.mark.parametrize("entry, prefix", [(lambda a: main(["train", *a]), "imsim-lab"),
                                           (train_cmd.main, "python -m imsim_lab.train")])
def test_an_unknown_recipe_is_one_line_and_exit_2(with_toy, capsys, entry, prefix):
    assert entry(["lyakap", "--bench", "B"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    names = ", ".join(r.name for r in recipes.list_recipes())  # lyakaap, the others registered, toy
    assert names.startswith("lyakaap, ") and names.endswith(", toy")
    assert cap.err.splitlines() == [f"{prefix}: error: unknown recipe 'lyakap'; recipes: {names}"]


def test_a_registered_recipe_runs_through_the_same_command(with_toy, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "toy", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: imsim-lab train toy ") and "Pretends to train." in out and "--steps STEPS" in out
    assert "stages: just one\n\npublished schedule (in order):\n  s1: 3 steps\n" in out
    assert "    imsim-lab train toy --bench B --out runs/s1\n  then s2: by hand\n\non a CPU: always" in out

    out_dir = tmp_path / "toy"
    assert main(["train", "toy", "--bench", "B", "--out", str(out_dir), "--steps", "2"]) == 0
    cap = capsys.readouterr()
    err = cap.err.splitlines()
    assert err[0] == f"train toy 2 steps -> {out_dir}" and [ln.split()[1] for ln in err[1:]] == ["1/2", "2/2"]
    assert f"training run : {out_dir}  (2 of 2 steps, 1.2 s, 4.0 img/s)" in cap.out
    assert f"  imsim-lab run toy-method --bench B --out {out_dir / 'eval'}" in cap.out

    assert train_cmd.main(["toy", "--bench", "B", "--out", str(out_dir)]) == 0  # JSON by default
    res = json.loads(capsys.readouterr().out)
    assert res["recipe"] == "toy" and res["steps"] == 3 and res["weights"] == str(out_dir / "weights.pt")
    assert res["world_size"] == 1 and res["evaluate"].startswith("imsim-lab run toy-method")

    assert main(["train", "toy", "--bench", "B", "--out", str(out_dir), "--steps", "0"]) == 2  # the recipe refuses
    assert capsys.readouterr().err.splitlines() == [f"imsim-lab: error: {out_dir}: --steps must be >= 1"]


def test_the_published_schedule_commands_parse_as_the_recipe_says(capsys):
    from imsim_lab.train.views import LYAKAAP_SCHEDULE

    lyakaap = recipes.get_recipe("lyakaap")
    steps = lyakaap.schedule()
    assert [s.title.split(":")[0] for s in steps] == [st.stage for st in LYAKAAP_SCHEDULE] + ["then v107"]
    parser = train_cmd.recipe_parser(lyakaap, "imsim-lab train lyakaap")
    prev = None
    for step, st in zip(steps, LYAKAAP_SCHEDULE):
        argv = list(step.argv)
        assert argv[:8] == ["torchrun", "--standalone", "--nproc_per_node", "8", "-m", "imsim_lab", "train", "lyakaap"]
        a = parser.parse_args(argv[8:])
        assert (a.stage, a.epochs, a.lr, a.lr_schedule, a.reference_negatives, a.memory_size) == \
            (st.stage, st.epochs, st.lr, st.lr_schedule, st.reference_negatives, st.memory_size)
        assert a.batch_size * 8 == st.batch_size and a.out == f"runs/{st.stage}"
        assert (a.init, a.pretrained) == ((f"runs/{prev}/weights.pt", False) if prev else (None, True))
        prev = st.stage
    assert steps[-1].argv == ()


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 2), (3, 3), (16, 4)])
def test_loader_workers_default_to_the_usable_cores(monkeypatch, cores, workers):
    """The default was 4 whatever the machine (on 2 cores: 4 processes making views beside the step's
    2 threads); now every usable core, at most 4, none on a single core."""
    import argparse

    from imsim_lab.train.recipes import base

    monkeypatch.setattr("imsim_lab.system.usable_cores", lambda: cores)
    p = argparse.ArgumentParser()
    base.add_trainer_arguments(p)
    assert base.default_workers() == workers and p.parse_args([]).workers == workers
    assert p.parse_args(["--workers", "3"]).workers == 3
