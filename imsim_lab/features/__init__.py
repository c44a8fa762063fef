"""Descriptor extraction: batched, resumable in atomic shards, distributed with torchrun.

    from imsim_lab.features import extract_split, ExtractConfig, load_features
    fs = extract_split(model, paths, ids, "features/", "query", ExtractConfig(batch_size=32))
    fs.ids, fs.x        # (n,), (n, d) memmap; fs.failed lists unreadable images by id

Official outputs: :func:`export_split_hdf5` (isc2021's per-split HDF5) and
:func:`imsim_lab.eval.formats.write_descriptors` (descriptor-track HDF5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .extract import DTYPES, ExtractConfig, batches_of, embedded_batches, extract_split, make_loader
from .store import FeatureSet, has_features, load_features, save_features


def export_split_hdf5(fs: FeatureSet, path: str | Path) -> None:
    """Write a split as isc2021's per-split HDF5 (``vectors`` float32, ``image_names``)."""
    from ..eval.formats import write_split_vectors

    write_split_vectors(path, list(fs.ids), np.asarray(fs.x, dtype=np.float32))


__all__ = ["DTYPES", "ExtractConfig", "FeatureSet", "batches_of", "embedded_batches", "export_split_hdf5",
           "extract_split", "has_features", "load_features", "make_loader", "save_features"]
