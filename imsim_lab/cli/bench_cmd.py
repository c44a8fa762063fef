"""``imsim-lab bench``: build the embedded disc-synth benchmark, import your own images as a
benchmark, and describe any benchmark folder."""

from __future__ import annotations

import json

from .progress import PhaseBars, show_help


def register(sub) -> None:
    p = sub.add_parser("bench", help="build disc-synth, describe a benchmark folder",
                       description="The embedded benchmark disc-synth and the benchmark folder format.")
    bsub = p.add_subparsers(dest="bench_command", metavar="ACTION")

    b = bsub.add_parser("build", help="build disc-synth (offline, deterministic)",
                        description="Build the disc-synth benchmark: drawn scenes and packaged photos as "
                                    "originals (or --source photos), queries made with the DISC21-style "
                                    "transformation families. Same --seed, same bytes.")
    b.add_argument("--preset", default="small", help="tiny | small | demo | medium (default: small)")
    b.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    b.add_argument("--out", required=True, help="benchmark folder to write")
    b.add_argument("--source", help="folder of your own photos to use as originals")
    b.add_argument("--workers", type=int, help="processes (default: every available CPU)")
    b.add_argument("--name", help="benchmark name (default disc-synth-PRESET-sSEED)")
    b.add_argument("--overwrite", action="store_true", help="replace a folder that holds another build")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=run_build)

    m = bsub.add_parser("import", help="a benchmark folder from your own queries, references and ground truth",
                        description="DIR holds queries/ and references/ (images), optionally training/, and a "
                                    "ground-truth CSV in the official format (query_id,reference_id; every query "
                                    "listed, an empty reference for no match): DIR/ground_truth.csv, the only CSV "
                                    "of DIR, or --gt. Ids are the file names without extension; names that are not "
                                    "DISC21 ids are renamed (id_map.csv keeps the originals). Families are "
                                    "'unknown'.")
    m.add_argument("src", metavar="DIR", help="folder with queries/, references/ [training/] and the CSV")
    m.add_argument("--out", required=True, help="benchmark folder to write")
    m.add_argument("--gt", help="the ground-truth CSV (default: DIR/ground_truth.csv or the only CSV of DIR)")
    m.add_argument("--name", help="benchmark name (default: the folder's name)")
    m.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    m.set_defaults(func=run_import)

    i = bsub.add_parser("info", help="counts, families and manifest of a benchmark folder")
    i.add_argument("root", help="benchmark folder")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=run_info)

    r = bsub.add_parser("realism", help="how photographic the originals look to SSCD; writes BENCH/realism.json",
                        description="Cosine statistics of the distinct references (whole set and random samples "
                                    "the size of the comparison set), the same for a second image set (default: "
                                    "the natural photos of scikit-image and scikit-learn), and the gap between "
                                    "an edited copy and its hardest distractor. Targets (issue 8): mean <= 0.08, "
                                    "median max <= 0.30. Writes realism.json into the benchmark folder.")
    r.add_argument("root", help="benchmark folder")
    r.add_argument("--against", help="image folder or benchmark folder to compare with (default: packaged photos)")
    r.add_argument("--sample", type=int, help="sample size (default: the size of the comparison set)")
    r.add_argument("--draws", type=int, default=20, help="random samples averaged (default 20)")
    r.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    r.add_argument("--model", default="sscd_disc_mixup_onnx", help="descriptor model (default: bundled SSCD)")
    r.add_argument("--max-references", type=int, help="a random subset of the references (keeps the matched ones)")
    r.add_argument("--max-queries", type=int, help="at most N queries with a match")
    r.add_argument("--no-write", action="store_true", help="do not write realism.json")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=run_realism)
    p.set_defaults(func=lambda args: show_help(p))


def run_build(args) -> int:
    from ..data.synth import BuildConfig, build_benchmark

    cfg = BuildConfig(preset=args.preset, seed=args.seed, source=args.source, workers=args.workers, name=args.name)
    try:
        cfg.resolved_preset()
    except KeyError as e:
        from ..errors import ImsimError

        raise ImsimError(str(e).strip('"')) from None
    bars = PhaseBars(args.quiet)
    try:
        rep = build_benchmark(cfg, args.out, overwrite=args.overwrite, progress=bars)
    finally:
        bars.close()
    m = rep.manifest
    c = m["counts"]
    print(f"built {m['name']} in {args.out} ({rep.workers} worker{'s' if rep.workers > 1 else ''})")
    for phase, sec in rep.timings.items():
        print(f"  {phase:<13} {sec:8.2f} s")
    print(f"  images written {rep.images_written} ({rep.images_reused} kept from an earlier run), "
          f"{rep.images_per_second:.1f} images/s")
    print(f"  references {c['references']}, training {c['training']}, queries {c['queries']} "
          f"({c['positives']} with a match, {c.get('hard_negatives', 0)} near-duplicate negatives)")
    if rep.skipped or rep.converted:
        print(f"source report: {len(rep.skipped)} skipped, {len(rep.converted)} converted "
              f"(details in {args.out}/build_report.json)")
        for s in rep.skipped[:20]:
            print(f"  skipped   {s['path']}: {s['reason']}")
        for s in rep.converted[:20]:
            print(f"  converted {s['path']}: {s['note']}")
    return 0


