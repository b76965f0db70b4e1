"""mtcnn's own machinery, beside the networks: non-maximum suppression."""
from __future__ import annotations

import numpy as np
import pytest

from facescore_cli.ml import mtcnn


def greedy_nms(boxes: np.ndarray, threshold: float, by_min: bool) -> list[int]:
    """The textbook loop: take the best box left, drop every box overlapping it too much."""
    x1, y1, x2, y2, s = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = list(np.argsort(-s, kind="stable"))
    pick = []
    while order:
        i, order = order[0], order[1:]
        pick.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[order]) - np.maximum(x1[i], x1[order]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[order]) - np.maximum(y1[i], y1[order]) + 1)
        inter = iw * ih
        denom = np.minimum(area[i], area[order]) if by_min else area[i] + area[order] - inter
        order = [j for j, o in zip(order, inter / denom) if o <= threshold]
    return pick


@pytest.mark.parametrize("n", [0, 1, 40, mtcnn.NMS_ALL_PAIRS_MAX + 100])
@pytest.mark.parametrize("threshold,by_min", [(0.5, False), (0.7, False), (0.7, True)])
def test_nms_keeps_what_the_greedy_loop_keeps(n, threshold, by_min):
    # Both of _nms's ways (all pairs at once; box by box above NMS_ALL_PAIRS_MAX boxes) against
    # the plain loop, on clustered boxes like P-Net's (many overlaps) with distinct scores.
    rng = np.random.default_rng(n)
    centres = rng.uniform(0, 400, (max(n // 8, 1), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 8, (n, 2))
    side = rng.uniform(20, 60, (n, 1))
    boxes = np.concatenate([xy, xy + side, rng.permutation(n)[:, None] / max(n, 1)], 1).astype(np.float32)
    boxes[::7, 2] = boxes[::7, 0] - 1  # empty boxes (0/0 overlaps with by_min): suppressed, as always
    with np.errstate(invalid="ignore"):
        kept = mtcnn._nms(boxes, threshold, by_min=by_min)
        expected = greedy_nms(boxes, threshold, by_min)
    assert kept.tolist() == expected
    if n > 40:
        assert 0 < len(kept) < 0.9 * n  # the clusters did overlap
