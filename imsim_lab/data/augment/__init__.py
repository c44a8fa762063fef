"""The transformation families of DISC21, as recorded, replayable edits.

    from imsim_lab.data.augment import FAMILIES, apply_family, apply_ops, ops_from_json

    img2, ops = apply_family(img, "crop", strength=0.7, rng=np.random.default_rng(0))
    assert np.array_equal(np.asarray(apply_ops(img, ops)), np.asarray(img2))

``FAMILIES.names()`` lists the families; ``FAMILIES.get(name).group`` groups them for tables.
See :mod:`imsim_lab.data.augment.core` for the model (families sample ops, ops replay exactly).
"""

from .assets import Assets, AssetError, synthetic_image
from .core import (
    FAMILIES, MAX_SIDE, OPS, AugmentError, Family, Op, OpSpec, apply_family, apply_op, apply_ops,
    cap_size, describe_families, op_to_dict, ops_from_json, ops_to_json, register_family, register_op, sample_ops,
    to_rgb,
)
from . import geometric, photometric, quality, overlay, frames, composite, airgap  # noqa: F401
from . import compose  # noqa: F401  (last: chain draws from the families registered above)
from ._augly import augly_status
from .compose import sample_chain
from .frames import feed_frame, meme
from .geometric import perspective, perspective_coeffs

__all__ = [
    "Assets", "AssetError", "AugmentError", "FAMILIES", "Family", "MAX_SIDE", "OPS", "Op", "OpSpec",
    "apply_family", "apply_op", "apply_ops", "augly_status", "cap_size", "describe_families", "op_to_dict", "ops_from_json", "ops_to_json",
    "feed_frame", "meme", "perspective", "perspective_coeffs", "register_family", "register_op",
    "sample_chain", "sample_ops",
    "synthetic_image", "to_rgb",
]
