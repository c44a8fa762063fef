"""Multi-GPU / multi-node extraction with ``torchrun``: each rank extracts its shards, rank 0 merges.

    torchrun --nproc_per_node 8 -m imsim_lab.features.torchrun_extract \\
        --model sscd_disc_mixup_onnx --images list.txt --out features/ --name reference

``--images`` is a text file with one ``id<TAB>path`` (or just a path; the id is then the file
stem) per line, the same on every rank. The backend is NCCL when CUDA is present, gloo otherwise
(tested on CPU with two gloo processes). Each rank uses GPU ``LOCAL_RANK``, bound to the process
group; at most one rank per GPU (NCCL refuses two ranks on one GPU): the set-up of
:func:`imsim_lab.distributed.init_from_env`, the same as training's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..distributed import destroy_distributed, init_from_env
from .extract import ExtractConfig, extract_split


def read_image_list(path: str | Path) -> tuple[list[str], list[str]]:
    """(ids, paths) from a list file (``id<TAB>path`` or ``path`` per line)."""
    ids, paths = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if "\t" in line:
            i, p = line.split("\t", 1)
        else:
            p = line.strip()
            i = Path(p).stem
        ids.append(i)
        paths.append(p)
    return ids, paths


def main(argv: list[str] | None = None) -> int:
    from .models import create_model

    p = argparse.ArgumentParser(prog="python -m imsim_lab.features.torchrun_extract")
    p.add_argument("--model", required=True)
    p.add_argument("--model-args", default="{}", help="JSON object of model overrides")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="features")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--backend", default=None)
    a = p.parse_args(argv)
    rank, world, device = init_from_env(a.backend)
    try:
        model = create_model(a.model, device=device, **json.loads(a.model_args))
        ids, paths = read_image_list(a.images)
        cfg = ExtractConfig(a.batch_size, a.workers, a.shard_size, a.dtype)
        extract_split(model, paths, ids, a.out, a.name, cfg)
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":  # pragma: no cover - launched by torchrun in the tests
    raise SystemExit(main())
