"""``python -m imsim_lab.train RECIPE --bench DIR --out DIR ...``: the same command as ``imsim-lab train``
(the recipes are :mod:`imsim_lab.train.recipes`, the command :mod:`imsim_lab.cli.train_cmd`), printing
its summary as one JSON line (rank 0) for scripts; progress goes to stderr. Also under ``torchrun
--nproc_per_node N -m imsim_lab.train ...`` (DDP: nccl on CUDA, gloo on CPU). Re-running a command
resumes it.
"""

import sys

from ..cli.train_cmd import main

if __name__ == "__main__":
    sys.exit(main())
