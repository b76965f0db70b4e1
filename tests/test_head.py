"""The bundled scoring head on real OMI faces, through the runtime pipeline."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from facescore_cli.images import decode
from facescore_cli.ml import detect, embed, features, resnet
from facescore_cli.ml.head import (
    OUTPUTS,
    TRAITS,
    VECTOR_DIM,
    VIBE_WORDS,
    Head,
    load_head,
    percentile,
)

OMI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "omi"
FORBIDDEN = (
    "asian", "middle-eastern", "hispanic", "islander", "native", "black", "white", "skin-color",
    "gay", "liberal", "godly", "privileged", "electable", "looks-like-you", "gender", "weight",
)  # fmt: skip
N_EACH = 10

pytestmark = pytest.mark.skipif(
    not (OMI / "ratings.csv").exists(), reason=f"OMI dataset not found at {OMI} (see shared/datasets/omi/README.md)"
)


def _attractive() -> list[tuple[int, float]]:
    with open(OMI / "ratings.csv", newline="") as fh:
        rows = [(int(r["stimulus"]), float(r["attractive"])) for r in csv.DictReader(fh)]
    return sorted(rows, key=lambda r: r[1])


@pytest.fixture(scope="module")
def omi_faces():
    """Embeddings and faces for the N_EACH lowest- and N_EACH highest-rated OMI faces."""
    rows = _attractive()
    picked = {"low": rows[:N_EACH], "high": rows[-N_EACH:]}
    out = {}
    for group, items in picked.items():
        embs, faces = [], []
        for stimulus, _ in items:
            img = decode((OMI / "images" / f"{stimulus}.jpg").read_bytes())
            found = detect.detect(img)
            assert found, f"no face found in OMI image {stimulus}"
            embs.append(embed.embed(img, found[:1])[0])
            faces.append(found[0])
        out[group] = (np.stack(embs), faces)
    return out


def test_prediction_shape_and_ranges(omi_faces):
    emb, faces = omi_faces["high"]
    head = load_head()
    assert head.version
    preds = head.predict(emb[:1], faces[:1])
    assert len(preds) == 1
    p = preds[0]
    assert 0.0 <= p.score <= 100.0
    assert 0.0 <= p.rank <= 100.0
    assert set(p.traits) == set(TRAITS)
    assert all(0.0 <= v <= 100.0 for v in p.traits.values())
    assert p.vibe in set(VIBE_WORDS.values())


def test_no_forbidden_attribute_anywhere(omi_faces):
    head = load_head()
    emb, faces = omi_faces["low"]
    text = json.dumps([dataclasses.asdict(p) for p in head.predict(emb, faces)]).lower()
    for name in FORBIDDEN:
        assert name not in text
        assert name not in OUTPUTS
    # Nor in the file: its outputs and the names of everything it stores.
    with np.load(Path(__file__).resolve().parents[1] / "facescore_cli/ml/weights/omi-head.npz") as data:
        stored = " ".join(data.files + [str(x) for x in data["outputs"]]).lower()
    assert not [n for n in FORBIDDEN if n in stored]


def test_refuses_a_head_with_a_forbidden_output(tmp_path):
    with np.load(Path(__file__).resolve().parents[1] / "facescore_cli/ml/weights/omi-head.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["outputs"] = np.array([*OUTPUTS, "gender"])
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="outputs"):
        load_head(path)


def test_deterministic(omi_faces):
    emb, faces = omi_faces["high"]
    head = load_head()
    twice = head.predict(np.vstack([emb[:1], emb[:1]]), [faces[0], faces[0]])
    assert twice[0] == twice[1]
    assert head.predict(emb[:1], faces[:1])[0] == twice[0]
    assert load_head() is head


def test_higher_rated_faces_score_higher(omi_faces):
    head = load_head()
    low = [p.score for p in head.predict(*omi_faces["low"])]
    high = [p.score for p in head.predict(*omi_faces["high"])]
    # The extremes of OMI's 'attractive' ratings are ~45 points apart; demand a clear gap.
    assert np.mean(high) - np.mean(low) > 15.0, (low, high)
    assert np.mean([p.rank for p in head.predict(*omi_faces["high"])]) > 75.0


def test_rank_is_monotonic_in_score(omi_faces):
    head = load_head()
    emb = np.vstack([omi_faces["low"][0], omi_faces["high"][0]])
    faces = omi_faces["low"][1] + omi_faces["high"][1]
    # Blends between faces give a spread of scores between the extremes.
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(emb), 60), rng.integers(0, len(emb), 60)
    w = rng.random(60)[:, None]
    mixed = np.vstack([emb, w * emb[i] + (1 - w) * emb[j]])
    preds = head.predict(mixed, faces + [faces[k] for k in i])
    pairs = sorted((p.score, p.rank) for p in preds)
    ranks = [r for _, r in pairs]
    assert ranks == sorted(ranks)
    assert ranks[0] < 25.0 < 75.0 < ranks[-1]


def test_percentile_counts_half_of_ties():
    ref = np.array([10.0, 20.0, 20.0, 30.0])
    assert percentile(ref, np.array([5.0, 10.0, 20.0, 25.0, 99.0])).tolist() == [0.0, 12.5, 50.0, 75.0, 100.0]


def test_bad_input_is_refused(omi_faces):
    emb, faces = omi_faces["low"]
    head = load_head()
    with pytest.raises(ValueError):
        head.predict(emb[:2], faces[:1])
    with pytest.raises(ValueError):
        head.predict(emb[:, :64], faces)
    with pytest.raises(ValueError, match="embed.embed"):  # a bare ResNet embedding is not enough
        head.predict(emb[:, :128], faces)
    assert isinstance(head, Head)


def test_refuses_a_head_for_other_vectors(tmp_path):
    with np.load(Path(__file__).resolve().parents[1] / "facescore_cli/ml/weights/omi-head.npz") as data:
        arrays = {k: data[k] for k in data.files}
    for k in ("x_mean", "x_scale"):
        arrays[k] = np.concatenate([arrays[k][:128], arrays[k][VECTOR_DIM:]])  # a 128-d-input head
    path = tmp_path / "old.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="retrain"):
        load_head(path)


def test_vector_is_the_embedding_then_the_chip_statistics():
    rows = _attractive()
    img = decode((OMI / "images" / f"{rows[len(rows) // 2][0]}.jpg").read_bytes())
    faces = detect.detect(img)[:1]
    vec = embed.embed(img, faces)
    assert vec.shape == (1, VECTOR_DIM) == (1, embed.VECTOR_DIM) and vec.dtype == np.float32
    chip = embed.chips(img, faces)[0]
    own, mirror = embed.vectors([chip, embed.mirrored(chip)])
    # the vector is the mean over the chip and its mirror image, each
    # [ResNet embedding | chip statistics | ResNet band means]
    assert np.array_equal(vec[0], embed.mean_of(own, mirror))
    stats_end = embed.RESNET_DIM + features.CHIP_STATS_DIM
    assert np.allclose(own[: embed.RESNET_DIM], embed.embed_chips([chip])[0], atol=1e-5)
    assert np.array_equal(own[embed.RESNET_DIM:stats_end], features.chip_stats(chip).astype(np.float32))
    assert own[stats_end:].shape == (embed.BANDS_DIM,) and (own[stats_end:] >= 0).all()  # means of ReLU outputs
    _, bands = resnet.descriptors_and_bands([chip])
    assert np.allclose(own[stats_end:], bands[0], atol=1e-5)
    assert not np.allclose(own, mirror, atol=1e-3)  # a face is not its own mirror image
    assert embed.embed(img, []).shape == (0, VECTOR_DIM)


def test_a_mirrored_photo_scores_about_the_same():
    """The mirror average makes the score (nearly) flip-invariant: before it, a horizontal flip
    moved the score by over 3 points for 8% of OMI faces."""
    head = load_head()
    rows = _attractive()
    moves = []
    for stimulus, _ in rows[:: len(rows) // 8][:8]:
        raw = (OMI / "images" / f"{stimulus}.jpg").read_bytes()
        buf = io.BytesIO()
        ImageOps.mirror(Image.open(io.BytesIO(raw))).save(buf, "PNG")
        scores = []
        for data in (raw, buf.getvalue()):
            img = decode(data)
            face = detect.detect(img)[:1]
            scores.append(head.predict(embed.embed(img, face), face)[0].score)
        moves.append(abs(scores[0] - scores[1]))
    assert max(moves) <= 3.0, moves  # the chip-only vector moved one of these 8 faces by 3.4


def test_refuses_a_head_for_the_unaveraged_vectors(tmp_path):
    with np.load(Path(__file__).resolve().parents[1] / "facescore_cli/ml/weights/omi-head.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "embedding"}  # as heads before flip_avg
    np.savez(tmp_path / "v2.npz", **arrays)
    with pytest.raises(ValueError, match="retrain"):
        load_head(tmp_path / "v2.npz")


def test_chip_stats_on_known_colours():
    assert np.allclose(features.lab_planes(np.full((1, 1, 3), 255, np.uint8))[:, 0, 0], [100.0, 0.0, 0.0], atol=0.01)
    red = features.lab_planes(np.array([[[255, 0, 0]]], np.uint8))[:, 0, 0]
    assert np.allclose(red, [53.24, 80.09, 67.20], atol=0.02)
    grey = np.full((150, 150, 3), 119, np.uint8)  # sRGB 119 is L* 50
    stats = features.chip_stats(grey)
    assert stats.shape == (features.CHIP_STATS_DIM,) and np.isfinite(stats).all()
    n_colour = 6 * (len(features.REGIONS) + 1)
    colour = stats[:n_colour].reshape(-1, 2, 3)
    assert np.allclose(colour[:, 0], [50.0, 0.0, 0.0], atol=0.1)  # means
    assert np.allclose(colour[:, 1], 0.0, atol=1e-4)  # SDs (from E[x²] - E[x]², so not exactly 0)
    assert np.allclose(stats[n_colour:], [np.log(1e-6)] * (stats.size - n_colour - 2) + [0.0, 0.0])
    # a chip and its mirror image have the same colour statistics and asymmetry
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    a, b = features.chip_stats(chip), features.chip_stats(np.ascontiguousarray(chip[:, ::-1]))
    assert np.allclose(a[:n_colour], b[:n_colour]) and np.allclose(a[-2:], b[-2:])
    with pytest.raises(ValueError):
        features.chip_stats(grey[:100])
