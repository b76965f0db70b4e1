"""`facescore report`: one self-contained HTML file from a real batch's results."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from facescore_cli import report
from facescore_cli.cli import app

runner = CliRunner()
EVIL = '<img src=x onerror="alert(1)">&\'"</script><!--'


class Page(HTMLParser):
    """The parts of the report the tests look at: elements by id, images, links, texts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.srcs: list[tuple[str, str]] = []  # (section id, src)
        self.urls: list[str] = []
        self.texts: list[str] = []
        self.section = ""
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self.section = a.get("id", "")
        if tag == "img":
            self.srcs.append((self.section, a.get("src", "")))
        self.urls += [v for k, v in attrs if k in ("src", "href", "action") and v]
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.texts).append(data)


def _batch(args: list[str]) -> None:
    res = runner.invoke(app, ["batch", *args, "--via", "local", "--no-store", "--jobs", "1"], catch_exceptions=False)
    assert res.exit_code in (0, 1), res.output


@pytest.fixture()
def scored(clean_env: Path, group_photo: Path, omi_dir: Path) -> Path:
    """A real batch: the examples' faces, a five-face photo, dataset faces, a wall, a broken file."""
    photos = Path("photos")
    shutil.copytree(group_photo.parent / "faces", photos / "faces")
    shutil.copy(group_photo, photos / "group.jpg")
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        shutil.copy(omi_dir / "images" / name, photos / f"omi-{name}")
    Image.linear_gradient("L").resize((300, 200)).convert("RGB").save(photos / "wall.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _batch(["photos", "--out", "results.csv"])
    return Path("results.csv")


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open(newline="")))


