"""lnorm._lnorm.copy_rows, the copy that the benchmarks set lnorm's calls against: every kind copies
the exact bytes of any dtype, over sizes around the vector widths, row-strided views and threads;
each bad argument raises TypeError or ValueError naming it, and nothing is written then."""

import numpy as np
import pytest

import lnorm
from lnorm import _lnorm

KINDS = ("plain", "streaming", "memcpy")
COLS = (1, 3, 17, 33, 4099)
DTYPES = [np.float32, np.float64, np.float16, np.int8]
try:
    import ml_dtypes

    DTYPES.append(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 is optional (lnorm[bf16])
    pass


def random_array(rng, shape, dtype):
    """Random bytes of any dtype (NaN bit patterns included: the copy must not care)."""
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(rng.bytes(count), dtype=dtype).reshape(shape).copy()


def assert_same_bytes(dst, src):
    assert dst.shape == src.shape and dst.dtype == src.dtype
    assert dst.tobytes() == src.tobytes()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cols", COLS)
def test_copies_exact_bytes(kind, dtype, cols):
    rng = np.random.default_rng(cols)
    for rows in (1, 5):
        src = random_array(rng, (rows, cols), dtype)
        dst = random_array(rng, (rows, cols), dtype)
        _lnorm.copy_rows(src, dst, kind)
        assert_same_bytes(dst, src)
    one_row = random_array(rng, (cols,), dtype)  # 1-D: one row
    dst = np.zeros_like(one_row)
    _lnorm.copy_rows(one_row, dst, kind)
    assert_same_bytes(dst, one_row)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cols", COLS)
def test_row_strided_views(kind, cols):
    """a[:, :cols] of a wider array on either side, misaligned starts, reversed rows, 3-D rows."""
    rng = np.random.default_rng(100 + cols)
    wide = random_array(rng, (7, cols + 21), np.float32)
    for src in (wide[:, :cols], wide[:, 5:cols + 5], wide[::-1, 1:cols + 1], wide[::2, 3:cols + 3]):
        target = np.full((src.shape[0] * 3, cols + 9), 7.0, np.float32)
        dst = target[::3, 9:]
        _lnorm.copy_rows(src, dst, kind)
        assert_same_bytes(dst, src)
        outside = np.ones(target.shape, bool)
        outside[::3, 9:] = False
        assert np.all(target[outside] == 7.0), "copy_rows wrote outside dst"
    cube = random_array(rng, (3, 4, cols + 2), np.float16)[:, :, 1:cols + 1]
    dst = np.empty((3, 4, cols), np.float16)
    _lnorm.copy_rows(cube, dst, kind)
    assert_same_bytes(dst, cube)


@pytest.mark.parametrize("kind", KINDS)
def test_threads_and_large_rows(kind, restore_threads):
    rng = np.random.default_rng(7)
    src = random_array(rng, (257, 4099), np.float32)  # enough work for several workers
    for threads in (1, 2, 3):
        lnorm.set_num_threads(threads)
        dst = np.zeros_like(src)
        _lnorm.copy_rows(src, dst, kind)
        assert_same_bytes(dst, src)


def test_empty_arrays_copy_nothing():
    for shape in ((0, 5), (4, 0), (0,)):
        _lnorm.copy_rows(np.empty(shape, np.float32), np.empty(shape, np.float32), "plain")


# ----------------------------------------------------------------------------------------------
# argument errors


def _x():
    return np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)


def _read_only(a):
    a.flags.writeable = False
    return a


def _rows_on_one_row():
    return np.lib.stride_tricks.as_strided(np.zeros(8, np.float32), (4, 8), (0, 4), writeable=True)


WIDE = np.zeros((4, 12), np.float32)

BAD = [
    # (src, dst, kind, exception, message start)
    (None, np.zeros((4, 8), np.float32), "plain", TypeError, "src:"),
    ("x", np.zeros((4, 8), np.float32), "plain", TypeError, "src:"),
    ([[1.0] * 8] * 4, np.zeros((4, 8), np.float32), "plain", TypeError, "src:"),
    (_x(), None, "plain", TypeError, "dst:"),
    (_x(), np.zeros((4, 8), np.float64), "plain", TypeError, "dst:"),
    (_x(), np.zeros((4, 8), np.float16), "plain", TypeError, "dst:"),
    (_x(), np.zeros((4, 9), np.float32), "plain", ValueError, "dst:"),
    (_x(), np.zeros((8, 4), np.float32), "plain", ValueError, "dst:"),
    (_x(), np.zeros((2, 4, 8), np.float32), "plain", ValueError, "dst:"),
    (_x()[:, ::2], np.zeros((4, 4), np.float32), "plain", ValueError, "src:"),
    (_x(), np.zeros((8, 4), np.float32).T, "plain", ValueError, "dst:"),
    (np.zeros((2, 3, 8), np.float32)[:, :2], np.zeros((2, 2, 8), np.float32), "plain", ValueError, "src:"),
    (np.zeros(()), np.zeros(()), "plain", ValueError, "src:"),
    (_x(), _read_only(np.zeros((4, 8), np.float32)), "plain", ValueError, "dst:"),
    (_x(), np.broadcast_to(np.zeros(8, np.float32), (4, 8)), "plain", ValueError, "dst:"),
    (_x(), _rows_on_one_row(), "plain", ValueError, "dst:"),
    (WIDE[:, :8], WIDE[:, 4:], "plain", ValueError, "dst:"),  # overlap
    (_x(), np.zeros((4, 8), np.float32), "fast", ValueError, "kind:"),
    (_x(), np.zeros((4, 8), np.float32), "", ValueError, "kind:"),
    (_x(), np.zeros((4, 8), np.float32), None, TypeError, "kind:"),
    (_x(), np.zeros((4, 8), np.float32), 1, TypeError, "kind:"),
]
BAD_IDS = ["src None", "src str", "src list", "dst None", "dtype f64", "dtype f16", "cols", "transposed shape",
           "ndim", "src last axis strided", "dst last axis strided", "src rows uneven", "0-d", "dst read-only",
           "dst broadcast", "dst rows overlap", "dst overlaps src", "kind unknown", "kind empty", "kind None",
           "kind int"]


@pytest.mark.parametrize("src, dst, kind, error, start", BAD, ids=BAD_IDS)
def test_bad_arguments_raise_naming_them(src, dst, kind, error, start):
    before = dst.copy() if isinstance(dst, np.ndarray) else None
    with pytest.raises(error) as info:
        _lnorm.copy_rows(src, dst, kind)
    assert str(info.value).startswith(start), str(info.value)
    if before is not None:
        assert np.array_equal(dst, before), "a refused copy wrote into dst"


def test_dst_may_not_be_src():
    x = _x()
    with pytest.raises(ValueError, match="^dst: overlaps src"):
        _lnorm.copy_rows(x, x, "plain")
    with pytest.raises(ValueError, match="^dst: overlaps src"):
        _lnorm.copy_rows(x[:, :4], x.reshape(8, 4)[2:6], "streaming")


def test_disjoint_parts_of_one_array_are_fine():
    """Interleaved or side-by-side views of one buffer share no byte: not an overlap."""
    base = random_array(np.random.default_rng(5), (6, 16), np.float32)
    want = base[:, :8].copy()
    _lnorm.copy_rows(base[:, :8], base[:, 8:], "plain")
    assert_same_bytes(base[:, 8:], want)
    evens = base[::2].copy()
    _lnorm.copy_rows(base[::2], base[1::2], "memcpy")
    assert_same_bytes(base[1::2], evens)
