"""The evaluation protocols as frozen definitions, in one registry.

Two reference implementations of the ISC2021 metrics exist and they disagree
(``docs/PROTOCOLS.md`` states each rule and where it comes from). A protocol here is everything
that differs between them, from the candidate budget of the descriptor track to the value reported
when precision 90 is never reached::

    from imsim_lab.eval.protocols import PROTOCOLS, get_protocol, protocol_names
    protocol_names()                    # ("isc2021", "drivendata"), in the order runs report them
    get_protocol("drivendata").budget(nq=50_000)   # 500,000 pairs: nq x 10

Add one with ``PROTOCOLS.add(name, Protocol(...))``; every runner, reader and page that loops over
protocols takes them from :func:`protocol_names`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
        name: registry name (``metrics.json`` section, ``--protocol`` value).
        source: the implementation it reproduces.
        duplicates: ``"error"`` (a repeated (query, reference) pair is refused) or ``"count"``
            (it is counted again, so µAP can exceed 1).
        unknown_queries: ``"keep"`` (predictions for queries absent from the ground truth count
            as wrong) or ``"drop"``.
        p90_missing: what R@P90 and its precision / threshold are when precision 0.9 is never
            reached: ``None`` or ``0.0``.
        rank_recalls: whether R@rank1 and R@rank10 are reported.
        max_results: the descriptor track's global budget of pairs, when it is a fixed number.
        per_query_budget: the budget as pairs per ground-truth query (``nq x per_query_budget``).
        max_rows: the matching-track CSV's row cap, or None.
    """

    name: str
    source: str
    duplicates: str
    unknown_queries: str
    p90_missing: float | None
    rank_recalls: bool
    max_results: int | None = None
    per_query_budget: int | None = None
    max_rows: int | None = 500_000

    def __post_init__(self):
        if self.duplicates not in ("error", "count"):
            raise ValueError(f"duplicates must be 'error' or 'count', not {self.duplicates!r}")
        if self.unknown_queries not in ("keep", "drop"):
            raise ValueError(f"unknown_queries must be 'keep' or 'drop', not {self.unknown_queries!r}")
        if (self.max_results is None) == (self.per_query_budget is None):
            raise ValueError("give exactly one of max_results and per_query_budget")

    def budget(self, nq: int) -> int:
        """The global candidate budget of the descriptor track for ``nq`` (kept) queries."""
        return self.max_results if self.max_results is not None else nq * self.per_query_budget


PROTOCOLS: Registry = Registry("protocol")
PROTOCOLS.add("isc2021", Protocol(
    "isc2021", "facebookresearch/isc2021 isc/metrics.py and scripts/compute_metrics.py --track2",
    duplicates="error", unknown_queries="keep", p90_missing=None, rank_recalls=True, max_results=500_000))
PROTOCOLS.add("drivendata", Protocol(
    "drivendata", "the evaluation script of the DrivenData leaderboard (eval_metrics.py)",
    duplicates="count", unknown_queries="drop", p90_missing=0.0, rank_recalls=False, per_query_budget=10))


def get_protocol(name: str) -> Protocol:
    """The registered protocol ``name`` (ValueError naming the known ones otherwise)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; use one of {', '.join(protocol_names())}")
    return PROTOCOLS.get(name)


def protocol_names() -> tuple[str, ...]:
    """The registered protocols, ``isc2021`` first (the order of run folders and tables)."""
    return tuple(PROTOCOLS.in_order())
