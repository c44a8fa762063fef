"""Recorded edits: the ``Op`` record, the op and family registries, sampling and replay.

A DISC21 query is an original image passed through one or more edits. Here an edit is split in
two steps so that every query can be explained and rebuilt:

1. a *family* (``FAMILIES``) draws concrete parameters for a strength in [0, 1]
   (``sample_ops``): 0 is the identity or nearly, 1 the hardest setting DISC21 uses;
2. each recorded :class:`Op` is replayed by the op registered under its name (``apply_ops``);
   any randomness inside an op (noise, shuffled pixels) comes from a seed stored in its params.

``apply_family`` is exactly ``sample_ops`` followed by ``apply_ops``, so the image it returns can
be rebuilt byte for byte from the JSON of its ops (``ops_to_json`` / ``ops_from_json``). Images go
in any PIL mode and always come out RGB, at most :data:`MAX_SIDE` pixels on the long side unless
the op is a scale op. Taught in ``notebooks/01_benchmark_and_metric``.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ...errors import ImsimError
from ...registry import Registry
from .assets import Assets

#: Outputs are resized down to this many pixels on their long side (scale ops excepted).
MAX_SIDE = 1024


class AugmentError(ImsimError):
    """An op could not be sampled or applied; the message names the op and the problem."""


def _jsonable(value: Any, where: str) -> Any:
    """Return ``value`` as plain JSON types (tuples become lists, numpy scalars Python ones)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise AugmentError(f"{where}: {value} is not a finite number")
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise AugmentError(f"{where}: {type(value).__name__} is not JSON-able")


