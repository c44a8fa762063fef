"""Matchers: the matching track's extension point.

A matching method takes candidate pairs (:class:`CandidatePairs`, from a descriptor method) and
**rescores** them with a registered matcher that may look at the images, their local features or
their sub-images. A matcher is a class in :data:`MATCHERS`, built with the method's parameters (its
own keys only: the ``candidates.*`` keys are the runner's), and called once per run::

    @MATCHERS.register("sift")
    class SiftVerifier(Matcher):
        def __init__(self, features="sift", ratio=0.8, ransac=False): ...
        def score(self, pairs, ctx): ...       # -> MatchResult

``score`` gets the pairs and a :class:`MatchContext`: the query and reference images as
:class:`~imsim_lab.features.dataset.ImageSource` (files of the benchmark, or the robustness suite's
edited queries made on the fly), a work folder owned by this run for resumable caches (local-feature
stores, view descriptors; :meth:`MatchContext.folder` per side), the device and extraction settings, and a progress callback. It returns a
:class:`MatchResult`: one score per pair (higher = more similar; a pair it cannot score, e.g. an
image without keypoints, gets the lowest score it gives, never an exception), per-pair columns that
the run folder keeps in ``candidates.parquet`` for the explorer's pair view, and a report (counts of
what was skipped, throughput) that goes into ``config.json``.

**Every reference as a candidate** (``candidates.k = "all"``): a matcher that searches the
references itself sets :attr:`Matcher.own_search`; the runner then never lists the all-pairs
product. It hands the matcher the descriptor method's best :attr:`Matcher.shortlist` references
per query (often none) as :class:`CandidatePairs` with ``all_queries`` set (every reference is a
candidate of those queries), and the matcher returns the pairs it found and scored in
:attr:`MatchResult.pairs` (:func:`found_pairs` builds them; every pair left out has the lowest
score). A matcher without ``own_search`` gets the dense list of every (query, reference) pair.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..registry import Registry
from .spec import CANDIDATE_KEYS, OPTIONAL_CANDIDATE_KEYS


@dataclass(frozen=True, eq=False)
class CandidatePairs:
    """Candidate (query, reference) pairs with the descriptor score that proposed them.

    Shapes: all (n,). ``scores`` higher = more similar; ``ranks``: 0-based rank of the pair inside
    its query's candidate list (by descriptor score). A pair that the descriptor method did not
    propose (found by a matcher's own search) has score NaN and rank -1.

    ``all_queries``: None, or (nq,) the queries of which every reference is a candidate
    (``candidates.k = "all"``); the listed pairs are then only the descriptor method's shortlist.
    """

    query_ids: np.ndarray
    reference_ids: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    all_queries: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.query_ids)
        if not (len(self.reference_ids) == len(self.scores) == len(self.ranks) == n):
            raise ValueError("candidate pairs: query_ids, reference_ids, scores and ranks differ in length")

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def all_references(self) -> bool:
        """Every reference is a candidate of each of :attr:`all_queries`."""
        return self.all_queries is not None

    def queries(self) -> np.ndarray:
        """(nq,) str: the queries these candidates are for (sorted; with ``all_queries``, those)."""
        q = self.query_ids if self.all_queries is None else self.all_queries
        return np.unique(np.asarray(q).astype(str))

    @classmethod
    def from_predictions(cls, preds) -> "CandidatePairs":
        """From :class:`~imsim_lab.eval.formats.Predictions`; ranks are computed per query."""
        q = np.asarray(preds.query_ids).astype(str)
        r = np.asarray(preds.reference_ids).astype(str)
        s = np.asarray(preds.scores, np.float64)
        order = np.lexsort((-s, q))
        ranks = np.empty(len(q), np.int64)
        if len(q):
            qs = q[order]
            start = np.r_[0, np.flatnonzero(qs[1:] != qs[:-1]) + 1]
            first = np.repeat(start, np.diff(np.r_[start, len(qs)]))
            ranks[order] = np.arange(len(qs)) - first
        return cls(q, r, s, ranks)


@dataclass(frozen=True, eq=False)
class MatchContext:
    """What a matcher may use besides the pairs.

    Attributes:
        queries, references: :class:`~imsim_lab.features.dataset.ImageSource` of the images.
        work: a folder owned by this run for the matcher's caches; :meth:`folder` gives the folder of
            the features of one side (``"query"``, ``"reference"``), which ``folders`` may place
            elsewhere (the robustness suite keeps the run's reference features and puts the edited
            queries' features in its own cell folder).
        device: None = CUDA when present. extract: :class:`~imsim_lab.features.ExtractConfig`.
        backend: search backend (:mod:`imsim_lab.search`).
        progress: ``progress(stage, total) -> update(n)`` for progress bars, or None (silent).
        training: the benchmark's training (background) images as an ImageSource, or None when the
            benchmark has none or the caller does not give them (a matcher's score normalisation
            against the background set reads them; its features go to ``folder("training")``).
    """

    queries: object
    references: object
    work: Path
    device: str | None = None
    extract: object = None
    backend: str = "auto"
    progress: Callable[[str, int], Callable[[int], None]] | None = None
    folders: dict = field(default_factory=dict)
    training: object = None

    def folder(self, side: str) -> Path:
        """Where the matcher keeps what it computes for the images of ``side`` (created)."""
        p = Path(self.folders.get(side, Path(self.work) / side))
        p.mkdir(parents=True, exist_ok=True)
        return p

    def bar(self, stage: str, total: int) -> Callable[[int], None] | None:
        return self.progress(stage, total) if self.progress else None


@dataclass(frozen=True, eq=False)
class MatchResult:
    """A matcher's output. ``scores`` (n,) float64, higher = more similar; ``extras``: name -> (n,)
    array kept per pair in ``candidates.parquet``; ``report``: JSON-able counts and figures.

    ``pairs``: None (the scores are those of the pairs the matcher was given), or, only when it was
    given every reference (``CandidatePairs.all_queries``), the :class:`CandidatePairs` it found
    and scored itself (n of them; :func:`found_pairs`)."""

    scores: np.ndarray
    extras: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    pairs: CandidatePairs | None = None


def found_pairs(shortlist: CandidatePairs, query_ids, reference_ids) -> CandidatePairs:
    """The union of the ``shortlist`` pairs and the pairs (``query_ids``, ``reference_ids``) a
    matcher found itself, each once, shortlist first: the pairs of a :class:`MatchResult` under
    ``candidates.k = "all"``. A found pair keeps its descriptor score and rank when the shortlist
    has it, NaN and -1 otherwise."""
    q0, r0 = np.asarray(shortlist.query_ids).astype(str), np.asarray(shortlist.reference_ids).astype(str)
    seen = set(zip(q0.tolist(), r0.tolist()))
    extra = []
    for a, b in zip(np.asarray(query_ids).astype(str).tolist(), np.asarray(reference_ids).astype(str).tolist()):
        if (a, b) not in seen:
            seen.add((a, b))
            extra.append((a, b))
    qa, ra = np.array([a for a, _ in extra], dtype=str), np.array([b for _, b in extra], dtype=str)
    return CandidatePairs(np.concatenate([q0, qa]).astype(str), np.concatenate([r0, ra]).astype(str),
                          np.r_[np.asarray(shortlist.scores, np.float64), np.full(len(extra), np.nan)],
                          np.r_[np.asarray(shortlist.ranks, np.int64), np.full(len(extra), -1, np.int64)],
                          shortlist.all_queries)


class Matcher:
    """Base class of the matchers (see the module docstring)."""

    #: registry name, set by :data:`MATCHERS` registration
    name: str = ""
    #: the matcher searches all references itself: under ``candidates.k = "all"`` it gets only a
    #: shortlist and returns the pairs it found (:attr:`MatchResult.pairs`)
    own_search: bool = False
    #: with ``own_search``: the descriptor method's best references per query it wants to see
    shortlist: int = 0

    def score(self, pairs: CandidatePairs, ctx: MatchContext) -> MatchResult:  # pragma: no cover - abstract
        raise NotImplementedError


MATCHERS: Registry = Registry("matcher")


def matcher_params(params: dict) -> dict:
    """The parameters of a matching method that belong to its matcher (not ``candidates.*``)."""
    return {k: v for k, v in params.items() if k not in CANDIDATE_KEYS and k not in OPTIONAL_CANDIDATE_KEYS}


def create_matcher(name: str, params: dict) -> Matcher:
    """Build the registered matcher ``name`` with the matcher part of a method's ``params``.

    Raises:
        KeyError: unknown matcher. TypeError: a parameter the matcher does not take (names it).
    """
    cls = MATCHERS.get(name)
    own = matcher_params(params)
    accepted = inspect.signature(cls).parameters
    unknown = [k for k in own if k not in accepted]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        raise TypeError(f"matcher {name!r} takes no parameter {unknown[0]!r}; it takes {', '.join(accepted)}")
    m = cls(**own)
    m.name = name
    return m
