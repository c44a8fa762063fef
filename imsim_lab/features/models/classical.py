"""Classical baselines of the DISC21 paper: GIST (colour, 960-d) and PDQ (256-bit hash).

GIST (Oliva & Torralba, IJCV 2001; the 960-d colour variant of Douze et al., CIVR 2009, used by
the DISC21 paper): the image is resized to 128 x 128; each colour channel is prefiltered
(log, whitening and local contrast normalisation, cut-off fc = 4), filtered in the frequency
domain by a Gabor bank of 3 scales with 8, 8 and 4 orientations (20 filters), and the magnitude
of each response is averaged on a 4 x 4 grid: 3 channels x 20 filters x 16 cells = 960. (The
"8 orientations x 4 scales" bank sometimes quoted gives 1,536-d with 3 channels; the 960-d
descriptor of the paper is the (8, 8, 4) bank, selectable with ``orientations``.) PCA to 256 is a
post-processing step fitted on the training images (:func:`imsim_lab.methods.postprocess.fit_pca`).

PDQ (Meta's perceptual hash, via the ``pdqhash`` package): 256 bits stored as +-1 float32
vectors, so that hamming(a, b) = (256 - a.b) / 2 = ||a - b||^2 / 4: an inner-product or L2 search
ranks exactly by Hamming distance.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ...errors import MissingDependencyError
from .base import DescriptorModel
from .config import ModelConfig

GIST_ORIENTATIONS = (8, 8, 4)


def gabor_bank(n: int, orientations=GIST_ORIENTATIONS) -> np.ndarray:
    """Transfer functions of the GIST Gabor filters (Torralba's ``createGabor``).

    Returns:
        G: (n_filters, n, n) float64, frequency domain, unshifted (ready to multiply an fft2).
    """
    f = np.arange(-n // 2, n // 2)
    fx, fy = np.meshgrid(f, f)
    fr = np.fft.fftshift(np.sqrt(fx ** 2 + fy ** 2))
    th = np.fft.fftshift(np.angle(fx + 1j * fy))
    out = []
    for i, no in enumerate(orientations):
        for j in range(no):
            p0, p1, p2, p3 = 0.35, 0.3 / 1.85 ** i, 16 * no ** 2 / 32 ** 2, np.pi / no * j
            tr = th + p3
            tr = tr + 2 * np.pi * (tr < -np.pi) - 2 * np.pi * (tr > np.pi)
            out.append(np.exp(-10 * p0 * (fr / n / p1 - 1) ** 2 - 2 * p2 * np.pi * tr ** 2))
    return np.stack(out)


def prefilter(x: np.ndarray, fc: float = 4.0, w: int = 5) -> np.ndarray:
    """GIST prefiltering of gray images (b, h, w) in [0, 255]: log, whitening, contrast norm."""
    s1 = fc / np.sqrt(np.log(2))
    x = np.log(x + 1.0)
    x = np.pad(x, ((0, 0), (w, w), (w, w)), mode="symmetric")
    h0, w0 = x.shape[1:]
    n = max(h0, w0)
    n += n % 2
    x = np.pad(x, ((0, 0), (0, n - h0), (0, n - w0)), mode="symmetric")
    f = np.arange(-n // 2, n // 2)
    fx, fy = np.meshgrid(f, f)
    gf = np.fft.fftshift(np.exp(-(fx ** 2 + fy ** 2) / s1 ** 2))
    out = x - np.real(np.fft.ifft2(np.fft.fft2(x) * gf))
    local = np.sqrt(np.abs(np.fft.ifft2(np.fft.fft2(out ** 2) * gf)))
    out = out / (0.2 + local)
    return out[:, w:h0 - w, w:w0 - w]


def gist(x: np.ndarray, orientations=GIST_ORIENTATIONS, blocks: int = 4, boundary: int = 32) -> np.ndarray:
    """Colour GIST of a batch.

    Args:
        x: (b, h, w, c) float in [0, 1] (the preprocessing of :func:`gist_config`).
        orientations: orientations per scale; (8, 8, 4) gives the 960-d descriptor with 3 channels.
        blocks: the grid is blocks x blocks.

    Returns:
        (b, c * sum(orientations) * blocks**2) float32, ordered channel, filter, then grid cell
        (column-major inside the grid, as the reference code).
    """
    x = np.asarray(x, np.float64) * 255.0
    b, h, w, c = x.shape
    planes = prefilter(x.transpose(0, 3, 1, 2).reshape(b * c, h, w))
    planes = np.pad(planes, ((0, 0), (boundary, boundary), (boundary, boundary)), mode="symmetric")
    n = planes.shape[-1]
    if planes.shape[-2] != n:
        raise ValueError(f"GIST needs square images, got {h}x{w}")
    G = gabor_bank(n, orientations).astype(np.complex64)
    F = sfft.fft2(planes.astype(np.complex64), workers=-1)
    ys = np.linspace(0, h, blocks + 1).astype(int)
    xs = np.linspace(0, w, blocks + 1).astype(int)
    feats = np.empty((b * c, len(G), blocks, blocks))
    for k, g in enumerate(G):
        r = np.abs(sfft.ifft2(F * g, workers=-1))[:, boundary:boundary + h, boundary:boundary + w]
        if h % blocks == 0 and w % blocks == 0:  # equal cells: one reshape
            cells = r.reshape(b * c, blocks, h // blocks, blocks, w // blocks).mean(axis=(2, 4))
            feats[:, k] = cells.transpose(0, 2, 1)  # column-major cell order
            continue
        for by in range(blocks):
            for bx in range(blocks):
                feats[:, k, bx, by] = r[:, ys[by]:ys[by + 1], xs[bx]:xs[bx + 1]].mean(axis=(1, 2))
    return feats.reshape(b, c * len(G) * blocks * blocks).astype(np.float32)


def gist_config(name: str = "gist", size: int = 128, orientations=GIST_ORIENTATIONS, **kw) -> ModelConfig:
    dim = 3 * sum(orientations) * 16
    fields = dict(name=name, dim=dim, input_size=(size, size), resize="square", layout="hwc_float",
                  interpolation="bilinear", weights="random", metric="l2",
                  paper="Oliva & Torralba, IJCV 2001; Douze et al., CIVR 2009 (960-d colour GIST)",
                  extra={"orientations": list(orientations), "blocks": 4})
    fields.update(kw)
    return ModelConfig(**fields)


class GistModel(DescriptorModel):
    """GIST in numpy (no weights). ``embed``: (b, s, s, 3) float -> (b, 960)."""

    def _embed_stacked(self, x) -> np.ndarray:
        e = self.config.extra
        return gist(np.asarray(x), tuple(e["orientations"]), int(e["blocks"]))


def pdq_config(name: str = "pdq", **kw) -> ModelConfig:
    fields = dict(name=name, dim=256, resize="long_side", long_side=512, layout="nhwc_uint8",
                  interpolation="bilinear", weights="random", metric="hamming",
                  paper="Meta ThreatExchange PDQ (2019); pdqhash package")
    fields.update(kw)
    return ModelConfig(**fields)


def hamming_from_ip(ip: np.ndarray, nbits: int = 256) -> np.ndarray:
    """Hamming distance from the inner product of +-1 vectors: (nbits - ip) / 2."""
    return (nbits - np.asarray(ip)) / 2.0


class PdqModel(DescriptorModel):
    """PDQ hashes as +-1 float32 vectors (b, 256). Images keep their own sizes (grouped)."""

    def __init__(self, config: ModelConfig, device: str | None = None):
        super().__init__(config, device)
        try:
            import pdqhash
        except ImportError:  # pragma: no cover - core dependency
            raise MissingDependencyError("pdqhash", "the PDQ baseline") from None
        self._pdq = pdqhash

    def embed(self, batch) -> np.ndarray:
        # pdqhash works one image at a time: no need to group by shape
        out = np.empty((len(batch), 256), np.float32)
        for i, a in enumerate(batch):
            bits, _quality = self._pdq.compute(np.ascontiguousarray(a, dtype=np.uint8))
            out[i] = 2.0 * np.asarray(bits, np.float32) - 1.0
        return out

    def __getstate__(self):
        return {"config": self.config, "device": self.device}

    def __setstate__(self, state):
        self.__init__(state["config"], state["device"])
