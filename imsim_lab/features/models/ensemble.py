"""S-square's ensemble as one descriptor model: several trained ``ssquare_net`` members whose
descriptors are concatenated (Papadakis & Addicam, arXiv 2112.03415; ``docs/methods.md``, "S-square":
eight networks, 2,816 dimensions, then PCA whitening to 256 fitted on the training images and L2,
which is the post-processing of the method ``ssquare_ensemble``).

A member is named by what ``imsim-lab train ssquare`` wrote: its run folder or the ``weights.pt``
in it (the backbone, resolution and embedding size are read from the run's ``train_config.json``),
or a dict ``{"weights_path", "backbone", "input_size", "dim"}`` for weights from elsewhere. The
resolved configuration lists every member with the sha256 of its weights, so a feature cache keyed
on it never mixes two trainings. Every member's weights are checked against its architecture when
the configuration is resolved (before a run writes anything): one line naming the file.

The preprocessing runs each member's own preprocessing (its resolution, mean and std) on the one
decoded image and concatenates the flattened arrays; :meth:`EnsembleModel.embed` splits them again,
so every member sees exactly what it sees alone. Members must use the square resize (S-square's).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...errors import ImsimError
from .base import DescriptorModel
from .config import ModelConfig, Preprocess
from .fitcheck import check_weights_fit
from .weights import WeightsError, sha256_file

NAME = "ssquare_ensemble"
MEMBER_MODEL = "ssquare_net"
MEMBER_KEYS = ("weights_path", "backbone", "input_size", "dim")


def _run_config(folder: Path) -> dict | None:
    """``run.config`` of the S-square training run in ``folder`` (its last stage's train_config.json)."""
    # every stage of a drip run records the same network (backbone, size, dim)
    for p in [*sorted(folder.glob("stage*/train_config.json")), folder / "train_config.json"]:
        if p.is_file():
            try:
                d = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ImsimError(f"{p}: unreadable training configuration ({e})") from None
            run = d.get("run") or {}
            if run.get("recipe") not in (None, "ssquare"):
                raise ImsimError(f"{p}: a {run.get('recipe')!r} training run, not an S-square one; an ensemble "
                                 f"member is a run of `imsim-lab train ssquare` (or give backbone, input_size, dim)")
            return run.get("config")
    return None


def resolve_member(member, k: int) -> dict:
    """One member as ``{"weights_path", "weights_sha256", "backbone", "input_size", "dim"}``.

    Raises:
        ImsimError: no weights file, no architecture to be found, unknown keys.
    """
    where = f"model.members[{k}]"
    if isinstance(member, (str, Path)):
        member = {"weights_path": str(member)}
    if not isinstance(member, dict) or "weights_path" not in member:
        raise ImsimError(f"{where}: a training run folder, its weights.pt, or a dict with weights_path "
                         f"(and backbone, input_size, dim), not {member!r}")
    bad = sorted(set(member) - set(MEMBER_KEYS) - {"weights_sha256", "size"})
    if bad:
        raise ImsimError(f"{where}: unknown keys {bad}; a member takes {', '.join(MEMBER_KEYS)}")
    path = Path(member["weights_path"])
    if path.is_dir():
        path = path / "weights.pt"
    if not path.is_file():
        raise ImsimError(f"{path}: {where}: weights file not found (train it with `imsim-lab train ssquare`)")
    found = {}
    if not all(k2 in member or (k2 == "input_size" and "size" in member) for k2 in MEMBER_KEYS[1:]):
        rc = _run_config(path.parent) or {}
        found = {"backbone": rc.get("backbone"), "input_size": rc.get("size"), "dim": rc.get("dim")}
    spec = {"backbone": member.get("backbone", found.get("backbone")),
            "input_size": member.get("input_size", member.get("size", found.get("input_size"))),
            "dim": member.get("dim", found.get("dim"))}
    missing = [k2 for k2, v in spec.items() if v is None]
    if missing:
        raise ImsimError(f"{path}: {where}: no train_config.json of an S-square run next to it to read "
                         f"{', '.join(missing)} from; give them (a dict with weights_path, backbone, input_size, dim)")
    size = spec["input_size"]
    size = int(size[0]) if isinstance(size, (list, tuple)) else int(size)
    sha = sha256_file(path)
    if member.get("weights_sha256") and member["weights_sha256"].lower() != sha:
        raise WeightsError(f"{path}: {where}: wrong sha256 {sha}, expected {member['weights_sha256']}")
    return {"weights_path": str(path.resolve()), "weights_sha256": sha, "backbone": str(spec["backbone"]),
            "input_size": size, "dim": int(spec["dim"])}


def member_config(m: dict) -> ModelConfig:
    """The ``ssquare_net`` configuration of a resolved member."""
    from . import get_config

    return get_config(MEMBER_MODEL, backbone=m["backbone"], input_size=m["input_size"], dim=m["dim"],
                      weights_path=m["weights_path"], weights_sha256=m["weights_sha256"])


def base_config() -> ModelConfig:
    return ModelConfig(NAME, dim=0, resize="square", paper="Papadakis & Addicam, Producing augmentation-invariant "
                       "embeddings from real-life imagery, arXiv 2112.03415", extra={"members": []})


def resolve_config(**overrides) -> ModelConfig:
    """The ensemble's configuration with ``members=`` resolved and checked (see the module docstring).

    Raises:
        ImsimError: no members, a member that cannot be found or whose weights do not fit, a member
            that does not resize to a square.
    """
    cfg = base_config()
    cfg = cfg.with_overrides(**overrides) if overrides else cfg
    members = cfg.extra.get("members")
    if isinstance(members, str):
        members = [m for m in members.split(",") if m.strip()]
    if not members:
        raise ImsimError(f"{NAME}: give its members with -p 'model.members=[\"RUN1\", \"RUN2\"]' (the run folders "
                         f"or weights.pt files of `imsim-lab train ssquare`)")
    resolved = [resolve_member(m, k) for k, m in enumerate(members)]
    for k, m in enumerate(resolved):
        mc = member_config(m)
        if mc.resize != "square":
            raise ImsimError(f"model.members[{k}]: resize {mc.resize!r}; ensemble members resize to a square")
        check_weights_fit(mc, f"model.members[{k}]")
    size = max(m["input_size"] for m in resolved)
    return replace(cfg, dim=sum(m["dim"] for m in resolved), input_size=(size, size), weights="path",
                   extra={**cfg.extra, "members": resolved})


class EnsemblePreprocess(Preprocess):
    """Each member's preprocessing of one image, flattened and concatenated: ``float32 (sum_m 3 h_m w_m,)``."""

    def __init__(self, cfg: ModelConfig, members: list[ModelConfig]):
        super().__init__(cfg)
        self.members = [Preprocess(m) for m in members]

    def output_size(self, w: int, h: int) -> tuple[int, int]:
        return self.members[0].output_size(w, h)

    def __call__(self, img) -> np.ndarray:
        return np.concatenate([p(img).ravel() for p in self.members])


class EnsembleModel(DescriptorModel):
    """The members' descriptors side by side: ``(b, sum_m d_m)`` float32 (each member's part of unit norm)."""

    def __init__(self, config: ModelConfig, device: str | None = None):
        from .timm_descriptor import build_timm_descriptor

        super().__init__(config, device)
        self.member_configs = [member_config(m) for m in config.extra["members"]]
        self.members = [build_timm_descriptor(mc, self.device) for mc in self.member_configs]
        self._sizes = [3 * mc.input_size[0] * mc.input_size[1] for mc in self.member_configs]

    @property
    def fixed_size(self) -> bool:
        return True

    @property
    def preprocess(self) -> EnsemblePreprocess:
        return EnsemblePreprocess(self.config, self.member_configs)

    def to(self, device: str | None) -> "EnsembleModel":
        super().to(device)
        for m in getattr(self, "members", []):
            m.to(self.device)
        return self

    def _embed_stacked(self, x) -> np.ndarray:
        x = np.asarray(x, np.float32) if not hasattr(x, "numpy") else x.numpy()
        if x.ndim != 2 or x.shape[1] != sum(self._sizes):
            raise ValueError(f"{NAME}: expected (b, {sum(self._sizes)}) preprocessed arrays, got {x.shape}")
        parts, start = [], 0
        for mc, model, n in zip(self.member_configs, self.members, self._sizes):
            h, w = mc.input_size
            parts.append(model.embed(np.ascontiguousarray(x[:, start:start + n]).reshape(len(x), 3, h, w)))
            start += n
        return np.concatenate(parts, axis=1)


def build(cfg: ModelConfig, device: str | None = None) -> EnsembleModel:
    return EnsembleModel(cfg, device)


def register(models) -> None:
    """Add ``ssquare_ensemble`` to the model registry (its configuration resolves the members)."""

    def factory(device: str | None = None, **overrides) -> EnsembleModel:
        return build(factory.config(**overrides), device)

    factory.config = resolve_config
    factory.__name__ = NAME
    factory.__doc__ = f"Model {NAME!r}: S-square's ensemble of trained ssquare_net members (members=[...])."
    models.add(NAME, factory)