def run_import(args) -> int:
    from ..data.import_folder import import_folder

    rep = import_folder(args.src, args.out, gt=args.gt, name=args.name, overwrite=args.overwrite)
    c = rep.counts
    print(f"imported {args.src} -> {rep.out}: {c['queries']} queries ({c['positives']} with a match), "
          f"{c['references']} references, {c['training']} training images; {rep.linked} files hard-linked, "
          f"{rep.copied} copied" + (f"; renamed to DISC21 ids: {', '.join(rep.renamed)} (see id_map.csv)"
                                    if rep.renamed else ""))
    print(f"next: imsim-lab run sscd --bench {rep.out} --out runs/sscd")
    return 0


def run_info(args) -> int:
    from ..data.benchmark import load_benchmark

    b = load_benchmark(args.root)
    s = b.summary()
    if args.json:
        print(json.dumps(s, sort_keys=True))
        return 0
    m = b.manifest
    c = s["counts"]
    print(f"benchmark   : {b.name}  ({b.root})")
    print(f"generator   : {m.get('generator', '?')} {m.get('version', '')}  seed {m.get('seed', '-')}  "
          f"preset {m.get('preset', '-')}")
    print(f"queries     : {c['queries']} ({c['positives']} with a match, match rate {s['match_rate']:.1%})")
    print(f"references  : {c['references']}   training: {c['training']}   held-out originals: {c['held_out']}")
    if s["strength"]:
        st = s["strength"]
        print(f"strength    : {st['min']:.2f} .. {st['max']:.2f} (mean {st['mean']:.2f})")
    print("families    : queries (with a match)")
    for fam, v in s["families"].items():
        print(f"  {fam:<16} {v['queries']:6d} ({v['positives']})")
    if b.references is not None and "scene" in b.references:
        sc = b.references["scene"].value_counts().sort_index()
        print("reference scenes: " + ", ".join(f"{k} {v}" for k, v in sc.items()))
    return 0


def _stats_row(label: str, n: int, st) -> str:
    return f"  {label:<44} {n:>6d} {st.mean_cos:>8.3f} {st.median_max_cos:>10.3f} {st.p90_max_cos:>8.3f}"


def run_realism(args) -> int:
    from ..analysis.realism import measure_realism, write_realism

    bars = PhaseBars(args.json)
    try:
        rep = measure_realism(args.root, args.against, args.sample, args.draws, args.seed, args.model,
                              args.max_references, args.max_queries, progress=bars)
    finally:
        bars.close()
    path = None if args.no_write else write_realism(args.root, rep)
    if args.json:
        print(json.dumps(rep.to_dict(), sort_keys=True))
        return 0
    b, a = rep.bench, rep.against
    print(f"realism of {rep.benchmark} ({args.model}; samples of {rep.sample_size}, {rep.draws} draws, seed {rep.seed})")
    print(f"  {'image set':<44} {'n':>6} {'mean cos':>8} {'median max':>10} {'p90 max':>8}")
    print(f"  benchmark : {b.name}\n  comparison: {a.name}")
    print(_stats_row("benchmark, random samples", rep.sample_size, b.sampled))
    print(_stats_row("comparison, random samples", rep.sample_size, a.sampled))
    print(_stats_row("benchmark, all references", b.full.n, b.full))
    print(_stats_row("comparison, all images", a.full.n, a.full))
    print(f"  targets (samples): mean <= {rep.targets['mean_cos']:.2f}, median max <= {rep.targets['median_max_cos']:.2f}"
          f"  -> {'met' if rep.meets_targets else 'NOT met'}")
    print(f"  {'edited copy vs hardest distractor (medians)':<48} positive  hardest    gap  top-1")
    for label, g in ((f"benchmark, all {b.n_images} references", b.gap),
                     (f"benchmark, {rep.sample_size - 1} random distractors", rep.bench_gap_sampled),
                     (f"comparison, {a.n_images - 1} distractors", a.gap)):
        if g is not None:
            print(f"    {label:<46} {g.positive:6.3f} {g.hardest_negative:8.3f} {g.gap:6.3f} {g.top1:6.1%}")
    if b.full.per_group:
        print("  per scene (all references): n, mean cos, median max")
        for k, v in b.full.per_group.items():
            print(f"    {k:<14} {v['n']:5d} {v['mean_cos']:7.3f} {v['median_max_cos']:7.3f}")
    print("verdict:")
    for line in rep.verdict:
        print(f"  {line}")
    if path is not None:
        print(f"written {path}")
    return 0
