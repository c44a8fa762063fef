"""Weights: download to a cache with a sha256 check, and safe loading into a module.

* :func:`fetch_weights` accepts ``http(s)://``, ``file://`` URLs and local paths; a download goes
  to a temporary file in the cache folder and is renamed only after its checksum matched, so an
  interrupted download never leaves a file that looks finished.
* :func:`load_state_dict` reads with ``torch.load(weights_only=True)`` (no pickle code runs),
  unwraps the usual containers (``state_dict``, ``model``) and prefixes (``module.``), and refuses
  missing keys or shape mismatches with the reason.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from pathlib import Path

from ...atomic import atomic_path
from ...errors import ImsimError


class WeightsError(ImsimError):
    """Weights cannot be used: wrong checksum, wrong shapes, unreadable file."""


def default_cache_dir() -> Path:
    """``$IMSIM_LAB_CACHE`` or ``~/.cache/imsim-lab/weights``."""
    root = os.environ.get("IMSIM_LAB_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "imsim-lab" / "weights"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def check_sha256(path: str | Path, sha256: str | None) -> None:
    """Raise :class:`WeightsError` if ``path`` does not have the checksum ``sha256`` (None: no check)."""
    if sha256 is None:
        return
    got = sha256_file(path)
    if got.lower() != sha256.lower():
        raise WeightsError(f"{path}: wrong sha256 {got}, expected {sha256}; the file is corrupt or "
                           f"not the published weights")


def fetch_weights(url: str, sha256: str | None = None, cache_dir: str | Path | None = None,
                  filename: str | None = None, timeout: float = 60.0, progress=None) -> Path:
    """Return a local file holding the weights at ``url``, downloading into the cache if needed.

    Args:
        url: ``http(s)://``, ``file://`` or a local path (used in place, checksum still checked).
        sha256: expected checksum (hex); None skips the check (say so to your users).
        cache_dir: default :func:`default_cache_dir`.
        filename: cache file name (default: the URL's last path component).
        progress: optional callable(bytes_read) for a progress bar (CLI only).

    Raises:
        WeightsError: unreachable URL or wrong checksum (the bad file is removed).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file") and not url.startswith(("http://", "https://")):
        path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else url)
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found")
        check_sha256(path, sha256)
        return path
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / (filename or Path(parsed.path).name or "weights.bin")
    if dest.is_file():
        try:
            check_sha256(dest, sha256)
            return dest
        except WeightsError:
            dest.unlink()  # a stale or corrupt cache entry: download again
    try:
        with atomic_path(dest, suffix=".part") as tmp:  # the file appears only once checked
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    if progress:
                        progress(len(chunk))
            check_sha256(tmp, sha256)
    except WeightsError:
        raise WeightsError(f"{url}: downloaded file has the wrong sha256 (expected {sha256}); refused") from None
    except OSError as e:
        raise WeightsError(f"{url}: cannot download weights ({e})") from None
    return dest


def resolve_weights(cfg, cache_dir=None) -> Path | None:
    """The local weights file of a :class:`~imsim_lab.features.models.config.ModelConfig`, or None."""
    if cfg.weights_path:
        p = Path(cfg.weights_path)
        if not p.is_file():
            raise WeightsError(f"{p}: weights file not found")
        check_sha256(p, cfg.weights_sha256)
        return p
    if cfg.weights == "url":
        if not cfg.weights_url:
            raise WeightsError(f"model {cfg.name!r}: weights='url' but no weights_url")
        return fetch_weights(cfg.weights_url, cfg.weights_sha256, cache_dir)
    return None


def _unwrap(obj):
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj


def state_dict_mismatch(sd: dict, own: dict) -> tuple[list[tuple[str, tuple, tuple]], list[str], list[str]]:
    """How the state dict ``sd`` (from a file) fails to fit a model's own ``state_dict()``.

    Returns:
        ([(key, shape in sd, shape in the model)] for common keys of other shapes, keys the model
        has and ``sd`` lacks, keys of ``sd`` the model does not have); all empty when it fits.
    """
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    return shapes, [k for k in own if k not in sd], [k for k in sd if k not in own]


def load_state_dict(module, path: str | Path, strict: bool = True, prefix_map: dict | None = None) -> None:
    """Load a checkpoint into ``module`` safely.

    Args:
        module: a ``torch.nn.Module``.
        path: a ``.pth``/``.pt`` file (loaded with ``weights_only=True``) or ``.safetensors``.
        strict: refuse missing or unexpected keys.
        prefix_map: rename key prefixes, e.g. ``{"module.": ""}`` (applied after the defaults).

    Raises:
        WeightsError: unreadable file, or keys / shapes that do not fit, with the first few named.
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot be used
        raise WeightsError(f"{path}: not a loadable weights file ({type(e).__name__}: {e})") from None
    sd = _unwrap(sd)
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(sd).__name__}")
    rename = {"module.": ""}
    rename.update(prefix_map or {})
    fixed = {}
    for k, v in sd.items():
        for old, new in rename.items():
            if k.startswith(old):
                k = new + k[len(old):]
        fixed[k] = v
    shapes, missing, unexpected = state_dict_mismatch(fixed, module.state_dict())
    if shapes:
        bad = [f"{k}: file {a} vs model {b}" for k, a, b in shapes]
        raise WeightsError(f"{path}: shape mismatch for {len(bad)} tensors, e.g. {'; '.join(bad[:3])}")
    if strict and (missing or unexpected):
        raise WeightsError(f"{path}: does not fit the model: {len(missing)} missing keys "
                           f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
    module.load_state_dict(fixed, strict=strict)

