"""Each augmentation: shapes, dtypes, value range, label consistency, and its specific effect."""

import numpy as np
import pytest

from affcons.train.augment import (
    augment,
    blur,
    elastic,
    flip_transpose,
    grayscale,
    misalignment,
    missing_section,
    noise,
    rotate,
)
from affcons.train.config import AugmentConfig


def _crop(shape=(3, 24, 24)):
    rng = np.random.default_rng(0)
    raw = rng.random(shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint32)
    labels[:, :12, :12] = 7
    labels[:, 12:, :] = 900000
    labels[:, :12, 12:] = 3
    return raw, labels


GEOMETRIC = [
    lambda r, lab, g: flip_transpose(r, lab, g),
    lambda r, lab, g: rotate(r, lab, g),
    lambda r, lab, g: elastic(r, lab, g, 16.0, 4.0),
    lambda r, lab, g: misalignment(r, lab, g, 4),
]
INTENSITY = [
    lambda r, lab, g: grayscale(r, lab, g),
    lambda r, lab, g: noise(r, lab, g, 0.1),
    lambda r, lab, g: blur(r, lab, g, 1.5),
    lambda r, lab, g: missing_section(r, lab, g, 2),
]


@pytest.mark.parametrize("function", GEOMETRIC + INTENSITY)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shapes_dtypes_ranges_and_ids(function, seed):
    raw, labels = _crop()
    before_raw, before_labels = raw.copy(), labels.copy()
    out_raw, out_labels = function(raw, labels, np.random.default_rng(seed))
    assert out_raw.shape == raw.shape and out_raw.dtype == np.float32
    assert out_labels.shape == labels.shape and out_labels.dtype == labels.dtype
    assert float(out_raw.min()) >= 0.0 and float(out_raw.max()) <= 1.0
    assert set(np.unique(out_labels)) <= {0, 3, 7, 900000}  # nearest interpolation: no new ids
    assert np.array_equal(raw, before_raw) and np.array_equal(labels, before_labels)  # inputs untouched
    # without labels the functions still work
    assert function(raw, None, np.random.default_rng(seed))[1] is None


def test_same_seed_same_result():
    raw, labels = _crop()
    for function in GEOMETRIC + INTENSITY:
        a = function(raw, labels, np.random.default_rng(5))
        b = function(raw, labels, np.random.default_rng(5))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_geometric_moves_raw_and_labels_together():
    # raw = label id as intensity: after any geometric step, raw still equals its label's intensity where it was
    # carried by nearest-neighbour-compatible sampling (flips, transposes, shifts are exact)
    labels = np.zeros((2, 16, 16), dtype=np.int64)
    labels[:, :5, :9] = 1
    labels[:, 9:, 3:] = 2
    raw = (labels / 2.0).astype(np.float32)
    for seed in range(8):
        for function in (flip_transpose, lambda r, lab, g: misalignment(r, lab, g, 3)):
            out_raw, out_labels = function(raw, labels, np.random.default_rng(seed))
            assert np.array_equal(out_raw, (out_labels / 2.0).astype(np.float32))


def test_rotate_by_90_degrees_is_exact():
    raw, labels = _crop((1, 24, 24))
    out_raw, out_labels = rotate(raw, labels, np.random.default_rng(0), angle=90.0)
    assert np.array_equal(out_labels[0], np.rot90(labels[0], k=1)) or np.array_equal(
        out_labels[0], np.rot90(labels[0], k=-1)
    )
    assert np.allclose(out_raw[0], np.rot90(raw[0], k=1), atol=1e-5) or np.allclose(
        out_raw[0], np.rot90(raw[0], k=-1), atol=1e-5
    )


def test_elastic_uses_one_field_for_all_sections():
    raw, labels = _crop((3, 24, 24))
    raw[:] = raw[0]
    labels[:] = labels[0]
    out_raw, out_labels = elastic(raw, labels, np.random.default_rng(1), 16.0, 4.0)
    assert np.array_equal(out_raw[0], out_raw[2]) and np.array_equal(out_labels[0], out_labels[1])
    assert not np.array_equal(out_labels[0], labels[0])


def test_missing_section_blanks_whole_sections_only():
    raw, labels = _crop((5, 8, 8))
    out_raw, out_labels = missing_section(raw, labels, np.random.default_rng(3), 2)
    blank = [z for z in range(5) if not out_raw[z].any()]
    assert 1 <= len(blank) <= 2
    assert all(np.array_equal(out_raw[z], raw[z]) for z in range(5) if z not in blank)
    assert np.array_equal(out_labels, labels)


def test_grayscale_keeps_order_within_a_section():
    raw = np.tile(np.linspace(0.1, 0.9, 16, dtype=np.float32), (2, 16, 1))
    out, _ = grayscale(raw, None, np.random.default_rng(2))
    assert (np.diff(out, axis=2) >= 0).all()  # contrast, brightness and gamma are monotone


def test_augment_mix_probability_zero_and_one():
    raw, labels = _crop()
    off = AugmentConfig(probability=0.0)
    assert augment(raw, labels, off, np.random.default_rng(0))[0] is raw
    on = AugmentConfig(
        probability=1.0, p_each=1.0, noise=True, blur=True, missing_section=True, misalignment=True, misalignment_max=2
    )
    out_raw, out_labels = augment(raw, labels, on, np.random.default_rng(0))
    assert out_raw.shape == raw.shape and out_labels.dtype == labels.dtype
    assert not np.array_equal(out_raw, raw)
