"""``imsim-lab data``: verify a local DISC21 copy, make named subsets of it in the benchmark format."""

from __future__ import annotations

import json

from .progress import PhaseBars, show_help


def register(sub) -> None:
    p = sub.add_parser("data", help="DISC21: verify a local copy, make subsets",
                       description="Work with a local copy of DISC21 (see data_manifests/disc21.json).")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")

    v = dsub.add_parser("verify", help="check a DISC21 copy against the manifest (exit 0 only when complete)",
                        description="Stream over the files of a DISC21 copy and report missing, unreadable and "
                                    "unexpected files and the checksums of the public list files.")
    v.add_argument("root", help="the DISC21 folder")
    v.add_argument("--check", choices=["exists", "magic", "decode"], default="magic",
                   help="per-file check: presence only, JPEG markers (default, fast), or a full decode (slow)")
    v.add_argument("--splits", nargs="+", help="splits to check (default: all; final_queries is optional)")
    v.add_argument("--manifest", help="another manifest JSON (default data_manifests/disc21.json)")
    v.add_argument("--workers", type=int, default=8, help="reader threads (default 8)")
    v.add_argument("--json", action="store_true", help="print the full report as JSON")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=run_verify)

    s = dsub.add_parser("subset", help="make a named, deterministic DISC21 subset in the benchmark format",
                        description="All positives of a ground truth (or --positives of them), --references more "
                                    "references, --negatives queries without a match and --training training "
                                    "images, linked (not copied) into a benchmark folder.")
    s.add_argument("root", help="the DISC21 folder")
    s.add_argument("--out", required=True, help="the benchmark folder to write")
    s.add_argument("--name", help="subset name (default: the --out folder name)")
    s.add_argument("--gt", help="ground-truth CSV (default: public_ground_truth.csv found under ROOT)")
    s.add_argument("--positives", type=int, help="queries with a match to keep (default: all)")
    s.add_argument("--references", type=int, default=10_000, help="extra references (distractors), default 10000")
    s.add_argument("--negatives", type=int, default=10_000, help="queries without a match, default 10000")
    s.add_argument("--training", type=int, default=10_000, help="training images, default 10000")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--link", choices=["symlink", "hardlink", "copy"], default="symlink",
                   help="how images are placed (symlink falls back to hardlink, then copy)")
    s.add_argument("--manifest", help="another manifest JSON (default data_manifests/disc21.json)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_subset)
    p.set_defaults(func=lambda args: show_help(p))


def run_verify(args) -> int:
    from ..data.disc21 import load_manifest, verify

    manifest = load_manifest(args.manifest)
    bar = PhaseBars(args.quiet, "file")
    try:
        rep = verify(args.root, manifest, check=args.check, splits=args.splits, workers=args.workers, progress=bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(rep.to_dict(), sort_keys=True))
        return 0 if rep.complete else 1
    print(f"DISC21 at {rep.root} (check: {rep.check})")
    for s in rep.splits:
        state = "ok" if s.ok else ("MISSING" if not s.folders else "INCOMPLETE")
        opt = "" if s.required else " (optional)"
        print(f"  {s.name:<14} {s.found:>9,d} / {s.expected:<9,d} {state}{opt}   folders: {', '.join(s.folders) or 'none found'}")
        if s.missing:
            more = f" ... ({s.missing:,d} in all)" if s.missing > len(s.missing_ids) else ""
            print(f"      missing    {', '.join(s.missing_ids[:8])}{more}")
        for u in s.unreadable[:8]:
            print(f"      unreadable {u['file']}: {u['problem']}")
        if s.n_unreadable > 8:
            print(f"      ... {s.n_unreadable:,d} unreadable in all")
        if s.n_unexpected:
            print(f"      unexpected {', '.join(s.unexpected[:5])}{' ...' if s.n_unexpected > 5 else ''} "
                  f"({s.n_unexpected:,d} in all)")
    for f in rep.list_files:
        print(f"  list file {f['file']:<28} {f['status']}{'  (' + f['path'] + ')' if f['path'] else ''}")
    print("complete" if rep.complete else "NOT complete")
    return 0 if rep.complete else 1


def run_subset(args) -> int:
    from pathlib import Path

    from ..data.disc21 import SubsetConfig, load_manifest, make_subset

    cfg = SubsetConfig(name=args.name or Path(args.out).name, ground_truth=args.gt, positives=args.positives,
                       references=args.references, negatives=args.negatives, training=args.training,
                       seed=args.seed, link=args.link)
    bar = PhaseBars(args.quiet, "img")
    try:
        m = make_subset(args.root, args.out, cfg, load_manifest(args.manifest), progress=bar)
    finally:
        bar.close()
    c = m["counts"]
    print(f"subset {m['name']} written to {args.out}: {c['queries']} queries ({c['positives']} with a match), "
          f"{c['references']} references, {c['training']} training images; "
          + ", ".join(f"{v} {k}" for k, v in m["linked"].items()))
    return 0
