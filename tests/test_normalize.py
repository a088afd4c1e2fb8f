"""Property tests of the normalizers (hypothesis) and the study's post-process."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from camkit.errors import InputError
from camkit.normalize import (
    NORMALIZERS,
    check_finite,
    get_normalizer,
    minmax,
    postprocess,
    relu_max,
    sigmoid,
    tanh_max,
)

settings.register_profile("camkit", deadline=None, max_examples=150)
settings.load_profile("camkit")

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32)
maps = arrays(np.float32, array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=6), elements=FINITE).map(torch.from_numpy)
names = st.sampled_from(sorted(NORMALIZERS))
TANH2 = math.tanh(2.0)


@st.composite
def adversarial(draw):
    """Constant, all-negative, huge, tiny and single-pixel maps."""
    shape = draw(st.sampled_from([(1, 1), (3, 1, 1), (2, 5, 7), (4, 4)]))
    kind = draw(st.sampled_from(["constant", "negative", "huge", "tiny", "pixel"]))
    base = torch.from_numpy(draw(arrays(np.float32, shape, elements=st.floats(-1, 1, width=32))))
    if kind == "constant":
        return torch.full(shape, draw(FINITE))
    if kind == "negative":
        return -base.abs() - draw(st.floats(0, 1e30))
    if kind == "huge":
        return base * 3e38
    if kind == "tiny":
        return base * 1e-44
    m = torch.zeros(shape)
    m[..., 0, 0] = draw(FINITE)
    return m


@given(m=maps | adversarial(), name=names)
def test_range_shape_finite(m, name):
    out = NORMALIZERS[name](m)
    assert out.shape == m.shape and out.dtype == m.dtype
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    if name == "tanh_max":
        assert out.max() <= TANH2 + 1e-6


@given(m=maps, name=names)
def test_each_map_normalized_on_its_own(m, name):
    """Normalizing a batch equals normalizing each map alone."""
    f = NORMALIZERS[name]
    out = f(m)
    flat_in, flat_out = m.reshape(-1, *m.shape[-2:]), out.reshape(-1, *m.shape[-2:])
    for i in range(flat_in.shape[0]):
        torch.testing.assert_close(f(flat_in[i]), flat_out[i])


@given(m=adversarial(), name=st.sampled_from(["minmax", "relu_max", "tanh_max"]))
def test_nothing_to_show_gives_zeros(m, name):
    flat = m.reshape(-1, *m.shape[-2:])
    out = NORMALIZERS[name](m).reshape(flat.shape)
    for i in range(flat.shape[0]):
        empty = bool(flat[i].max() == flat[i].min()) if name == "minmax" else bool(flat[i].max() <= 0)
        if empty:
            assert (out[i] == 0).all()


@given(
    m=arrays(np.float64, (3, 4, 5), elements=st.floats(-1e3, 1e3)).map(torch.from_numpy),
    a=st.floats(1e-3, 1e3),
    b=st.floats(-1e3, 1e3),
)
def test_minmax_invariant_under_positive_affine(m, a, b):
    # only where float64 can represent the transformed spread (1 + 1e-80 == 1)
    for one in m:
        spread = float(one.max() - one.min())
        assume(spread == 0 or spread * a > 1e-6 * (abs(b) + a * float(one.abs().max())))
    torch.testing.assert_close(minmax(a * m + b), minmax(m), atol=1e-6, rtol=1e-6)


@given(m=arrays(np.float64, (2, 4, 4), elements=st.floats(-1e3, 1e3, allow_subnormal=False)).map(torch.from_numpy),
       a=st.floats(1e-3, 1e3))
def test_relu_and_tanh_invariant_under_positive_scaling(m, a):
    """(Subnormal values are left out: a * m can underflow to 0 there, which no normalizer can undo.)"""
    torch.testing.assert_close(relu_max(a * m), relu_max(m), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(tanh_max(a * m), tanh_max(m), atol=1e-9, rtol=1e-9)


@given(m=arrays(np.float64, (5, 5), elements=st.floats(-1e3, 1e3)).map(torch.from_numpy), name=names)
def test_monotone_within_a_map(m, name):
    """A larger value never gets a smaller normalized value."""
    out = NORMALIZERS[name](m).flatten()
    order = torch.argsort(m.flatten(), stable=True)
    assert (out[order].diff() >= -1e-12).all()


@given(m=arrays(np.float64, (4, 4), elements=st.floats(-50, 50)).map(torch.from_numpy))
def test_reference_values(m):
    lo, hi = m.min(), m.max()
    if hi > lo:
        torch.testing.assert_close(minmax(m), (m - lo) / (hi - lo))
        assert minmax(m).min() == 0 and minmax(m).max() == 1
    torch.testing.assert_close(sigmoid(m), 1 / (1 + torch.exp(-m)))
    r = m.clamp(min=0)
    if r.max() > 0:
        torch.testing.assert_close(relu_max(m), r / r.max())
        torch.testing.assert_close(tanh_max(m), torch.tanh(2 * r / r.max()))


def test_postprocess_matches_the_study():
    m = torch.tensor([[0.0, 0.29, 0.3], [0.5, 0.66, 1.0]])
    expected = torch.tensor([[0.0, 0.0, 0.45], [0.75, 0.99, 1.0]])
    torch.testing.assert_close(postprocess(m), expected)


def test_lookup_and_errors():
    assert get_normalizer("relu") is relu_max and get_normalizer("tanh") is tanh_max
    assert get_normalizer(minmax) is minmax
    with pytest.raises(ValueError, match="unknown normalizer 'softmax'"):
        get_normalizer("softmax")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., h, w\), got shape \(5,\)"):
        minmax(torch.zeros(5))
    with pytest.raises(TypeError, match="floating-point"):
        minmax(torch.zeros(2, 2, dtype=torch.long))


# --------------------------------------------------------------------------- non-finite and empty maps (issue 10)

WITH_POSTPROCESS = {**NORMALIZERS, "postprocess": postprocess}
NON_FINITE = st.sampled_from([float("nan"), float("inf"), -float("inf")])


@st.composite
def poisoned(draw):
    """Finite maps (B, h, w) with NaN / +Inf / -Inf written at a few drawn positions."""
    m = draw(arrays(np.float32, array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=5), elements=FINITE))
    m = torch.from_numpy(m)
    pos = draw(st.lists(st.integers(0, m.numel() - 1), max_size=4, unique=True))
    for p in pos:
        m.view(-1)[p] = draw(NON_FINITE)
    return m


@given(m=poisoned(), name=st.sampled_from(sorted(WITH_POSTPROCESS)))
def test_a_map_with_a_non_finite_value_comes_out_all_nan(m, name):
    """The one policy: a poisoned map is NaN as a whole; every other map as if alone, finite."""
    f = WITH_POSTPROCESS[name]
    out = f(m)
    for i in range(m.shape[0]):
        if torch.isfinite(m[i]).all():
            assert torch.isfinite(out[i]).all()
            torch.testing.assert_close(out[i], f(m[i]))
        else:
            assert torch.isnan(out[i]).all()


@given(m=poisoned())
def test_check_finite_names_the_bad_maps(m):
    bad = [i for i in range(m.shape[0]) if not torch.isfinite(m[i]).all()]
    if not bad:
        assert check_finite(m) is m
        return
    with pytest.raises(InputError) as e:
        check_finite(m, "layer maps")
    shown = ", ".join(map(str, bad))
    assert str(e.value) == f"layer maps hold NaN or infinite values: map index {shown} (of leading shape ({m.shape[0]},))"


def test_check_finite_with_several_leading_dims():
    m = torch.zeros(2, 3, 4, 4)
    m[1, 2, 0, 3] = float("inf")
    m[0, 1, 1, 1] = float("nan")
    with pytest.raises(InputError, match=r"map index \(0, 1\), \(1, 2\) \(of leading shape \(2, 3\)\)"):
        check_finite(m)
    with pytest.raises(InputError, match="the map holds NaN"):
        check_finite(m[1, 2])


@given(shape=st.sampled_from([(0, 3), (3, 0), (2, 0, 0), (1, 4, 0)]),
       name=st.sampled_from(sorted(WITH_POSTPROCESS) + ["check_finite"]))
def test_empty_maps_are_refused(shape, name):
    f = check_finite if name == "check_finite" else WITH_POSTPROCESS[name]
    with pytest.raises(InputError, match=r"h and w must be >= 1"):
        f(torch.zeros(shape))
