"""``python -m imsim_lab.train lyakaap --bench DIR --out DIR ...``: one training stage, also under
``torchrun --nproc_per_node N -m imsim_lab.train ...`` (DDP: nccl on CUDA, gloo on CPU).

Re-running the same command resumes from ``OUT/checkpoint.pt``. Prints one JSON line at the end
(rank 0); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    from ..errors import ImsimError

    ap = argparse.ArgumentParser(prog="python -m imsim_lab.train", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="recipe", required=True)
    p = sub.add_parser("lyakaap", help="one stage of lyakaap's contrastive training with a memory bank")
    p.add_argument("--bench", required=True, help="benchmark folder (its training/ images are used)")
    p.add_argument("--out", required=True, help="training run folder (checkpoint.pt, weights.pt, history.json)")
    p.add_argument("--stage", default="v83", help="view stage: v83 (256), v86 (384), v98 (512)")
    p.add_argument("--size", type=int, default=None, help="override the stage's resolution")
    p.add_argument("--backbone", default=None, help="timm backbone (default: the published EfficientNetV2-M)")
    p.add_argument("--pretrained", action="store_true", help="timm hub weights for the backbone (internet)")
    p.add_argument("--init", default=None, help="weights.pt of the previous stage")
    p.add_argument("--memory-size", type=int, default=20_000)
    p.add_argument("--neg-margin", type=float, default=1.0)
    p.add_argument("--reference-negatives", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32, help="images per process")
    p.add_argument("--accum-steps", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "linear", "cosine"])
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    from ..benchmark import load_benchmark
    from .lyakaap import PUBLISHED_BACKBONE, StageConfig, train_stage
    from .trainer import TrainConfig, init_distributed

    rank, world = init_distributed()
    try:
        tc = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         accum_steps=args.accum_steps, lr=args.lr, lr_schedule=args.lr_schedule, amp=args.amp,
                         num_workers=args.workers, checkpoint_every=args.checkpoint_every, seed=args.seed,
                         device=args.device)
        cfg = StageConfig(stage=args.stage, size=args.size, backbone=args.backbone or PUBLISHED_BACKBONE,
                          pretrained=args.pretrained, memory_size=args.memory_size, neg_margin=args.neg_margin,
                          reference_negatives=args.reference_negatives, train=tc)
        bench = load_benchmark(args.bench)

        def show(rec):
            print(f"step {rec['step']} epoch {rec['epoch']:.2f} loss {rec['loss']:.4f} lr {rec['lr']:.4g}",
                  file=sys.stderr)

        res = train_stage(bench, args.out, cfg, init=args.init, on_step=show)
    except (ImsimError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"out": str(res.out), "steps": res.steps, "total_steps": res.total_steps,
                          "resumed_from": res.resumed_from, "seconds": round(res.seconds, 2),
                          "world_size": world, "weights": str(res.weights)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
