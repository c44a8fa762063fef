"""Benchmark browser tables: every query next to its original, what kind of case it is, and its
recorded edit; references with their near-duplicate siblings.

Kinds of query (the vocabulary of the explorer):

* ``copy``: an edited copy of a reference: the one match to find;
* ``distractor``: made from an image that is not in the references: no match;
* ``sibling (no match)``: made from a near-duplicate shot of a reference's scene (a "hard
  negative"): another photo of the same scene is NOT a copy, so it has no match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .failures import recipe_text

QUERY_KIND_COLUMNS = ["query_id", "kind", "family", "group", "strength", "source_id", "reference_id",
                      "sibling_of", "recipe"]


def sibling_groups(bench) -> dict[str, str]:
    """image id -> sibling group ("" or absent when it has none), from ``references.parquet`` and,
    when the generator wrote one, ``originals.parquet`` (disc-synth: held-out originals too)."""
    out: dict[str, str] = {}
    refs = getattr(bench, "references", None)
    if refs is not None and "sibling_group" in refs:
        out.update({str(k): str(v) for k, v in zip(refs["reference_id"], refs["sibling_group"].fillna(""))
                    if str(v)})
    orig = Path(bench.root) / "originals.parquet"
    if orig.is_file():
        try:
            o = pd.read_parquet(orig, columns=["image_id", "sibling_group"])
            out.update({str(k): str(v) for k, v in zip(o["image_id"], o["sibling_group"].fillna("")) if str(v)})
        except Exception:  # noqa: BLE001 - an optional extra of one generator
            pass
    return out


def query_kinds(bench) -> pd.DataFrame:
    """One row per query of a benchmark: kind (see the module docstring), family and its group,
    strength, source and reference, the reference it is a sibling of (hard negatives), and the
    recipe in one line. Columns :data:`QUERY_KIND_COLUMNS`."""
    from .tables import family_groups

    q = bench.queries
    groups = sibling_groups(bench)
    refs_by_group: dict[str, list[str]] = {}
    for rid in bench.reference_ids:
        g = groups.get(str(rid))
        if g:
            refs_by_group.setdefault(g, []).append(str(rid))
    has = q["has_match"].to_numpy(bool)
    src = q["source_id"].astype(str).to_numpy()
    sib = np.array(["" if h else ", ".join(refs_by_group.get(groups.get(s, ""), [])) for h, s in zip(has, src)],
                   dtype=object)
    kind = np.where(has, "copy", np.where(sib != "", "sibling (no match)", "distractor"))
    fg = family_groups()
    df = pd.DataFrame({"query_id": q["query_id"].astype(str), "kind": kind, "family": q["family"].astype(str),
                       "group": [fg.get(f, "") for f in q["family"].astype(str)],
                       "strength": q["strength"].astype(float), "source_id": src,
                       "reference_id": q["reference_id"].astype(str), "sibling_of": sib,
                       "recipe": [recipe_text(o) for o in q["ops"]]})
    return df[QUERY_KIND_COLUMNS]


def reference_siblings(bench) -> pd.DataFrame:
    """References that have near-duplicate siblings (in the references or elsewhere).

    Columns: sibling_group, reference_id, scene, members (every image id of the group).
    """
    groups = sibling_groups(bench)
    members: dict[str, list[str]] = {}
    for k, g in groups.items():
        members.setdefault(g, []).append(k)
    refs = getattr(bench, "references", None)
    scene = dict(zip(refs["reference_id"].astype(str), refs["scene"].astype(str))) if refs is not None \
        and "scene" in refs else {}
    rows = [{"sibling_group": groups[str(r)], "reference_id": str(r), "scene": scene.get(str(r), ""),
             "members": ", ".join(sorted(members[groups[str(r)]]))}
            for r in bench.reference_ids if str(r) in groups]
    return pd.DataFrame(rows, columns=["sibling_group", "reference_id", "scene", "members"]) \
        .sort_values(["sibling_group", "reference_id"], kind="stable").reset_index(drop=True)
