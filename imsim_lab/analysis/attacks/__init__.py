"""Adversarial robustness of copy-detection descriptors (ISC2021 phase 2 added adversarial queries).

    from imsim_lab.analysis.attacks import AttackConfig, DifferentiableDescriptor, attack
    f = DifferentiableDescriptor(create_model("resnet18_gem", input_size=128, device="cpu"))
    x_adv = attack(f, x, anchor, AttackConfig("pgd", "linf", eps=8 / 255, steps=10))

* :mod:`.core`: FGSM and PGD (L-inf, L2; untargeted or targeted; random start), 8-bit
  quantisation inside the budget, JPEG re-encoding, amplified perturbation images;
* :mod:`.suite`: attack a sample of a benchmark's queries on a surrogate run, evaluate the
  surrogate (white-box) and other runs (transfer, SSCD through onnxruntime included) at each
  epsilon: µAP / R@P90 curves, per-query retrieval before and after, example images.

Shown by the explorer's adversarial page (``explorer/views/adversarial.py``); no lesson yet.
"""

from .core import (AttackConfig, AttackError, DifferentiableDescriptor, attack, jpeg_roundtrip, perturbation_image,
                   project, quantize)
from .suite import (DEFAULT_EPS_L2, DEFAULT_EPS_LINF, SuiteConfig, choose_targets, eps_label, make_adversarial,
                    run_attack_suite, sample_queries)

__all__ = ["AttackConfig", "AttackError", "DEFAULT_EPS_L2", "DEFAULT_EPS_LINF", "DifferentiableDescriptor",
           "SuiteConfig", "attack", "choose_targets", "eps_label", "jpeg_roundtrip", "make_adversarial",
           "perturbation_image", "project", "quantize", "run_attack_suite", "sample_queries"]
