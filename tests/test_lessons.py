"""Helpers of the lesson notebooks (imsim_lab.lessons) that the notebooks' smoke runs do not check."""

from pathlib import Path

import numpy as np

from support import make_bench


def test_copy_pairs_sheet_shows_the_first_copies_next_to_their_originals(tmp_path: Path):
    from imsim_lab.data.benchmark import load_benchmark
    from imsim_lab.lessons import contact_sheet, copy_pairs_sheet

    b = load_benchmark(make_bench(tmp_path / "b", n_pos=6, n_neg=3))
    pos = b.queries[b.queries["has_match"]].head(3)
    images, captions = [], []
    for q, r in zip(pos["query_id"], pos["reference_id"]):
        images += [b.load_image(q), b.load_image(r)]
        captions += [f"query {q}", f"original {r}"]
    sheet = copy_pairs_sheet(b, n=3, size=100)
    assert sheet.size == (6 * 100, 100 + 28)
    assert np.array_equal(np.asarray(sheet), np.asarray(contact_sheet(images, captions, size=100, cols=6)))
