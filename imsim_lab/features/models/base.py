"""The interface shared by every descriptor model, torch or not.

A model has a frozen :class:`~imsim_lab.features.models.config.ModelConfig`, a picklable
:attr:`preprocess` derived from it (run in DataLoader workers), and :meth:`embed`, which turns a
batch of preprocessed arrays into descriptors ``(b, d)`` float32. Arrays of different shapes
(SSCD keeps the aspect ratio) are grouped by shape and each group runs as one batch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from .config import ModelConfig, Preprocess


def resolve_device(device: str | None = None) -> str:
    """``None`` or ``"auto"``: CUDA when present, else CPU: the device is a parameter, never a global."""
    if device not in (None, "auto"):
        return str(device)
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


class DescriptorModel:
    """Base class: subclasses implement :meth:`_embed_stacked` (one array of equal shapes)."""

    def __init__(self, config: ModelConfig, device: str | None = None):
        self.config = config
        self.device = resolve_device(device)

    @property
    def fixed_size(self) -> bool:
        """True when every preprocessed array has the same shape (square resize)."""
        return self.config.resize == "square"

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def preprocess(self) -> Preprocess:
        """PIL image -> input array; derived from :attr:`config` only."""
        return Preprocess(self.config)

    def to(self, device: str | None) -> "DescriptorModel":
        self.device = resolve_device(device)
        return self

    def embed(self, batch: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors of a batch of preprocessed images.

        Args:
            batch: a stacked array ``(b, ...)`` or a list of b arrays (shapes may differ).

        Returns:
            ``(b, d)`` float32, in the order of ``batch``.
        """
        return self._embed_groups(batch, self._embed_stacked)

    def cpu_streams(self) -> int:
        """How many :meth:`embed_stream` calls should run at once on this machine.

        1 (the default): the model parallelises inside one call (torch's or onnxruntime's
        intra-op threads), so batches run one after the other. More than 1: the model is
        faster as that many single-threaded calls on different batches, each in its own
        thread (see :func:`~imsim_lab.features.extract_split`), and :meth:`embed_stream` is
        safe to call from several threads at once.
        """
        return 1

    def embed_stream(self, batch: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """:meth:`embed` on one thread, safe to call concurrently when :meth:`cpu_streams` > 1.

        Same descriptors as :meth:`embed` (up to float rounding of a different thread count).
        """
        return self._embed_groups(batch, self._embed_stacked_stream)

    def _embed_groups(self, batch, embed_stacked) -> np.ndarray:
        if isinstance(batch, np.ndarray) or _is_tensor(batch):
            return np.asarray(embed_stacked(batch), dtype=np.float32)
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, a in enumerate(batch):
            groups[tuple(a.shape)].append(i)
        out = np.empty((len(batch), self.dim), np.float32)
        for idx in groups.values():
            out[idx] = embed_stacked(np.stack([batch[i] for i in idx]))
        return out

    def _embed_stacked(self, x) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed_stacked_stream(self, x) -> np.ndarray:
        """The single-threaded variant (models with :meth:`cpu_streams` > 1 override it)."""
        return self._embed_stacked(x)

    def describe(self) -> dict:
        """JSON-able description (for a run's config.json)."""
        return {"class": type(self).__name__, "device": self.device, **self.config.to_dict()}


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "shape")


class TorchDescriptorModel(DescriptorModel):
    """A descriptor model backed by a ``torch.nn.Module`` mapping (b, 3, h, w) to (b, d).

    On CUDA, inputs are channels-last and run under autocast (fp16) when ``amp`` is True; the
    output is always float32.
    """

    def __init__(self, config: ModelConfig, module, device: str | None = None, amp: bool = True,
                 channels_last: bool = True):
        super().__init__(config, device)
        self.module = module.eval()
        self.amp = amp
        self.channels_last = channels_last
        self.to(self.device)

    def to(self, device: str | None) -> "TorchDescriptorModel":
        super().to(device)
        self.module.to(self.device)
        if self.device.startswith("cuda") and self.channels_last:
            import torch

            self.module.to(memory_format=torch.channels_last)
        return self

    def forward_tensor(self, x):
        """Run the module on a tensor already on the device; returns a float32 tensor (b, d)."""
        import torch

        cuda = self.device.startswith("cuda")
        if cuda and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda and self.amp):
            y = self.module(x)
        return y.float()

    def _embed_stacked(self, x) -> np.ndarray:
        import torch

        t = x if _is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
        t = t.to(self.device, non_blocking=True)
        return self.forward_tensor(t).cpu().numpy()
