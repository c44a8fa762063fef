"""``imsim-lab bench import``: your own folder becomes a benchmark; bad folders get one line."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imsim_lab.cli import main
from imsim_lab.data.benchmark import BenchmarkError, load_benchmark
from imsim_lab.data.import_folder import import_folder


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(path)


def make_src(root: Path, disc_names: bool = True, training: bool = True) -> Path:
    q = ["Q00000", "Q00001", "Q00002"] if disc_names else ["holiday", "cat_copy", "meme"]
    r = ["R000000", "R000001"] if disc_names else ["cat", "beach"]
    for i, n in enumerate(q):
        _img(root / "queries" / f"{n}.jpg", i)
    for i, n in enumerate(r):
        _img(root / "references" / f"{n}.png", 10 + i)
    if training:
        _img(root / "training" / ("T000000.jpg" if disc_names else "x.jpg"), 20)
    (root / "ground_truth.csv").write_text(f"query_id,reference_id\n{q[0]},\n{q[1]},{r[0]}\n{q[2]},{r[1]}\n")
    return root


def test_import_keeps_disc21_ids(tmp_path):
    src = make_src(tmp_path / "mine")
    rep = import_folder(src, tmp_path / "bench")
    b = load_benchmark(tmp_path / "bench")
    assert list(b.query_ids) == ["Q00000", "Q00001", "Q00002"] and list(b.training_ids) == ["T000000"]
    assert dict(zip(b.gt.query_ids, b.gt.reference_ids)) == {"Q00000": "", "Q00001": "R000000", "Q00002": "R000001"}
    assert set(b.queries["family"]) == {"unknown"} and b.queries["strength"].isna().all()
    assert rep.positives == 2 and rep.renamed == () and rep.linked + rep.copied == 6
    assert not (tmp_path / "bench" / "id_map.csv").exists()


def test_import_renames_other_names(tmp_path):
    import pandas as pd

    src = make_src(tmp_path / "mine", disc_names=False)
    rep = import_folder(src, tmp_path / "bench")
    b = load_benchmark(tmp_path / "bench")
    m = pd.read_csv(tmp_path / "bench" / "id_map.csv")
    assert set(rep.renamed) == {"query", "reference", "training"}
    ids = {(s, o): i for s, i, o in m.itertuples(index=False)}
    # sorted names: beach -> R000000, cat -> R000001; the truth follows the renaming
    assert ids[("reference", "beach.png")] == "R000000" and ids[("reference", "cat.png")] == "R000001"
    truth = dict(zip(b.gt.query_ids, b.gt.reference_ids))
    assert truth[ids[("query", "cat_copy.jpg")]] == "R000001" and truth[ids[("query", "holiday.jpg")]] == ""
    q = b.queries.set_index("query_id")
    assert q.loc[ids[("query", "meme.jpg")], "source_id"] == "meme.jpg"


@pytest.mark.parametrize("breakage, message", [
    ("no_refs", "missing references/"),
    ("no_csv", "no ground-truth CSV"),
    ("missing_query_image", "queries have no image"),
    ("unlisted_query", "not listed"),
    ("missing_reference", "references have no image"),
    ("bad_header", "header"),
])
def test_bad_folders_one_line(tmp_path, capsys, breakage, message):
    src = make_src(tmp_path / "mine")
    if breakage == "no_refs":
        for p in (src / "references").iterdir():
            p.unlink()
        (src / "references").rmdir()
    elif breakage == "no_csv":
        (src / "ground_truth.csv").unlink()
    elif breakage == "missing_query_image":
        (src / "queries" / "Q00001.jpg").unlink()
    elif breakage == "unlisted_query":
        _img(src / "queries" / "Q00009.jpg", 5)
    elif breakage == "missing_reference":
        (src / "references" / "R000001.png").unlink()
    elif breakage == "bad_header":
        (src / "ground_truth.csv").write_text("q,r\nQ00000,\n")
    with pytest.raises(BenchmarkError, match=message):
        import_folder(src, tmp_path / "bench")
    rc = main(["bench", "import", str(src), "--out", str(tmp_path / "bench2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


def test_cli_import_and_refuses_nonempty_out(tmp_path, capsys):
    src = make_src(tmp_path / "mine")
    assert main(["bench", "import", str(src), "--out", str(tmp_path / "b")]) == 0
    assert "3 queries (2 with a match)" in capsys.readouterr().out
    assert main(["bench", "import", str(src), "--out", str(tmp_path / "b")]) == 2
    assert "not empty" in capsys.readouterr().err
