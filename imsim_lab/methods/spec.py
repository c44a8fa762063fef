"""What a method is: a frozen :class:`MethodSpec` in the :data:`METHODS` registry.

A method produces scored (query, reference) pairs, on one of the two tracks of ISC2021:

* **descriptor**: one vector per image from a model (:mod:`imsim_lab.features.models`), a
  post-processing (:data:`imsim_lab.methods.post.POST`) and a search; the scores come from the
  search;
* **matching**: candidate pairs from a descriptor method named in its parameters
  (``candidates.method``, a per-query ``candidates.k`` and/or a global ``candidates.budget``;
  ``candidates.k = "all"``: every reference is a candidate of every query), rescored by a
  registered matcher (:data:`imsim_lab.methods.matchers.MATCHERS`) that may look at the
  images, their local features or their sub-images.

Both run through the same runner (:func:`imsim_lab.runner.run_method`) and write the same run folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import Registry

TRACKS = ("descriptor", "matching")
#: the parameters of a matching method that name its candidate source
CANDIDATE_KEYS = ("candidates.method", "candidates.k", "candidates.budget")
#: ``candidates.k`` of a method whose candidates are every reference (a matcher that searches the
#: references itself returns the pairs it found; see :mod:`imsim_lab.methods.matching`)
ALL = "all"
#: candidate-source parameters a matching method may leave out (their default keeps the plain k-NN)
OPTIONAL_CANDIDATE_KEYS = ("candidates.views", "candidates.crops", "candidates.crops_threshold")
#: parameters any descriptor method may take, left out of its configuration unless ``queries.crops`` is set:
#: an overlay detector checkpoint whose crop replaces each query it finds a box on at the confidence
#: ``queries.crops_threshold`` (Bag of Tricks' test pipeline, :mod:`imsim_lab.features.query_crops`)
OPTIONAL_QUERY_KEYS = ("queries.crops", "queries.crops_threshold")


def query_crops_params(params: dict) -> dict:
    """``params`` of a descriptor method with ``queries.crops`` checked: without a detector (None or
    empty) both keys are dropped (the configuration is a plain run's); with one, the threshold
    defaults to :data:`~imsim_lab.features.query_crops.BOT_THRESHOLD` (0.90) and must be in [0, 1)."""
    from ..features.query_crops import BOT_THRESHOLD

    out = dict(params)
    det = out.get("queries.crops")
    if det is None or det == "":
        out.pop("queries.crops", None)
        out.pop("queries.crops_threshold", None)
        return out
    if not isinstance(det, str):
        raise ValueError(f"queries.crops must be an overlay detector checkpoint path, not {det!r}")
    t = out.setdefault("queries.crops_threshold", BOT_THRESHOLD)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) < 1.0:
        raise ValueError(f"queries.crops_threshold must be a confidence in [0, 1), not {t!r}")
    out["queries.crops_threshold"] = float(t)
    return out


@dataclass(frozen=True)
class CandidateSource:
    """Where a matching method's candidate pairs come from.

    Attributes:
        method: a registered descriptor method.
        k: neighbours per query (None: no per-query cut), or :data:`ALL` (``"all"``): every
            reference is a candidate of every query; the runner never lists those pairs when the
            matcher searches the references itself (:attr:`~imsim_lab.methods.matchers.Matcher.own_search`).
        budget: pairs kept over all queries, best scores first (None: no global cut). With both,
            the k-NN lists are cut to the ``budget`` best pairs overall. Not with ``k="all"``.
        views: None (the k-NN of the descriptor run, cut by ``k`` and ``budget``), or the name of a
            size set of :data:`imsim_lab.features.pair_candidates.SIZES` (``"full"``, ``"cpu"``,
            ``"smoke"``): the candidates are then the merged lists of sub-image views of
            :mod:`imsim_lab.features.pair_candidates` (whole query, half strips, half grid, third
            grid, reference half-grid crops), made with the descriptor method's model; ``k`` and
            ``budget`` then cut the merged list (per query, overall). Not with ``k="all"``.
        crops: None, or an overlay detector checkpoint (:mod:`imsim_lab.features.detector`): each
            query searches with the descriptor of the detector's crop when it keeps a box at
            ``crops_threshold`` (imgFp's global branch: 0.55), else with the whole query's
            (:mod:`imsim_lab.features.query_crops`). With ``k`` (or ``"all"``: the shortlist) and
            ``budget``; not with ``views``.
    """

    method: str = "sscd"
    k: int | str | None = 10
    budget: int | None = None
    views: str | None = None
    crops: str | None = None
    crops_threshold: float = 0.55

    def __post_init__(self):
        if self.crops is not None:  # imgFp's global branch: the detector's crop as the query
            if self.views is not None:
                raise ValueError("candidates.crops (the detector's crop as the query) takes no "
                                 f"candidates.views, not {self.views!r}")
            if not isinstance(self.crops, str) or not self.crops:
                raise ValueError(f"candidates.crops must be an overlay detector checkpoint path, not {self.crops!r}")
            t = self.crops_threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) < 1.0:
                raise ValueError(f"candidates.crops_threshold must be a confidence in [0, 1), not {t!r}")
        if self.k is None and self.budget is None and self.views is None:
            raise ValueError("a candidate source needs candidates.k or candidates.budget (or both), or candidates.views")
        if self.k == ALL:
            if self.budget is not None:
                raise ValueError(f"candidates.k={ALL!r} (every reference) takes no candidates.budget, "
                                 f"not {self.budget!r}")
            if self.views is not None:
                raise ValueError(f"candidates.k={ALL!r} (every reference) takes no candidates.views, "
                                 f"not {self.views!r}")
            return
        for name, v in (("candidates.k", self.k), ("candidates.budget", self.budget)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None"
                                 + (f" (or {ALL!r} for candidates.k)" if name == "candidates.k" else "")
                                 + f", not {v!r}")
        if self.views is not None:
            from ..features.pair_candidates import SIZES

            if self.views not in SIZES:
                raise ValueError(f"candidates.views must be None or one of {', '.join(SIZES)}, not {self.views!r}")

    @property
    def all_references(self) -> bool:
        """Every reference is a candidate of every query (``candidates.k = "all"``)."""
        return self.k == ALL

    @classmethod
    def from_params(cls, params: dict) -> "CandidateSource":
        return cls(params["candidates.method"], params.get("candidates.k"), params.get("candidates.budget"),
                   params.get("candidates.views"), params.get("candidates.crops") or None,
                   params.get("candidates.crops_threshold", 0.55))

    def to_params(self) -> dict:
        out = {"candidates.method": self.method, "candidates.k": self.k, "candidates.budget": self.budget}
        if self.views is not None:
            out["candidates.views"] = self.views
        if self.crops is not None:
            out["candidates.crops"] = self.crops
            out["candidates.crops_threshold"] = self.crops_threshold
        return out


@dataclass(frozen=True)
class MethodSpec:
    """A method of either track.

    Attributes:
        name: registry name.
        track: ``"descriptor"`` or ``"matching"``.
        model: descriptor track: the model registry name; ``model_args``: its config overrides.
        post: descriptor track: post-processing name in :data:`~imsim_lab.methods.post.POST`.
        matcher: matching track: the matcher name in :data:`~imsim_lab.methods.matchers.MATCHERS`.
        params: default parameters (overridable per run): the post-processing's, or for a matching
            method the matcher's plus ``candidates.method``, ``candidates.k``, ``candidates.budget``.
            Any descriptor method also takes :data:`OPTIONAL_QUERY_KEYS` (the overlay crop as the query).
        needs_training: extract the training split (background set) too.
        description, paper: for ``imsim-lab methods``.
    """

    name: str
    model: str = ""
    post: str = "none"
    model_args: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    needs_training: bool = False
    description: str = ""
    paper: str = ""
    track: str = "descriptor"
    matcher: str = ""

    def __post_init__(self):
        if self.track not in TRACKS:
            raise ValueError(f"method {self.name!r}: track must be one of {TRACKS}, not {self.track!r}")
        if self.track == "descriptor" and not self.model:
            raise ValueError(f"descriptor method {self.name!r} needs a model")
        if self.track == "matching":
            if not self.matcher:
                raise ValueError(f"matching method {self.name!r} needs a matcher")
            missing = [k for k in CANDIDATE_KEYS if k not in self.params]
            if missing or self.model:
                raise ValueError(f"matching method {self.name!r}: its candidate source is given by the parameters "
                                 f"{', '.join(CANDIDATE_KEYS)}, not by a model")
            CandidateSource.from_params(self.params)

    def resolve(self, overrides: dict | None = None) -> tuple[dict, dict]:
        """(model_args, params) with ``overrides`` applied: keys ``model.X`` go to the model,
        others must be known parameters of the method."""
        model_args, params = dict(self.model_args), dict(self.params)
        for k, v in (overrides or {}).items():
            if k.startswith("model.") and self.track == "descriptor":
                model_args[k[len("model."):]] = v
            elif k in params or (self.track == "matching" and k in OPTIONAL_CANDIDATE_KEYS) \
                    or (self.track == "descriptor" and k in OPTIONAL_QUERY_KEYS):
                params[k] = v
            else:
                known = sorted(params) + (["model.<setting>"] if self.track == "descriptor" else [])
                hint = (" (a matching method has no model of its own: its candidates come from "
                        "candidates.method)" if k.startswith("model.") else "")
                raise KeyError(f"method {self.name!r} has no parameter {k!r}{hint}; parameters: {', '.join(known)}")
        if self.track == "matching":
            CandidateSource.from_params(params)
        else:
            params = query_crops_params(params)
        return model_args, params

    def candidate_source(self, params: dict | None = None) -> CandidateSource:
        """The candidate source of a matching method (with resolved ``params``)."""
        if self.track != "matching":
            raise ValueError(f"{self.name!r} is a descriptor method: it has no candidate source")
        return CandidateSource.from_params(params if params is not None else self.params)


METHODS: Registry = Registry("method")


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


def list_methods(pattern: str = "*", track: str | None = None) -> list[str]:
    """Registered method names matching the glob ``pattern``, optionally of one ``track``."""
    if track is not None and track not in TRACKS:
        raise ValueError(f"track must be one of {TRACKS}, not {track!r}")
    return [n for n in METHODS.names(pattern) if track is None or METHODS.get(n).track == track]
