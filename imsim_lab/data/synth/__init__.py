"""disc-synth: an embedded, offline, deterministic benchmark in the DISC21 format.

    from imsim_lab.data.synth import BuildConfig, build_benchmark
    build_benchmark(BuildConfig(preset="tiny", seed=0), "bench/tiny")

Originals are drawn scenes of many families (:mod:`.scenes`) plus the natural photos shipped by
scikit-image and scikit-learn (:mod:`.photos`), or a user's own photos (``source=``). Queries are
made from them with the transformation families of :mod:`imsim_lab.data.augment`. See
``data_manifests/disc-synth.md`` for the recipe and ``docs/CONTRACTS.md`` for the folder format.
"""

from .builder import GENERATOR, VERSION, BuildConfig, BuildReport, build_benchmark, default_workers
from .presets import PRESETS, Preset

__all__ = ["GENERATOR", "VERSION", "BuildConfig", "BuildReport", "PRESETS", "Preset", "build_benchmark",
           "default_workers"]