@dataclass(frozen=True)
class Op:
    """One concrete edit: the name of a registered op and every parameter it needs.

    ``params`` holds only JSON types (normalised on construction), so that
    ``Op.from_dict(json.loads(json.dumps(op.to_dict()))) == op``. Treat it as read-only.
    """

    name: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise AugmentError(f"op name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.params, Mapping):
            raise AugmentError(f"op {self.name!r}: params must be a mapping")
        object.__setattr__(self, "params", _jsonable(self.params, f"op {self.name!r}"))

    def to_dict(self) -> dict:
        return {"name": self.name, "params": json.loads(json.dumps(self.params))}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Op":
        if not isinstance(d, Mapping) or "name" not in d:
            raise AugmentError(f"an op must be a mapping with 'name' and 'params', got {d!r}")
        return cls(d["name"], dict(d.get("params") or {}))


def op_to_dict(op: Op) -> dict:
    """``{"name": ..., "params": {...}}``, the form stored in ``queries.parquet``."""
    return op.to_dict()


def ops_to_json(ops: Iterable[Op]) -> str:
    """Compact JSON list of ops (the ``ops`` column of ``queries.parquet``)."""
    return json.dumps([op.to_dict() for op in ops], separators=(",", ":"), sort_keys=True)


def ops_from_json(text: str) -> list[Op]:
    """Inverse of :func:`ops_to_json`; raises :class:`AugmentError` on malformed text."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as e:
        raise AugmentError(f"ops JSON cannot be parsed: {e}") from None
    if not isinstance(data, list):
        raise AugmentError(f"ops JSON must be a list, got {type(data).__name__}")
    return [Op.from_dict(d) for d in data]


# ----------------------------------------------------------------------------------------------
# registries


@dataclass(frozen=True)
class OpSpec:
    """How to apply one op: ``fn(img_rgb, params, assets) -> PIL.Image``.

    Attributes:
        uncapped: the op may return images larger than :data:`MAX_SIDE` (scale ops).
        backend: "augly" when the op calls AugLy 1.0.0, "project" when it is written here.
    """

    name: str
    fn: Callable[[Image.Image, dict, Assets], Image.Image]
    uncapped: bool = False
    backend: str = "project"


@dataclass(frozen=True)
class Family:
    """A transformation family: draws the ops of one DISC21-style edit at a given strength.

    Attributes:
        group: "geometric", "photometric", "quality", "overlay", "frame", "composite", "airgap"
            or "chain" (for dashboards that group per-family results).
        identity_at_zero: strength 0 gives the input back (or nearly: JPEG at quality 95).
        description: one line for tables and plots.
    """

    name: str
    sampler: Callable[[float, np.random.Generator, tuple[int, int], Assets], list[Op]]
    group: str
    identity_at_zero: bool
    description: str

    def __call__(self, strength: float, rng: np.random.Generator, size: tuple[int, int],
                 assets: Assets) -> list[Op]:
        return self.sampler(strength, rng, size, assets)


OPS: Registry[OpSpec] = Registry("augmentation op")
FAMILIES: Registry[Family] = Registry("transformation family")


def register_op(name: str, *, uncapped: bool = False, backend: str = "project"):
    """Decorator: register ``fn(img, params, assets)`` as the op ``name``."""

    def deco(fn):
        OPS.add(name, OpSpec(name, fn, uncapped=uncapped, backend=backend))
        return fn

    return deco


def register_family(name: str, *, group: str, identity_at_zero: bool):
    """Decorator: register ``sampler(strength, rng, size, assets) -> list[Op]`` as a family.

    The first line of the sampler's docstring becomes the family's description.
    """

    def deco(fn):
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        FAMILIES.add(name, Family(name, fn, group, identity_at_zero, doc))
        return fn

    return deco


# ----------------------------------------------------------------------------------------------
# helpers shared by the samplers: magnitudes are deterministic functions of the strength, the
# generator only picks directions, positions and contents (so strength is monotone per seed)


def lerp(a: float, b: float, s: float) -> float:
    """Linear interpolation from ``a`` (strength 0) to ``b`` (strength 1)."""
    return a + (b - a) * s


def geom(a: float, b: float, s: float) -> float:
    """Geometric interpolation from ``a`` to ``b`` (both > 0): even steps in log scale."""
    return a * (b / a) ** s


def new_seed(rng: np.random.Generator) -> int:
    """A seed to store in an op's params for the randomness inside the op."""
    return int(rng.integers(0, 2**31 - 1))


def rnd(x: float, nd: int = 5) -> float:
    """Round recorded floats so that the JSON stays short (replay uses the rounded value)."""
    return round(float(x), nd)


def sign(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1



# ----------------------------------------------------------------------------------------------
# image helpers shared by the ops


def to_rgb(img: Image.Image, background: Sequence[int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image as RGB; transparent parts are composited onto ``background``.

    16-bit and float images are rescaled to 8 bits by their own range (deterministic).
    """
    if not isinstance(img, Image.Image):
        raise AugmentError(f"expected a PIL image, got {type(img).__name__}")
    if img.width < 1 or img.height < 1:
        raise AugmentError(f"image has an empty size {img.size}")
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, tuple(int(c) for c in background) + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def cap_size(img: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Resize so that the long side is at most ``max_side`` (aspect kept, sides >= 1)."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    f = max_side / max(w, h)
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)


# ----------------------------------------------------------------------------------------------
# sampling and replay


def _check_strength(strength: float) -> float:
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise AugmentError(f"strength must be a number in [0, 1], got {strength!r}") from None
    if not 0.0 <= s <= 1.0:
        raise AugmentError(f"strength must be in [0, 1], got {s}")
    return s


def _check_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, numbers.Integral):
        return np.random.default_rng(rng)
    raise AugmentError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def sample_ops(family: str, strength: float, rng: np.random.Generator | int | None,
               size: tuple[int, int], assets: Assets | None = None) -> list[Op]:
    """Draw the concrete ops of one edit of ``family`` at ``strength``.

    Args:
        family: a name of :data:`FAMILIES` (``FAMILIES.names()``).
        strength: 0 (identity or nearly) .. 1 (the hardest DISC21 setting).
        rng: numpy Generator (or an int seed); the same state gives the same ops.
        size: (width, height) of the image the ops will be applied to; most parameters are
            fractions of it, so replay on another size stays meaningful.
        assets: fonts, emoji and other images; :meth:`Assets.default` when None.

    Returns:
        list of :class:`Op`, possibly empty for no edit.
    """
    fam = FAMILIES.get(family) if family in FAMILIES else None
    if fam is None:
        raise AugmentError(f"unknown transformation family {family!r}; known: "
                           f"{', '.join(FAMILIES.names())}")
    s = _check_strength(strength)
    g = _check_rng(rng)
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise AugmentError(f"size must be (width, height), got {size!r}") from None
    if w < 1 or h < 1:
        raise AugmentError(f"size must be positive, got {size!r}")
    ops = fam(s, g, (w, h), assets or Assets.default())
    return [op if isinstance(op, Op) else Op(*op) for op in ops]


def apply_op(img: Image.Image, op: Op, assets: Assets | None = None) -> Image.Image:
    """Apply one recorded op to an RGB image (see :func:`apply_ops`)."""
    if op.name not in OPS:
        raise AugmentError(f"unknown augmentation op {op.name!r}; known: {', '.join(OPS.names())}")
    spec = OPS.get(op.name)
    try:
        out = spec.fn(img, op.params, assets or Assets.default())
    except AugmentError:
        raise
    except ImsimError as e:
        raise AugmentError(f"op {op.name!r}: {e}") from e
    except Exception as e:  # AugLy and PIL raise assorted types; name the op and its params
        where = "AugLy " if spec.backend == "augly" else ""
        raise AugmentError(f"op {op.name!r} ({where}{type(e).__name__}: {e}) "
                           f"with params {json.dumps(op.params)}") from e
    out = to_rgb(out)
    return out if spec.uncapped else cap_size(out)


def apply_ops(img: Image.Image, ops: Sequence[Op], assets: Assets | None = None) -> Image.Image:
    """Replay recorded ops deterministically; the result is always an RGB image.

    Args:
        img: any PIL image (L, P, RGBA, LA, ...), converted with :func:`to_rgb` and capped to
            :data:`MAX_SIDE` first (so huge inputs cost no more than DISC21-sized ones).
        ops: ops from :func:`sample_ops` or :func:`ops_from_json` (dicts are accepted too).
        assets: the assets the ops were sampled with (fonts, emoji, other images by id).
    """
    assets = assets or Assets.default()
    out = cap_size(to_rgb(img))
    for op in ops:
        out = apply_op(out, op if isinstance(op, Op) else Op.from_dict(op), assets)
    return out


def apply_family(img: Image.Image, family: str, strength: float,
                 rng: np.random.Generator | int | None, assets: Assets | None = None
                 ) -> tuple[Image.Image, list[Op]]:
    """Sample one edit of ``family`` for ``img`` and apply it; returns (image, ops)."""
    assets = assets or Assets.default()
    ops = sample_ops(family, strength, rng, img.size, assets)
    return apply_ops(img, ops, assets), ops


def describe_families() -> list[dict]:
    """One row per family (name, group, identity_at_zero, description) for tables and dashboards."""
    return [{"family": f.name, "group": f.group, "identity_at_zero": f.identity_at_zero,
             "description": f.description} for f in (FAMILIES.get(n) for n in FAMILIES.names())]
