"""What to look at first in a results folder: a few findings, each with a link into the explorer.

Used by ``imsim-lab demo`` after the runs, and testable without a server: the links carry the
filter state as URL query parameters (the explorer's widgets are bound to them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from .runs import discover_runs, resolve_benchmark
from .families import family_metrics
from .tables import leaderboard, load_run_data

PAGE_PATHS = {"leaderboard": "", "families": "families", "failures": "failures", "compare": "compare",
              "adversarial": "adversarial", "audit": "audit", "pairs": "pairs", "costs": "costs",
              "browser": "browser", "submit": "submit"}


@dataclass(frozen=True)
class Finding:
    """One thing to look at: a sentence and the explorer page (with its query parameters)."""

    text: str
    page: str
    params: dict

    def url(self, base: str) -> str:
        q = urlencode(self.params, doseq=True)
        return f"{base.rstrip('/')}/{PAGE_PATHS[self.page]}" + (f"?{q}" if q else "")


def first_look(results_root, protocol: str = "isc2021", n_boot: int = 200) -> list[Finding]:
    """Findings about the largest benchmark of a results folder (empty when it holds no run):

    1. the best run and how many runs are statistically tied with it (Leaderboard);
    2. the best run's weakest family with enough positives (Per-augmentation AP, that cell);
    3. its missed matches in that family (Failure cases);
    4. the pair of runs to compare: the best against the plain baseline of its model, when any;
    5. the adversarial suites (Adversarial robustness) and the graded suite (Per-augmentation AP's
       graded curves), when a run has them.
    """
    runs, _ = discover_runs(results_root)
    if not runs:
        return []
    by: dict[str, list] = {}
    for r in runs:
        by.setdefault(r.bench_name, []).append(r)
    name, infos = max(by.items(), key=lambda kv: ((kv[1][0].config.get("benchmark") or {}).get("counts", {})
                                                  .get("queries", 0), len(kv[1])))
    from ...data.benchmark import load_benchmark

    root = resolve_benchmark(infos[0], [results_root])
    gt = load_benchmark(root, check_hashes=False).gt if root else None
    rds = [load_run_data(r, gt) for r in infos]
    lb = leaderboard(rds, protocol, n_boot=n_boot)
    best = lb.iloc[0]
    tied = [x for x in lb.loc[lb["tied_with_best"], "label"] if x != best["label"]]
    out = [Finding(f"Leaderboard: best {best['label']} (µAP {best['micro_ap']:.3f}, 95 % interval "
                   f"{best['micro_ap_low']:.3f}-{best['micro_ap_high']:.3f}); "
                   + (f"statistically tied with {', '.join(tied)}." if tied else "no other run is tied with it."),
                   "leaderboard", {"bench": name, "protocol": protocol})]
    ft = family_metrics([r for r in rds if r.label == best["label"]], protocol, "prevalence", n_boot=0)
    ok = ft[(ft["n_positives"] >= 3) & ft["micro_ap"].notna()]
    if len(ok):
        w = ok.sort_values("micro_ap").iloc[0]
        out.append(Finding(f"Per-augmentation AP: {best['label']} is weakest on '{w['family']}' "
                           f"(prevalence-matched µAP {w['micro_ap']:.3f}, R@1 {w['recall_at_rank1']:.2f}, over "
                           f"{int(w['n_positives'])} positives); click that cell.",
                           "families", {"bench": name, "protocol": protocol, "cell_run": best["label"],
                                        "cell_family": w["family"]}))
        out.append(Finding(f"Failure cases: what {best['label']} retrieves instead on '{w['family']}'.",
                           "failures", {"bench": name, "protocol": protocol, "run": best["label"],
                                        "fam": w["family"]}))
    base = next((r for r in rds if r.label != best["label"] and r.info.config.get("model_fingerprint")
                 and r.info.config.get("model_fingerprint") == _fp(rds, best["label"])
                 and r.info.config.get("post") in ("none", None)), None)
    if base is not None:
        d = best["micro_ap"] - (base.info.metric(protocol, "micro_ap") or math.nan)
        out.append(Finding(f"Compare: {best['label']} against {base.label} (same descriptor, µAP {d:+.3f}): which "
                           "queries the post-processing fixed and which it broke.", "compare",
                           {"bench": name, "protocol": protocol, "a": base.label, "b": best["label"]}))
    out += robustness_findings(infos, name, protocol)
    return out


def robustness_findings(infos, bench_name: str, protocol: str = "isc2021") -> list[Finding]:
    """Findings about the attack suites and graded suites of these runs (none when there are none)."""
    from .robustness import attack_curves, find_attacks, graded_table

    out = []
    curves = attack_curves(find_attacks(infos), protocol)
    if len(curves):
        top = curves[curves["eps"] == curves["eps"].max()]
        parts = [f"{r['eval_label']} ({r['kind']}) µAP {r['micro_ap']:.3f}" for _, r in top.iterrows()]
        clean = curves[curves["eps"] == 0]
        base = ", ".join(f"{r['eval_label']} {r['micro_ap']:.3f}" for _, r in clean.iterrows())
        out.append(Finding(f"Adversarial robustness: at ε {top['eps_label'].iloc[0]} " + ", ".join(parts)
                           + (f" (clean: {base})" if base else "") + ".", "adversarial",
                           {"bench": bench_name, "protocol": protocol}))
    graded = graded_table(infos)
    graded = graded[graded["protocol"] == protocol] if len(graded) else graded
    if len(graded):
        hard = graded[graded["strength"] == graded["strength"].max()].sort_values("micro_ap").iloc[0]
        out.append(Finding(f"Graded suite: {hard['label']} at full strength is weakest on '{hard['family']}' "
                           f"(µAP {hard['micro_ap']:.3f}); see the curves under Per-augmentation AP.", "families",
                           {"bench": bench_name, "protocol": protocol, "gfam": hard["family"]}))
    return out


def _fp(rds, label):
    return next((r.info.config.get("model_fingerprint") for r in rds if r.label == label), None)
