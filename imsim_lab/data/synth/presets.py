"""Sizes of the disc-synth benchmark: ``tiny`` (tests), ``small``, ``demo`` (the demo), ``medium``.

A preset is a frozen configuration; :data:`PRESETS` is a registry, so a project can add its own
(``PRESETS.add("huge", Preset(...))``). The ratios follow DISC21's dev set: about 20 % of the
queries have a match, training images are as many as references and disjoint from them.

``demo`` has enough copies per transformation family for per-family cells to mean something:
4,400 queries of which 968 have a match (22 %, so 78 % without a match as in DISC21's dev set),
balanced over the 32 families: 30 or 31 positives each (``small``: 6 or 7). Each query without a
match has its own held-out original, so the build writes 9,332 images; to stay inside the demo's
10 minutes on 2 cores its originals are smaller (long side 256-320 pixels, as ``tiny``) and it has
500 training images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...registry import Registry


@dataclass(frozen=True)
class Preset:
    """The counts and image sizes of one disc-synth build.

    Attributes:
        n_references, n_training, n_queries: image counts.
        positive_rate: share of queries with a match (DISC21 dev: 10k of 50k).
        sibling_rate: share of synthetic reference scenes that come with a near-duplicate sibling
            (also in the references; a query made from one must match only that one).
        hard_negative_rate: share of no-match queries made from a sibling of a reference (a burst
            shot of a reference scene that is not itself a reference).
        photos: use the natural photos shipped by scikit-image / scikit-learn as references.
        long_side: (min, max) long side in pixels of the synthetic originals.
        jpeg_quality: JPEG quality of every written image (fixed, so bytes are reproducible).
    """

    name: str
    n_references: int
    n_training: int
    n_queries: int
    positive_rate: float = 0.22
    sibling_rate: float = 0.06
    hard_negative_rate: float = 0.08
    photos: bool = True
    long_side: tuple[int, int] = (384, 512)
    jpeg_quality: int = 90

    @property
    def n_positives(self) -> int:
        return min(round(self.n_queries * self.positive_rate), self.n_references)

    @property
    def n_negatives(self) -> int:
        return self.n_queries - self.n_positives

    def scaled(self, **changes) -> "Preset":
        """A copy with some fields changed (``preset.scaled(n_queries=200)``)."""
        return replace(self, **changes)


PRESETS: Registry[Preset] = Registry("disc-synth preset")
PRESETS.add("tiny", Preset("tiny", n_references=40, n_training=24, n_queries=48, positive_rate=0.25,
                           sibling_rate=0.1, hard_negative_rate=0.1, long_side=(256, 320)))
PRESETS.add("small", Preset("small", n_references=1000, n_training=1000, n_queries=1000))
PRESETS.add("medium", Preset("medium", n_references=10_000, n_training=10_000, n_queries=10_000,
                             positive_rate=0.2))
PRESETS.add("demo", Preset("demo", n_references=1000, n_training=500, n_queries=4400, long_side=(256, 320)))
