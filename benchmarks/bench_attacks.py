"""Benchmark of the attacks: seconds per attacked query; prints figures, asserts nothing about time.

For each surrogate model (random weights: the cost does not depend on them) and attack, a batch of
query-sized images (512 x 384, the long side of disc-synth queries) is attacked end to end through
:class:`imsim_lab.analysis.attacks.DifferentiableDescriptor` (antialiased resize to the model's input,
normalisation, backbone, GeM, head), and the wall-clock and process CPU seconds per query are
printed. Process CPU time counts every thread, so on a shared machine it is the steadier figure.

Run: ``.venv/bin/python benchmarks/bench_attacks.py [--device cuda] [--batch 4] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from imsim_lab.analysis.attacks import AttackConfig, DifferentiableDescriptor, attack
from imsim_lab.features.models import create_model

MODELS = [("resnet18_gem", {"input_size": 224}), ("resnet50_gem", {"input_size": 224}),
          ("resnet18_gem", {"input_size": 112})]
ATTACKS = [AttackConfig("fgsm", "linf", eps=8 / 255), AttackConfig("pgd", "linf", eps=8 / 255, steps=10),
           AttackConfig("pgd", "l2", eps=2.0, steps=10)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="resnet18 at 112 only, FGSM and PGD-10 L-inf")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}, batch {args.batch}, images 512x384")
    models = MODELS[2:] if args.quick else MODELS
    attacks = ATTACKS[:2] if args.quick else ATTACKS
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((args.batch, 3, 384, 512), dtype=np.float32)).to(args.device)
    print(f"{'model':<14}{'input':>6}  {'attack':<18}{'wall s/query':>13}{'cpu s/query':>13}")
    for name, kw in models:
        f = DifferentiableDescriptor(create_model(name, device=args.device, **kw))
        with torch.no_grad():
            anchor = f(x.flip(0))
        attack(f, x[:1], anchor[:1], AttackConfig("fgsm", eps=1 / 255))  # warm-up
        for cfg in attacks:
            w0, c0 = time.perf_counter(), time.process_time()
            attack(f, x, anchor, cfg)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            label = f"{cfg.name}" + (f"-{cfg.steps}" if cfg.method == "pgd" else "")
            print(f"{name:<14}{kw['input_size']:>6}  {label:<18}{w / args.batch:>13.3f}{c / args.batch:>13.3f}")


if __name__ == "__main__":
    main()
