"""The plan of a disc-synth build: every original and every query, decided before any pixel.

The plan is a pure function of (preset, seed, the list of usable source files): which scene or
photo each reference, held-out original and training image is, which sibling groups exist, which
original each query is made from, with which family and strength, and every per-image seed. The
workers then only execute it, so the result does not depend on the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..benchmark import make_ids
from .photos import PhotoFile
from .presets import Preset

#: aspect ratios (w / h) of the synthetic originals, as in photo collections
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 9 / 16, 5 / 4)
#: codes of the seed streams (one per role) so that no two images share a seed
STREAM = {"reference": 1, "held_out": 2, "training": 3, "query": 4, "plan": 5}


@dataclass(frozen=True)
class Original:
    """One original image to write.

    Attributes:
        image_id: ``R…``, ``H…`` or ``T…``.
        kind: "scene" (drawn), "photo" (packaged photo) or "user" (a file of ``--source``).
        scene: the scene family, "photo" or "user".
        seed: structural seed of a drawn scene (0 otherwise).
        sibling: 0 for a scene, k > 0 for its k-th near-duplicate.
        sibling_group: shared by near-duplicates ("" when alone).
        source: "scene:<family>/<seed>", "skimage:astronaut", or the user file's relative path.
        size: (w, h) of a drawn scene; (0, 0) for files (their own size, capped).
        path: the file of a photo or user image.
    """

    image_id: str
    kind: str
    scene: str
    seed: int = 0
    sibling: int = 0
    sibling_group: str = ""
    source: str = ""
    size: tuple[int, int] = (0, 0)
    path: str = ""


@dataclass(frozen=True)
class QuerySpec:
    """One query: the original it is made from, its family, strength, seed and case.

    ``case`` is "copy" (has a match), "no_match" (made from a held-out original) or
    "sibling_no_match" (made from a near-duplicate of a reference that is not a reference).
    """

    query_id: str
    source_id: str
    reference_id: str
    family: str
    strength: float
    seed: int
    case: str


@dataclass
class Plan:
    references: list[Original] = field(default_factory=list)
    held_out: list[Original] = field(default_factory=list)
    training: list[Original] = field(default_factory=list)
    queries: list[QuerySpec] = field(default_factory=list)

    @property
    def originals(self) -> list[Original]:
        return self.references + self.held_out + self.training


def derive_seed(seed: int, stream: str, index: int) -> int:
    """A 63-bit seed for image ``index`` of a stream, independent of every other image."""
    return int(np.random.SeedSequence([int(seed), STREAM[stream], int(index)]).generate_state(2, np.uint64)[0] >> 1)


def _size(rng: np.random.Generator, long_side: tuple[int, int]) -> tuple[int, int]:
    ls = int(rng.integers(long_side[0], long_side[1] + 1))
    a = ASPECTS[int(rng.integers(len(ASPECTS)))]
    return (ls, max(round(ls / a), 64)) if a >= 1 else (max(round(ls * a), 64), ls)


def _pick_scene(rng: np.random.Generator, names: list[str], weights: np.ndarray) -> str:
    return names[int(rng.choice(len(names), p=weights))]


def _select_photos(rng: np.random.Generator, photos: list[PhotoFile], n: int) -> list[PhotoFile]:
    """Up to ``n`` photos, whole sibling groups only, in the packaged order."""
    groups: dict[str, list[PhotoFile]] = {}
    for p in photos:
        groups.setdefault(p.sibling_group or p.name, []).append(p)
    keys = list(groups)
    chosen: list[PhotoFile] = []
    for k in [keys[i] for i in rng.permutation(len(keys))]:
        if len(chosen) + len(groups[k]) <= n:
            chosen += groups[k]
    order = {p.name: i for i, p in enumerate(photos)}
    return sorted(chosen, key=lambda p: order[p.name])


def plan_synthetic(preset: Preset, seed: int, scene_weights: dict[str, float], sibling_ok: set[str],
                   photos: list[PhotoFile], families: list[str]) -> Plan:
    """Plan a build whose originals are drawn scenes (plus the packaged photos)."""
    rng = np.random.default_rng([int(seed), STREAM["plan"]])
    names = sorted(scene_weights)
    weights = np.array([scene_weights[n] for n in names], np.float64)
    weights /= weights.sum()
    plan = Plan()
    ref_ids = make_ids("R", preset.n_references)
    n_photo = min(len(photos), max(preset.n_references // 8, 0)) if preset.photos else 0
    chosen = _select_photos(rng, photos, n_photo)
    refs: list[Original] = [Original("", "photo", "photo", sibling_group=p.sibling_group, source=p.name, path=p.path)
                            for p in chosen]
    # scene groups: (scene, seed, size, members among the references)
    groups: list[tuple[str, int, tuple[int, int], int]] = []
    n_left = preset.n_references - len(refs)
    while n_left > 0:
        scene = _pick_scene(rng, names, weights)
        s = derive_seed(seed, "reference", len(groups))
        size = _size(rng, preset.long_side)
        members = 2 if scene in sibling_ok and n_left >= 2 and rng.random() < preset.sibling_rate else 1
        groups.append((scene, s, size, members))
        n_left -= members
    n_neg = preset.n_negatives
    candidates = [i for i, gr in enumerate(groups) if gr[0] in sibling_ok]
    n_hard = min(round(n_neg * preset.hard_negative_rate), len(candidates))
    hard = sorted(int(candidates[int(j)]) for j in rng.choice(len(candidates), size=n_hard, replace=False)) \
        if n_hard else []
    hard_set = set(hard)
    for gi, (scene, s, size, members) in enumerate(groups):
        name = f"g{gi:06d}" if members > 1 or gi in hard_set else ""
        for k in range(members):
            refs.append(Original("", "scene", scene, s, k, name, f"scene:{scene}/{s}", size))
    order = rng.permutation(len(refs))  # photos and siblings spread over the id range
    plan.references = [_with_id(refs[j], ref_ids[i]) for i, j in enumerate(order)]

    held: list[Original] = []
    for gi in hard:  # a burst shot of a reference scene that is not itself a reference
        scene, s, size, members = groups[gi]
        held.append(Original("", "scene", scene, s, members, f"g{gi:06d}", f"scene:{scene}/{s}", size))
    for i in range(n_neg - len(held)):
        scene = _pick_scene(rng, names, weights)
        s = derive_seed(seed, "held_out", i)
        held.append(Original("", "scene", scene, s, 0, "", f"scene:{scene}/{s}", _size(rng, preset.long_side)))
    held = [held[j] for j in rng.permutation(len(held))]
    plan.held_out = [_with_id(o, i) for o, i in zip(held, make_ids("H", len(held)))]

    for i, tid in enumerate(make_ids("T", preset.n_training)):
        scene = _pick_scene(rng, names, weights)
        s = derive_seed(seed, "training", i)
        plan.training.append(Original(tid, "scene", scene, s, 0, "", f"scene:{scene}/{s}", _size(rng, preset.long_side)))
    plan.queries = _plan_queries(rng, seed, plan, preset.n_positives, families)
    return plan


def plan_from_files(preset: Preset, seed: int, n_files: int, families: list[str]) -> tuple[Plan, list[int]]:
    """Plan a build whose originals are ``n_files`` user images (already checked and staged).

    The files are shuffled with the seed and split into references, held-out originals and
    training images in the proportions of the preset. Returns (plan, file index of each original
    in the order ``plan.originals``).
    """
    rng = np.random.default_rng([int(seed), STREAM["plan"]])
    total = preset.n_references + preset.n_negatives + preset.n_training
    n_ref = min(preset.n_references, round(n_files * preset.n_references / total))
    n_held = min(preset.n_negatives, round(n_files * preset.n_negatives / total))
    n_train = min(preset.n_training, n_files - n_ref - n_held)
    perm = rng.permutation(n_files)
    plan = Plan()
    idx = [int(i) for i in perm[: n_ref + n_held + n_train]]
    for k, (letter, n) in enumerate((("R", n_ref), ("H", n_held), ("T", n_train))):
        start = (0, n_ref, n_ref + n_held)[k]
        target = (plan.references, plan.held_out, plan.training)[k]
        for image_id, fi in zip(make_ids(letter, n), idx[start:start + n]):
            target.append(Original(image_id, "user", "user", source=str(fi)))
    n_pos = min(preset.n_positives, n_ref)
    plan.queries = _plan_queries(rng, seed, plan, n_pos, families)
    return plan, idx


def _with_id(o: Original, image_id: str) -> Original:
    return Original(image_id, o.kind, o.scene, o.seed, o.sibling, o.sibling_group, o.source, o.size, o.path)


def _spread(rng: np.random.Generator, families: list[str], n: int) -> list[str]:
    """n family names, each family as often as possible (balanced), in random order."""
    reps = -(-n // max(len(families), 1))
    out: list[str] = []
    for _ in range(reps):
        out += [families[int(i)] for i in rng.permutation(len(families))]
    return out[:n]


def _plan_queries(rng: np.random.Generator, seed: int, plan: Plan, n_pos: int, families: list[str]) -> list[QuerySpec]:
    refs = plan.references
    pos_src = [refs[int(i)] for i in np.sort(rng.choice(len(refs), size=n_pos, replace=False))] if n_pos else []
    rows = []
    for o, fam in zip(pos_src, _spread(rng, families, len(pos_src))):
        rows.append((o.image_id, o.image_id, fam, "copy"))
    for o, fam in zip(plan.held_out, _spread(rng, families, len(plan.held_out))):
        rows.append((o.image_id, "", fam, "sibling_no_match" if o.sibling_group else "no_match"))
    strengths = rng.uniform(0.0, 1.0, len(rows))
    order = rng.permutation(len(rows))  # positives and negatives interleave
    out = []
    for qi, (k, qid) in enumerate(zip(order, make_ids("Q", len(rows)))):
        src, ref, fam, case = rows[int(k)]
        out.append(QuerySpec(qid, src, ref, fam, round(float(strengths[int(k)]), 4), derive_seed(seed, "query", qi), case))
    return out
