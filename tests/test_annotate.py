"""--annotate: upright copies of real images with their boxes, scores and vibes drawn."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facescore_cli import annotate
from facescore_cli.cli import app
from facescore_cli.config import Settings
from facescore_cli.ml.types import Face
from facescore_cli.result import FaceResult
from facescore_cli.scoring import Scorer

runner = CliRunner()


def _face(box: tuple[int, int, int, int], score: float = 61.5, vibe: str = "alert") -> FaceResult:
    return FaceResult(face=Face(box=box, confidence=0.99, landmarks=()), score=score, vibe=vibe, rank=50.0)


def _near(pixel, colour, tol: int = 40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


def test_target_keeps_the_relative_path_and_stays_inside(tmp_path: Path) -> None:
    out = tmp_path / "ann"
    assert annotate.target_for(out, "photos/2024/a.jpg") == out / "photos" / "2024" / "a.jpg"
    assert annotate.target_for(out, "/home/me/b.png") == out / "home" / "me" / "b.png"
    assert annotate.target_for(out, "../up/c.jpg") == out / "__" / "up" / "c.jpg"
    assert annotate.target_for(out, "./d.jpg") == out / "d.jpg"


@pytest.mark.parametrize("side", [96, 512, 4000])
def test_box_and_label_drawn_legibly_at_any_size(portrait: Path, side: int) -> None:
    image = Image.open(portrait).convert("RGB").resize((side, side))
    box = (side // 4, side // 3, side // 2, side // 2)
    drawn = annotate.draw(image, [_face(box)])
    assert drawn.size == image.size and image.getpixel((0, 0)) == Image.open(portrait).convert("RGB").resize((side, side)).getpixel((0, 0))
    x, y, w, h = box
    line = max(2, round(annotate.font_size(side, side) / 7))
    assert _near(drawn.getpixel((x + line // 2, y + h // 2)), annotate.PALETTE[0])  # the left edge
    assert _near(drawn.getpixel((x + w // 2, y + h - 1 - line // 2)), annotate.PALETTE[0])  # the bottom edge
    # the label: a coloured band with dark text, just above the box, its height ~3% of the side
    band = np.asarray(drawn)[: y, x: x + w].astype(int)
    changed = np.any(band != np.asarray(image)[: y, x: x + w].astype(int), axis=2)
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.size and rows.max() == y - 1
    assert annotate.font_size(side, side) <= rows.size <= 3 * annotate.font_size(side, side)
    assert (np.asarray(drawn)[rows[0]: y, x: x + w].sum(axis=2) < 150).any()  # glyphs in black
    assert annotate.font_size(side, side) >= 12


def test_label_at_the_top_edge_goes_inside_the_image(portrait: Path) -> None:
    image = Image.open(portrait).convert("RGB")
    drawn = annotate.draw(image, [_face((400, 0, 112, 100), vibe="outgoing"), _face((10, 300, 50, 50))])
    # a label that does not fit above the box is drawn inside it, pulled left to stay in the picture
    assert _near(drawn.getpixel((511, 1)), annotate.PALETTE[0])
    assert _near(drawn.getpixel((10 + 1, 300 + 25)), annotate.PALETTE[1])  # second face, second colour


def _sideways_copy(portrait: Path, dest: Path) -> None:
    turned = Image.open(portrait).rotate(90, expand=True)  # stored turned; EXIF 6 says turn it back
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.crop((0, 0, 512, 400)).save(dest, quality=95, exif=exif)  # 400 wide once upright


def test_batch_annotates_upright_copies_at_the_same_relative_paths(clean_env: Path, portrait: Path,
                                                                   group_photo: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(group_photo, photos / "group.jpg")
    _sideways_copy(portrait, photos / "sub" / "turned.jpg")
    Image.linear_gradient("L").resize((300, 200)).convert("RGB").save(photos / "sub" / "wall.png")
    (photos / "sub" / "broken.jpg").write_bytes(Image.open(portrait).tobytes()[:5000])

    res = runner.invoke(app, ["batch", "photos", "--out", "r.csv", "--via", "local", "--no-store",
                              "--jobs", "1", "--annotate", "ann"], catch_exceptions=False)
    assert res.exit_code == 1, res.output  # the broken file
    rows = list(csv.DictReader(open("r.csv", newline="")))
    written = sorted(str(p.relative_to("ann")) for p in Path("ann").rglob("*") if p.is_file())
    assert written == ["photos/group.jpg", "photos/sub/turned.jpg", "photos/sub/wall.png"]
    for row in rows:  # the path column leads to the copy
        assert Path("ann", row["path"]).is_file() == (row["error"] in ("", "no face found"))

    turned = Image.open("ann/photos/sub/turned.jpg")
    assert turned.size == (400, 512) and turned.getexif().get(0x0112) in (None, 1)  # pixels upright
    [face] = [r for r in rows if r["path"].endswith("turned.jpg")]
    x, y, w, h = (int(face[k]) for k in ("x", "y", "width", "height"))
    assert _near(turned.convert("RGB").getpixel((x + 1, y + h // 2)), annotate.PALETTE[0], tol=60)

    assert Path("ann/photos/sub/wall.png").read_bytes() == (photos / "sub" / "wall.png").read_bytes()
    group = Image.open("ann/photos/group.jpg").convert("RGB")
    assert group.size == Image.open(group_photo).size
    faces = [r for r in rows if r["path"].endswith("group.jpg")]
    assert len(faces) == 5
    for i, row in enumerate(faces):
        x, y, h = int(row["x"]), int(row["y"]), int(row["height"])
        assert _near(group.getpixel((x + 1, y + h // 2)), annotate.PALETTE[int(row["face"])], tol=60), i


def test_unusable_folder_is_exit_two_before_any_work(clean_env: Path, portrait: Path, tmp_path: Path) -> None:
    Path("taken").write_text("a file, not a folder")
    res = runner.invoke(app, ["batch", str(portrait), "--out", "r.csv", "--via", "local", "--annotate", "taken"])
    assert res.exit_code == 2 and "not a folder" in res.output
    assert not Path("r.csv").exists()


def test_never_overwrites_the_image_itself(clean_env: Path, portrait: Path) -> None:
    shutil.copy(portrait, "me.jpg")
    before = Path("me.jpg").read_bytes()
    res = runner.invoke(app, ["score", "me.jpg", "--via", "local", "--no-store", "--annotate", "."])
    assert res.exit_code == 0 and "is the image itself" in res.output
    assert Path("me.jpg").read_bytes() == before


def test_a_file_changed_after_scoring_is_not_annotated(clean_env: Path, portrait: Path, group_photo: Path) -> None:
    shutil.copy(portrait, "me.jpg")
    result = Scorer.from_settings(Settings.load()).score_file(Path("me.jpg"), "me.jpg")
    shutil.copy(group_photo, "me.jpg")
    with pytest.raises(annotate.AnnotateError, match="changed"):
        annotate.annotate_result(result, Path("ann"))
    assert not Path("ann/me.jpg").exists()
    warnings: list[str] = []
    assert list(annotate.annotated([result], Path("ann"), warnings.append)) == [result]  # not lost
    assert len(warnings) == 1 and "me.jpg" in warnings[0]
