"""``imsim-lab eval``: evaluate a matching CSV or a descriptor HDF5 against a ground truth."""

from __future__ import annotations

import json
import time

from ..errors import ImsimError
from ..eval.protocols import get_protocol, protocol_names


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a submission with the official metrics",
                       description="Evaluate a matching-track CSV or a descriptor-track HDF5 with the "
                                   "official ISC2021 metrics (µAP, R@P90, R@rank1/10).")
    p.add_argument("--gt", required=True, help="ground-truth CSV (query_id,reference_id)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="matching-track CSV (query_id,reference_id,score)")
    src.add_argument("--descriptors", help="descriptor-track HDF5 (query, reference, query_ids, reference_ids)")
    names = protocol_names()
    p.add_argument("--protocol", choices=names, default=names[0],
                   help=f"which official implementation to follow (default: {names[0]})")
    lim = p.add_mutually_exclusive_group()
    lim.add_argument("--knn", type=int, help="descriptors: k neighbours per query instead of a global budget")
    lim.add_argument("--max-results", type=int,
                     help="descriptors: the global budget of pairs (default 500,000 isc2021, nq x 10 drivendata)")
    p.add_argument("--metric", choices=["l2", "ip"], default="l2", help="descriptors: distance (default l2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..eval.candidates import descriptor_predictions
    from ..eval.formats import read_descriptors, read_ground_truth, read_predictions
    from ..eval.metrics import evaluate

    t0 = time.perf_counter()
    for flag, value in (("--knn", args.knn), ("--max-results", args.max_results)):
        if value is not None and args.predictions:
            raise ImsimError("--knn and --max-results apply to --descriptors only")
        if value is not None and value < 1:
            raise ImsimError(f"{flag} must be at least 1, not {value}")
    gt = read_ground_truth(args.gt)
    if args.predictions:
        proto = get_protocol(args.protocol)
        preds = read_predictions(args.predictions, max_rows=proto.max_rows,
                                 allow_duplicates=proto.duplicates == "count")
    else:
        sub = read_descriptors(args.descriptors)
        preds = descriptor_predictions(sub, gt, args.protocol, knn=args.knn, max_results=args.max_results,
                                       metric=args.metric)
    m = evaluate(gt, preds, args.protocol)
    out = m.to_dict()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(out))
        return 0
    print(format_metrics(out))
    return 0


def format_metrics(d: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.5f}" if isinstance(v, float) else str(v)

    lines = [f"protocol          : {d['protocol']}",
             f"micro AP          : {f(d['micro_ap'])}"]
    if d["recall_at_p90"] is None:
        lines.append("recall at P90     : not reached")
    else:
        lines.append(f"recall at P90     : {f(d['recall_at_p90'])}"
                     f"  (precision {f(d['precision_at_p90'])}, threshold {f(d['threshold_at_p90'])})")
    if d["recall_at_rank1"] is not None:
        lines.append(f"recall at rank 1  : {f(d['recall_at_rank1'])}")
        lines.append(f"recall at rank 10 : {f(d['recall_at_rank10'])}")
    lines.append(f"predictions       : {d['n_predictions']} ({d['n_dropped']} dropped), positives: {d['n_positives']}")
    return "\n".join(lines)
