"""camkit.pseudomasks: the threshold rule, the confusion matrix and its scores, the one-pass sweep.

References: a per-pixel loop for the rule, ReCAM's ``eval_cam`` labelling
(pad the maps with the threshold as a background map, argmax, ``keys + 1``),
hand-counted confusion matrices, and the per-threshold direct computation
for the sweep.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camkit.errors import InputError
from camkit.pseudomasks import (
    best_threshold,
    class_labels,
    confusion,
    masks_from_maps,
    parse_sweep,
    scores,
    sweep_confusion,
    voc_palette,
)


def _maps(seed, K, H, W, levels=None):
    rng = np.random.default_rng(seed)
    m = rng.random((K, H, W))
    if levels:  # few distinct values: ties and values equal to the threshold happen
        m = np.round(m * levels) / levels
    return m.astype(np.float16)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(0, 4), H=st.integers(1, 6), W=st.integers(1, 6),
       t=st.sampled_from([0.0, 0.15, 0.25, 0.5, 1.0]), levels=st.sampled_from([None, 4]))
def test_mask_rule_per_pixel(seed, K, H, W, t, levels):
    maps = _maps(seed, K, H, W, levels)
    keys = np.random.default_rng(seed).choice(300, size=K, replace=False)
    got = masks_from_maps(maps, t, keys)
    assert got.dtype == np.int64 and got.shape == (H, W)
    for i in range(H):
        for j in range(W):
            vals = [float(maps[k, i, j]) for k in range(K)]
            if not vals or all(v < t for v in vals):
                want = 0
            else:
                want = 1 + keys[vals.index(max(vals))]  # 1 + the class id; the first class on ties
            assert got[i, j] == want


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(1, 4), t=st.sampled_from([0.05, 0.15, 0.5, 0.9]))
def test_class_labels_match_recam_eval_cam(seed, K, t):
    """ReCAM's eval_cam: pad with a background map equal to the threshold, argmax, keys + 1
    (continuous values: no pixel sits exactly on the threshold or on a tie)."""
    rng = np.random.default_rng(seed)
    maps = rng.random((K, 7, 9))
    keys = rng.choice(20, size=K, replace=False)
    padded = np.pad(maps, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=t)
    recam = np.pad(keys + 1, (1, 0), mode="constant")[np.argmax(padded, axis=0)]
    np.testing.assert_array_equal(masks_from_maps(maps, t, keys), recam)
    positions = np.pad(np.arange(1, K + 1), (1, 0))[np.argmax(padded, axis=0)]  # 0 / 1 + position in keys
    np.testing.assert_array_equal(class_labels(positions, keys), recam)


def test_confusion_and_scores_hand_counted():
    gt = np.array([[0, 0, 1, 1],
                   [0, 2, 2, 255],
                   [1, 1, 2, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 1],
                     [1, 0, 2, 2]])
    conf = confusion(pred, gt, 3)
    # rows gt, columns pred; the two 255 pixels are left out
    np.testing.assert_array_equal(conf, [[2, 1, 0],
                                         [1, 3, 0],
                                         [1, 0, 2]])
    s = scores(conf)
    np.testing.assert_allclose(s["iou"], [2 / (3 + 4 - 2), 3 / (4 + 4 - 3), 2 / (3 + 2 - 2)])
    np.testing.assert_allclose(s["precision"], [2 / 4, 3 / 4, 2 / 2])
    np.testing.assert_allclose(s["recall"], [2 / 3, 3 / 4, 2 / 3])
    assert float(s["miou"]) == pytest.approx(np.mean([2 / 5, 3 / 5, 2 / 3]))


def test_scores_skip_absent_classes():
    conf = np.array([[5, 0, 0], [0, 0, 0], [1, 0, 2]])  # class 1 neither in the truth nor predicted
    s = scores(conf)
    assert np.isnan(s["iou"][1]) and np.isnan(s["precision"][1]) and np.isnan(s["recall"][1])
    assert float(s["miou"]) == pytest.approx((5 / 6 + 2 / 3) / 2)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(0, 3), levels=st.sampled_from([None, 5]))
def test_sweep_equals_direct_per_threshold(seed, K, levels):
    rng = np.random.default_rng(seed)
    maps = _maps(seed, K, 6, 5, levels)
    keys = rng.choice(4, size=K, replace=False)
    gt = rng.integers(0, 5, size=(6, 5))
    gt[rng.random((6, 5)) < 0.2] = 255
    ts = parse_sweep("0:1:0.2")
    got = sweep_confusion(maps, keys, gt, ts, num_classes=5)
    for i, t in enumerate(ts):
        direct = confusion(masks_from_maps(maps, t, keys), gt, 5)
        np.testing.assert_array_equal(got[i], direct, err_msg=f"threshold {t}")


def test_best_threshold_and_sweep_parsing():
    assert parse_sweep("0.05:0.95:0.05") == pytest.approx([0.05 * k for k in range(1, 20)])
    assert parse_sweep("0.1:0.1:0.5") == [0.1]
    assert best_threshold([0.1, 0.2, 0.3], [0.4, 0.6, 0.6]) == (0.2, 0.6)
    with pytest.raises(InputError, match="START:STOP:STEP"):
        parse_sweep("0.1-0.9")
    with pytest.raises(InputError, match="STEP > 0"):
        parse_sweep("0.5:0.1:0.1")
    for bad, msg in (("nan:1:0.1", "finite"), ("0:inf:0.1", "finite"), ("0:1:nan", "finite"),
                     ("-1:0.5:0.1", r"\[0, 1\]"), ("0.1:0.2:1e-7", "at most 1000")):
        with pytest.raises(InputError, match=msg):
            parse_sweep(bad)


def test_shape_errors_name_the_problem():
    with pytest.raises(InputError, match=r"\(K, H, W\)"):
        masks_from_maps(np.zeros((4, 4)), 0.5, [])
    with pytest.raises(InputError, match="one class >= 0 per map"):
        masks_from_maps(np.zeros((2, 4, 4)), 0.5, [1])
    with pytest.raises(InputError, match="ground truth of shape"):
        confusion(np.zeros((3, 3)), np.zeros((3, 4)), 2)
    with pytest.raises(InputError, match="outside 0..1"):
        confusion(np.full((2, 2), 3), np.zeros((2, 2)), 2)
    with pytest.raises(InputError, match="increasing"):
        sweep_confusion(np.zeros((1, 2, 2)), [0], np.zeros((2, 2)), [0.5, 0.2], 2)


def test_voc_palette():
    pal = voc_palette()
    assert len(pal) == 768
    rgb = lambda i: tuple(pal[3 * i:3 * i + 3])  # noqa: E731
    assert rgb(0) == (0, 0, 0) and rgb(1) == (128, 0, 0) and rgb(2) == (0, 128, 0)
    assert rgb(15) == (192, 128, 128) and rgb(255) == (224, 224, 192)
