"""Features for the scoring head, extracted with the runtime pipeline so training and serving match.

decode -> detect (largest face) -> chips -> `embed.vectors` (ResNet embedding + chip statistics)
of the chip and of its mirror image, stored apart: `embed.mean_of` the two is exactly what
`embed` returns at runtime (train_head.py --embedding flip-avg, the default), and the two apart
let the alternatives be measured (--embedding chip, with or without mirror rows).
The cache in training/cache/ is keyed by a hash of the pipeline's source and model files.
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OMI = Path(os.environ.get("OMI_DIR", ROOT.parent / "shared" / "datasets" / "omi"))
CACHE = ROOT / "training" / "cache"


def pipeline_hash() -> str:
    from facescore_cli import images
    from facescore_cli.ml import detect, embed, features, models, mtcnn, resnet

    h = hashlib.sha256()
    for mod in (images, detect, mtcnn, embed, resnet, features, models):
        h.update(inspect.getsource(mod).encode())
    for p in (models.LANDMARKS_5_PATH, models.RESNET_PATH):
        st = os.stat(p)
        h.update(f"{Path(p).name}:{st.st_size}".encode())
    return h.hexdigest()[:16]


def _one(stimulus: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | tuple[int, None]:
    from facescore_cli.images import decode
    from facescore_cli.ml import detect, embed

    img = decode((OMI / "images" / f"{stimulus}.jpg").read_bytes())
    faces = detect.detect(img)
    if not faces:
        return (stimulus, None)
    f = faces[0]
    chip = embed.chips(img, [f])[0]
    own, mirror = embed.vectors([chip, embed.mirrored(chip)])
    if not np.array_equal(embed.embed(img, [f])[0], embed.mean_of(own, mirror)):
        raise RuntimeError("embed() no longer equals mean_of(chip, mirror) vectors: update training/features.py")
    return (
        stimulus,
        own,
        mirror,
        np.asarray(f.box, dtype=np.float32),
        np.asarray(f.landmarks, dtype=np.float32),
    )


def runtime_vectors(data: dict[str, np.ndarray]) -> np.ndarray:
    """(n, VECTOR_DIM) float32: what `embed.embed` returns for each face, from the stored chip and
    mirror vectors (`embed.mean_of`, bit for bit)."""
    from facescore_cli.ml import embed

    return embed.mean_of(data["emb"], data["emb_flip"])


def ratings() -> tuple[np.ndarray, list[str], np.ndarray]:
    with open(OMI / "ratings.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    stim = np.array([int(r[0]) for r in body])
    vals = np.array([[float(v) for v in r[1:]] for r in body], dtype=np.float64)
    return stim, header[1:], vals


def load(processes: int = 2) -> dict[str, np.ndarray]:
    """Features for every OMI face (rows with found=False had no detected face)."""
    stim, names, vals = ratings()
    path = CACHE / f"features-{pipeline_hash()}.npz"
    if path.exists():
        data = dict(np.load(path))
        if np.array_equal(data["stimulus"], stim):
            return data
    CACHE.mkdir(parents=True, exist_ok=True)
    n = len(stim)
    from facescore_cli.ml.embed import VECTOR_DIM

    emb = np.full((n, VECTOR_DIM), np.nan, np.float32)
    emb_flip = np.full((n, VECTOR_DIM), np.nan, np.float32)
    box = np.full((n, 4), np.nan, np.float32)
    marks = np.full((n, 5, 2), np.nan, np.float32)
    index = {int(s): i for i, s in enumerate(stim)}
    with Pool(processes) as pool:
        for k, res in enumerate(pool.imap_unordered(_one, [int(s) for s in stim], chunksize=4)):
            if res[1] is not None:
                i = index[res[0]]
                emb[i], emb_flip[i], box[i], marks[i] = res[1:]
            if k % 100 == 0:
                print(f"  features: {k}/{n}", file=sys.stderr, flush=True)
    found = ~np.isnan(emb[:, 0])
    data = dict(stimulus=stim, emb=emb, emb_flip=emb_flip, box=box, landmarks=marks, found=found)
    np.savez(path, **data)
    return data


if __name__ == "__main__":
    d = load()
    print(f"{int(d['found'].sum())}/{len(d['found'])} faces found")
