"""The overlay detector: composites with traced boxes, a short training, the box filter, metrics
against brute force, checkpoints and their refusal."""

import numpy as np
import pytest
from PIL import Image

from imsim_lab.errors import ImsimError
from imsim_lab.features.detector import (DetectorConfig, OverlayNet, box_iou, box_metrics, crop, detect,
                                         keep_boxes, make_composites, train_detector)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    rng = np.random.default_rng(0)
    out = []
    for i in range(6):
        a = (rng.random((3, 4, 3)) * 255).astype(np.uint8)
        im = Image.fromarray(a).resize((160, 120), Image.Resampling.BICUBIC)
        out.append(d / f"T{i}.png")
        im.save(out[-1])
    return out


def test_composites_have_traced_boxes(paths):
    s = make_composites(paths, 30, seed=1)
    assert len(s) >= 25
    boxes = [b for _, b in s if b is not None]
    assert boxes and all(0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1 for b in boxes)
    assert all((b[2] - b[0]) * (b[3] - b[1]) <= 0.85 for b in boxes)
    assert any(b is None for _, b in s)
    with pytest.raises(ImsimError, match="at least 2"):
        make_composites(paths[:1], 3)


def test_training_lowers_the_loss_and_checkpoints(paths, tmp_path):
    s = make_composites(paths, 48, seed=2)
    cfg = DetectorConfig(input_size=64, width=8, batch_size=16)
    det, hist = train_detector(s, cfg, epochs=6, device="cpu")
    assert len(hist) == 6 and hist[-1] < hist[0]
    b, c = detect(det, [im for im, _ in s[:5]])
    assert b.shape == (5, 4) and c.shape == (5,) and ((c >= 0) & (c <= 1)).all()
    det.save(tmp_path / "d.pt")
    again = OverlayNet.load(tmp_path / "d.pt")
    np.testing.assert_allclose(detect(again, [im for im, _ in s[:5]])[0], b, atol=1e-6)
    OverlayNet(DetectorConfig(input_size=64, width=12)).save(tmp_path / "other.pt")
    import torch

    ck = torch.load(tmp_path / "other.pt", weights_only=True)
    ck["config"]["width"] = 8  # the weights of width 12 under a config of width 8
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(ImsimError, match="bad.pt: not an overlay detector checkpoint of this shape"):
        OverlayNet.load(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ImsimError, match="junk.pt"):
        OverlayNet.load(tmp_path / "junk.pt")


def test_filter_metrics_and_crop():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0, 0, 1, 1], [0.1, 0.1, 0.9, 0.15], [0.2, 0.2, 0.6, 0.6]])
    conf = np.array([0.9, 0.9, 0.9, 0.4])
    assert keep_boxes(boxes, conf, 0.5).tolist() == [True, False, False, False]  # area, aspect, confidence
    true = np.array([[0.1, 0.1, 0.5, 0.6], [np.nan] * 4, [0.1, 0.1, 0.9, 0.15], [0.2, 0.2, 0.6, 0.6]])
    np.testing.assert_allclose(box_iou(boxes[:1], true[:1]), [0.16 / 0.2])
    m = box_metrics(boxes, [True, True, False, True], true)
    assert (m["hits"], m["true_boxes"], m["kept"]) == (2, 3, 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["precision"] == pytest.approx(2 / 3)
    im = Image.new("RGB", (200, 100))
    assert crop(im, (0.25, 0.5, 0.75, 1.0)).size == (100, 50)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available() and __import__("os").environ.get("IMSIM_REQUIRE_GPU")
                    != "1", reason="needs CUDA")
def test_training_on_cuda_with_amp(paths):
    s = make_composites(paths, 32, seed=3)
    det, hist = train_detector(s, DetectorConfig(input_size=64, width=8, batch_size=16), epochs=4, device="cuda",
                               amp=True)
    assert np.isfinite(hist).all() and hist[-1] < hist[0]
    b, c = detect(det, [im for im, _ in s[:4]])  # the trained net comes back on the CPU
    assert b.shape == (4, 4)


def test_grid_head_targets_and_config():
    import torch

    from imsim_lab.features.detector import _grid_targets

    boxes = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.3, 0.3, 0.9, 0.9], [0.1, 0.1, 0.9, 0.9]])
    t = _grid_targets(boxes, torch.tensor([1.0, 1.0, 0.0]), 8)
    assert t[0, 0, 0] and t[0].sum() >= 1 and not t[2].any()  # a negative image has no positive cell
    ys, xs = np.nonzero(t[1].numpy())
    assert all(0.3 <= (x + 0.5) / 8 <= 0.9 and 0.3 <= (y + 0.5) / 8 <= 0.9 for x, y in zip(xs, ys))
    assert t[1, 4, 4] and t[1].sum() > 1  # the centre (0.6, 0.6) and its neighbours
    with pytest.raises(ValueError, match="head must be one of"):
        DetectorConfig(head="yolo")


def test_a_checkpoint_of_the_other_head_is_refused(tmp_path):
    import torch

    OverlayNet(DetectorConfig(input_size=64, width=8)).save(tmp_path / "grid.pt")
    ck = torch.load(tmp_path / "grid.pt", weights_only=True)
    ck["config"]["head"] = "global"
    torch.save(ck, tmp_path / "as_global.pt")
    with pytest.raises(ImsimError, match="as_global.pt: not an overlay detector checkpoint of this shape"):
        OverlayNet.load(tmp_path / "as_global.pt")


def test_grid_head_learns_where_a_rectangle_is():
    """Bright rectangles on noise: after a short training the grid head finds held-out boxes at IoU 0.5."""
    rng = np.random.default_rng(0)

    def sample():
        a = (rng.random((64, 64, 3)) * 120).astype(np.uint8)
        w, h = rng.integers(16, 44, 2)
        x, y = rng.integers(0, 64 - w), rng.integers(0, 64 - h)
        a[y:y + h, x:x + w] = 230
        return Image.fromarray(a), (x / 64, y / 64, (x + w) / 64, (y + h) / 64)

    train = [sample() for _ in range(256)]
    test = [sample() for _ in range(40)]
    det, hist = train_detector(train, DetectorConfig(input_size=48, width=8, batch_size=32, lr=4e-3), epochs=10,
                               device="cpu")
    b, c = detect(det, [im for im, _ in test])
    iou = box_iou(b, np.array([t for _, t in test]))
    assert (iou >= 0.5).mean() >= 0.7, (np.round(iou, 2), hist)