def test_report_of_a_real_batch(scored: Path) -> None:
    rows = _rows(scored)
    faces = [r for r in rows if r["face"] != ""]
    Path("photos/faces/omi-46.jpg").rename("moved.jpg")  # moved since the batch
    res = runner.invoke(app, ["report", str(scored), "--out", "report.html", "--top", "4"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "1 image(s) missing" in res.output
    text = Path("report.html").read_text()
    page = Page(text)

    # self-contained: every URL is a data: URI, nothing to fetch
    assert page.urls and all(u.startswith("data:image/jpeg;base64,") for u in page.urls)
    assert "default-src 'none'" in text

    counts = dict(re.findall(r"<div class=count><b>([\d,]+)</b><span>([^<]+)</span>", text)[i][::-1]
                  for i in range(len(re.findall(r"<div class=count>", text))))
    assert counts["images"] == str(len({r["path"] for r in rows})) == "11"
    assert counts["faces"] == str(len(faces)) == "13"
    assert counts["no face"] == "1" and counts["failed"] == "1" and counts["source local"] == "10"
    assert counts["images missing now"] == "1"

    # the histogram: 20 bars whose tooltips add up to the faces
    bars = re.findall(r"<rect class=bar [^>]*><title>([\d.]+)-([\d.]+): (\d+) faces?</title>", text)
    assert len(bars) == 20 and sum(int(n) for *_, n in bars) == len(faces)
    top = max(float(r["score"]) for r in faces)
    assert any(float(lo) <= top < float(hi) + (hi == "100") and int(n) > 0 for lo, hi, n in bars)

    vibes = dict(re.findall(r"<tr><td>([^<]+)</td><td class=num>(\d+)</td>", text))
    assert {v: int(n) for v, n in vibes.items()} == Counter(r["vibe"] for r in faces)

    # top and bottom faces as real JPEG crops, best first, with score, vibe and path
    ranked = sorted(faces, key=lambda r: -float(r["score"]))
    cards = re.findall(r"<b class=score>([\d.]+)</b> ([^<]*)<br>.*?<span class=path title='([^']*)'>", text)
    assert [float(s) for s, *_ in cards[:4]] == [float(r["score"]) for r in ranked[:4]]
    assert [float(s) for s, *_ in cards[4:]] == sorted(float(r["score"]) for r in ranked[-4:])
    crops = [s for section, s in page.srcs if section in ("top", "bottom")]
    missing_in_cards = sum(1 for _, _, p in cards if p == "photos/faces/omi-46.jpg")
    assert len(crops) == 8 - missing_in_cards
    for src in crops:
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "JPEG" and img.height == report.CROP_HEIGHT

    assert "broken.jpg" in "".join(page.texts) and "failures" in page.ids

    data = json.loads(next(s for s in page.scripts if s.lstrip().startswith("{")))
    assert len(data["rows"]) == len(rows)
    states = {p: state for p, state, _ in data["images"]}
    assert states["photos/faces/omi-46.jpg"] == report.MISSING and states["photos/group.jpg"] == report.OK
    thumbs = [t for _, _, t in data["images"] if t]
    assert len(thumbs) == 9  # every image still there and not broken
    assert max(Image.open(io.BytesIO(base64.b64decode(t.split(",", 1)[1]))).size[0] for t in thumbs) <= report.THUMB_SIDE
    assert "well-groomed" in data["traits"] or "well_groomed" in data["traits"]


def test_jsonl_gives_the_same_report_as_csv(scored: Path) -> None:
    _batch(["photos", "--out", "results.jsonl"])
    from_csv, bad_csv = report.load(scored)
    from_jsonl, bad_jsonl = report.load(Path("results.jsonl"))
    assert bad_csv == bad_jsonl == 0
    key = lambda r: (r.path, r.face)  # noqa: E731
    assert sorted((key(r), r.score, r.vibe, r.box, r.error, r.traits) for r in from_csv) == \
        sorted((key(r), r.score, r.vibe, r.box, r.error, r.traits) for r in from_jsonl)
    assert all(r.traits for r in from_jsonl if r.face is not None)


def test_columns_by_name_any_trait_prefix_nested_json_and_broken_lines() -> None:
    text = ("error,score,path,face,vibe,x,y,width,height,trait_well_groomed,trait_well-groomed,extra\n"
            ",55.5,a.jpg,0,alert,1,2,3,4,60,61,zzz\n"
            "no face found,,b.jpg,,,,,,,,,\n")
    rows, bad = report.read_rows(text)
    assert bad == 0 and rows[0].score == 55.5 and rows[0].box == (1, 2, 3, 4)
    assert rows[0].traits == {"well_groomed": 60.0, "well-groomed": 61.0}
    assert rows[1].face is None and not rows[1].failed and rows[1].error == "no face found"

    tsv = "path\tface\tscore\tvibe\nc.jpg\t0\t42\tcute\n"
    assert report.read_rows(tsv)[0][0].score == 42.0

    jsonl = (json.dumps({"path": "d.jpg", "face": 0, "score": 70, "traits": {"smart": 50}}) + "\n"
             + '{"path": "e.jpg", "face": 0, "sco')  # cut short by a kill
    rows, bad = report.read_rows(jsonl)
    assert [r.path for r in rows] == ["d.jpg"] and bad == 1 and rows[0].traits == {"smart": 50.0}

    nested = json.dumps([{"path": "f.jpg", "score": 61, "faces": [
        {"box": [5, 6, 7, 8], "score": 61, "vibe": "bold", "rank": 70, "traits": {"cute": 20}},
        {"box": [1, 1, 2, 2], "score": 40, "vibe": "cute", "rank": 10}]},
        {"path": "g.jpg", "faces": [], "error": "no face found"}])
    rows, _ = report.read_rows(nested)
    assert [(r.path, r.face, r.box) for r in rows] == [("f.jpg", 0, (5, 6, 7, 8)), ("f.jpg", 1, (1, 1, 2, 2)),
                                                       ("g.jpg", None, None)]

    for broken, why in (("", "empty"), ("name,score\nx,1\n", "no `path` column"), ("[1, 2", "not a JSON list")):
        with pytest.raises(report.ReportError, match=why):
            report.read_rows(broken)


def test_user_data_is_escaped_everywhere(clean_env: Path, portrait: Path) -> None:
    evil_dir = Path("ev<i>l")
    evil_dir.mkdir()
    shutil.copy(portrait, evil_dir / "me.jpg")
    rows = [{"path": f"{evil_dir}/me.jpg", "face": 0, "x": 112, "y": 77, "width": 274, "height": 395,
             "score": 62, "vibe": EVIL, "rank": 50, "source": EVIL, "error": ""},
            {"path": EVIL, "face": "", "error": EVIL}]
    with open("evil.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    built = report.build(report.load(Path("evil.csv"))[0], title=EVIL)
    page = Page(built.html)
    assert "<img src=x" not in built.html and "</script><!--" not in built.html and "<i>" not in built.html
    assert page.urls and all(u.startswith("data:") for u in page.urls)
    assert EVIL in page.texts  # shown as text, literally
    data = json.loads(next(s for s in page.scripts if s.lstrip().startswith("{")))
    assert data["images"][1][0] == EVIL and data["rows"][0][4] == EVIL  # the JSON block gives back the strings


def test_cli_refuses_to_overwrite_reads_errors_and_writes_stdout(clean_env: Path) -> None:
    Path("r.csv").write_text("path,face,score,vibe\nnowhere.jpg,0,50,alert\n")
    Path("old.html").write_text("keep me")
    res = runner.invoke(app, ["report", "r.csv", "--out", "old.html"])
    assert res.exit_code == 2 and "--force" in res.output and Path("old.html").read_text() == "keep me"
    res = runner.invoke(app, ["report", "none.csv", "--out", "x.html"])
    assert res.exit_code == 2 and "file not found" in res.output and not Path("x.html").exists()
    Path("notes.txt").write_text("hello,world\n1,2\n")
    res = runner.invoke(app, ["report", "notes.txt", "--out", "x.html"])
    assert res.exit_code == 2 and "no `path` column" in res.output
    res = runner.invoke(app, ["report", "r.csv", "--out", "x.html", "--base", "nowhere"])
    assert res.exit_code == 2 and "not a folder" in res.output
    Path("odd.csv").write_text("path,face,score\n/dev/zero,0,50\n.,0,40\n")  # never read as images
    assert report.build(report.load(Path("odd.csv"))[0]).missing == 2
    res = runner.invoke(app, ["report", "r.csv", "--out", "-"])
    assert res.exit_code == 0 and res.stdout.startswith("<!doctype html>") and "nowhere.jpg" in res.stdout
    assert "missing" in res.stdout
    res = runner.invoke(app, ["report", "r.csv", "--out", "old.html", "--force"])
    assert res.exit_code == 0 and Path("old.html").read_text().startswith("<!doctype html>")


def test_the_command_default_for_top_is_the_report_modules() -> None:
    """commands/report.py keeps its own copy so that `--help` imports no numpy; they must agree."""
    from facescore_cli import report
    from facescore_cli.commands import report as command

    assert command.DEFAULT_TOP == report.DEFAULT_TOP
