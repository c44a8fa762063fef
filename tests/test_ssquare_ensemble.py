"""The method ``ssquare_ensemble`` end to end on the tiny benchmark: two drip-trained members from
``imsim-lab train ssquare``, their descriptors concatenated (each exactly what the member gives
alone), PCA whitening fitted on the training images + L2 (= ``whitened_ensemble``), the query shift;
and the bad inputs of a run (weights of another architecture or embedding size, missing members):
one line, exit 2, no run folder written."""

import json
import shutil

import numpy as np
import pytest

from imsim_lab.cli import main

MEMBERS = {"a": ("test_resnet", 32, 16), "b": ("test_efficientnet", 40, 8)}


@pytest.fixture(scope="module")
def members(tiny_bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    out = {}
    for name, (backbone, size, dim) in MEMBERS.items():
        run = root / name
        assert main(["train", "ssquare", "--bench", str(tiny_bench), "--out", str(run), "--backbone", backbone,
                     "--size", str(size), "--dim", str(dim), "--classes", "8,16", "--max-steps", "1",
                     "--batch-size", "4", "--workers", "0", "--seed", "1", "--json"]) == 0
        out[name] = run
    return out


def _run(bench, out, *params):
    args = ["run", "ssquare_ensemble", "--bench", str(bench), "--out", str(out), "--workers", "0", "--json"]
    for p in params:
        args += ["-p", p]
    return main(args)


def test_the_ensemble_is_the_whitened_concatenation_of_its_members(tiny_bench, members, tmp_path, capsys):
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.features.models import create_model
    from imsim_lab.features.store import load_features
    from imsim_lab.methods import get_method, prepare
    from imsim_lab.methods.postprocess import ssquare_shift
    from imsim_lab.runfolder import read_config
    from imsim_lab.train.ssquare import whitened_ensemble

    capsys.readouterr()
    out = tmp_path / "run"
    # one member named by its run folder, the other by its weights.pt
    spec = json.dumps([str(members["a"]), str(members["b"] / "weights.pt")])
    assert _run(tiny_bench, out, f"model.members={spec}", "dim=12", "K=10") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["isc2021"]["micro_ap"] <= 1
    cfg = read_config(out)
    got = cfg["model"]["extra"]["members"]
    assert [(m["backbone"], m["input_size"], m["dim"]) for m in got] == list(MEMBERS.values())
    assert all(len(m["weights_sha256"]) == 64 for m in got) and cfg["model"]["dim"] == 24
    assert cfg["notes"]["pca_dim"] == 12 and (out / "descriptors.h5").is_file()
    assert "weights" not in cfg["notes"]  # trained members: no "random weights" warning

    # the run's raw features are the members' own descriptors side by side
    bench = load_benchmark(tiny_bench)
    fs = {s: load_features(out / "features", s) for s in ("query", "reference", "training")}
    ids = list(fs["query"].ids[:5])
    singles = []
    for name, (backbone, size, dim) in MEMBERS.items():
        m = create_model("ssquare_net", device="cpu", backbone=backbone, input_size=size, dim=dim,
                         weights_path=str(members[name] / "weights.pt"))
        singles.append(m.embed([m.preprocess(bench.load_image(i)) for i in ids]))
    assert np.allclose(fs["query"].x[:5], np.hstack(singles), atol=1e-5)

    # post-processing: whitened_ensemble of the members' parts, then the shift (a=0: none)
    parts = {s: [fs[s].x[:, :16], fs[s].x[:, 16:]] for s in fs}
    yq, yb, yt = whitened_ensemble(parts["query"], parts["reference"], parts["training"], dim=12)
    ens = get_method("ssquare_ensemble")
    _, p = ens.resolve({"dim": 12, "K": 10})
    prep = prepare(ens, fs["query"].x, fs["reference"].x, fs["training"].x, p, backend="numpy")
    assert np.allclose(prep.xb, yb, atol=1e-4)
    assert np.allclose(prep.xq, ssquare_shift(yq, yt, 1.8, 10, 3, "numpy"), atol=1e-4)
    _, p0 = ens.resolve({"dim": 12, "a": 0.0})
    assert np.allclose(prepare(ens, fs["query"].x, fs["reference"].x, fs["training"].x, p0, backend="numpy").xq,
                       yq, atol=1e-4)

    # the same members again: the finished run is reused
    assert _run(tiny_bench, out, f"model.members={spec}", "dim=12", "K=10") == 0
    assert json.loads(capsys.readouterr().out)["reused"]


def test_bad_members_and_bad_weights_are_one_line_and_write_nothing(tiny_bench, members, tmp_path, capsys):
    a, b = members["a"], members["b"]
    other = tmp_path / "sscd_run"
    other.mkdir()
    shutil.copy(a / "weights.pt", other / "weights.pt")
    (other / "train_config.json").write_text(json.dumps({"run": {"recipe": "sscd", "config": {}}}))
    cases = [
        ([], "give its members"),
        ([f"model.members={json.dumps([str(tmp_path / 'nowhere')])}"], "weights file not found"),
        # weights of another architecture, of another embedding size
        ([f"model.members={json.dumps([{'weights_path': str(a / 'weights.pt'), 'backbone': 'test_efficientnet', 'input_size': 32, 'dim': 16}])}"],
         "does not fit test_efficientnet with a 16-d embedding"),
        ([f"model.members={json.dumps([{'weights_path': str(b / 'weights.pt'), 'backbone': 'test_efficientnet', 'input_size': 40, 'dim': 32}])}"],
         "does not fit test_efficientnet with a 32-d embedding"),
        ([f"model.members={json.dumps([str(other)])}"], "not an S-square one"),
        ([f"model.members={json.dumps([{'weights_path': str(b / 'weights.pt'), 'oops': 1}])}"], "unknown keys"),
    ]
    for params, msg in cases:
        fresh = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        assert _run(tiny_bench, fresh, *params) == 2, params
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
        assert not fresh.exists()


def test_a_single_trained_net_with_weights_of_another_architecture_is_refused_before_the_run(
        tiny_bench, members, tmp_path, capsys):
    w = members["a"] / "weights.pt"
    for method, extra, msg in (
            ("ssquare", ["model.backbone=test_efficientnet", "model.dim=16"], "does not fit test_efficientnet"),
            ("ssquare", ["model.backbone=test_resnet", "model.dim=32"], "with a 32-d embedding"),
            # S-square weights (neck without bias, trainable p) given to the SSCD net (linear with bias)
            ("sscd_repro", ["model.backbone=test_resnet", "model.dim=16"], "does not fit test_resnet")):
        fresh = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        args = ["run", method, "--bench", str(tiny_bench), "--out", str(fresh), "-p", f"model.weights_path={w}",
                "--workers", "0"]
        for p in extra:
            args += ["-p", p]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err and str(w) in err, err
        assert not fresh.exists()
