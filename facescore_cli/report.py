"""One self-contained HTML report from a results file written by `batch` (CSV, TSV, JSONL or JSON).

Nothing in the page comes from the network: thumbnails and face crops are data: URIs, the styles
and the script are inline (facescore_cli/web/report.css and report.js). The static parts (counts,
histogram, vibes, top and bottom faces, failures) are HTML; the table of all rows is drawn by the
script from a JSON block a page at a time, so 10k rows stay quick to sort and filter. Every string
from the results is user data: it is escaped for HTML, and the JSON block cannot close its tag.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from . import __version__, images
from .web import asset
from .errors import FaceScoreError, ImageError
from .result import NO_FACE

THUMB_SIDE = 48  # px: ~1 KB each as an optimised JPEG, so 10k of them still make a usable file
CROP_HEIGHT = 160
DEFAULT_TOP = 12
HIST_BINS = 20  # 5 score points each

# image states, as the report shows them
OK, MISSING, CHANGED, UNREADABLE, NOT_SHOWN = "ok", "missing", "changed since the batch", "unreadable", ""


class ReportError(FaceScoreError):
    """The results file cannot be read as results (not found, empty, no `path` column...)."""


@dataclass
class Row:
    """One row of a results file: a face, or an image with no face, or a failure."""

    path: str
    face: int | None = None
    box: tuple[int, int, int, int] | None = None
    confidence: float | None = None
    score: float | None = None
    vibe: str = ""
    rank: float | None = None
    source: str = ""
    error: str = ""
    store_rank: float | None = None
    model: str = ""
    sha256: str = ""
    traits: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.error) and self.error != NO_FACE and self.face is None


@dataclass
class Picture:
    """What the report could make of one image file now: its state and a thumbnail."""

    state: str
    thumb: str | None = None  # a data: URI


@dataclass
class Report:
    html: str
    rows: int
    images: int
    missing: int
    seconds: float


# -- reading ------------------------------------------------------------------------------------

def read_rows(text: str) -> tuple[list[Row], int]:
    """Rows from the text of a results file, and how many lines could not be understood.

    The format is sniffed, not taken from the name: `[` is a JSON list, `{` JSON lines, else CSV
    (tab-separated when the header has tabs and no commas). Columns are read by name; traits are
    any `trait_*` column or a nested "traits" object; a nested "faces" list (`score --json`) is
    one row per face."""
    body = text.lstrip("\ufeff").lstrip()
    if not body:
        raise ReportError("the results file is empty")
    if body[0] == "[":
        try:
            items = json.loads(body)
        except ValueError as exc:
            raise ReportError(f"not a JSON list of results: {exc}") from None
        rows, bad = _from_objects(items if isinstance(items, list) else [items])
    elif body[0] == "{":
        rows, bad = _from_objects(_json_lines(body))
    else:
        header = body.split("\n", 1)[0]
        dialect = "excel-tab" if "\t" in header and "," not in header else "excel"
        reader = csv.DictReader(io.StringIO(body, newline=""), dialect=dialect)
        if "path" not in (reader.fieldnames or []):
            raise ReportError("no `path` column: is this a results file written by `facescore batch`?")
        rows, bad = _from_objects(reader)
    if not rows:
        raise ReportError("no result rows in the file")
    return rows, bad


def load(path: Path) -> tuple[list[Row], int]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ReportError(f"{path}: file not found") from None
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror or exc}") from None
    return read_rows(text)


def _json_lines(body: str) -> Iterator[Any]:
    for line in body.splitlines():
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                yield None  # a line cut short by an interruption: counted, not fatal


def _from_objects(items: Iterable[Any]) -> tuple[list[Row], int]:
    rows: list[Row] = []
    bad = 0
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("path"), str) or not item["path"]:
            bad += 1
        elif isinstance(item.get("faces"), list):  # one image's result, faces nested
            rows.extend(_nested(item))
        else:
            rows.append(_flat(item))
    return rows, bad


def _flat(d: Mapping[str, Any]) -> Row:
    traits = {k[len("trait_"):]: v for k, v in d.items() if isinstance(k, str) and k.startswith("trait_")}
    if isinstance(d.get("traits"), Mapping):
        traits.update(d["traits"])
    box = [_int(d.get(k)) for k in ("x", "y", "width", "height")]
    return Row(
        path=str(d["path"]), face=_int(d.get("face")),
        box=tuple(box) if None not in box else None,  # type: ignore[arg-type]
        confidence=_num(d.get("confidence")), score=_num(d.get("score")), vibe=_text(d.get("vibe")),
        rank=_num(d.get("rank")), source=_text(d.get("source")), error=_text(d.get("error")),
        store_rank=_num(d.get("store_rank")), model=_text(d.get("model")), sha256=_text(d.get("sha256")),
        traits={str(k): v for k, v in ((k, _num(v)) for k, v in traits.items()) if v is not None},
    )


def _nested(d: Mapping[str, Any]) -> list[Row]:
    base = {k: d.get(k) for k in ("path", "source", "model", "sha256")}
    faces = [f for f in d["faces"] if isinstance(f, Mapping)]
    if not faces:
        return [_flat({**base, "error": d.get("error") or NO_FACE})]
    out = []
    for i, f in enumerate(faces):
        box = f.get("box") if isinstance(f.get("box"), list) and len(f["box"]) == 4 else [None] * 4
        out.append(_flat({**base, **dict(zip(("x", "y", "width", "height"), box)), "face": i,
                          **{k: f.get(k) for k in ("confidence", "score", "vibe", "rank", "store_rank", "traits")}}))
    return out


def _num(v: Any) -> float | None:
    if v is None or v == "" or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = _num(v)
    return int(round(f)) if f is not None else None


def _text(v: Any) -> str:
    return "" if v is None else str(v)


# -- pictures -----------------------------------------------------------------------------------

def _data_uri(img: Image.Image, quality: int) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _open(file: Path, sha256: str, work_side: int | None) -> tuple[str, images.DecodedImage | None]:
    if not file.is_file():  # gone, or a folder, a FIFO, /dev/zero: a results file is user data
        return MISSING, None
    try:
        data = images.read_file(file)
    except ImageError:
        return UNREADABLE, None
    if sha256 and images.sha256(data) != sha256:
        return CHANGED, None
    try:
        return OK, images.decode(data, work_side=work_side)
    except ImageError:
        return UNREADABLE, None


def picture(file: Path, sha256: str = "", thumbs: bool = True) -> Picture:
    """The image's state now, and a thumbnail of at most THUMB_SIDE px when it is there unchanged."""
    if not thumbs:
        return Picture(OK if file.is_file() else MISSING)
    state, decoded = _open(file, sha256, THUMB_SIDE * 2)
    if decoded is None:
        return Picture(state)
    img = Image.fromarray(decoded.pixels)
    img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    return Picture(OK, _data_uri(img, 60))


def _picture_task(args: tuple[Path, str, bool]) -> Picture:
    return picture(*args)


def pictures(wanted: list[tuple[Path, str]], thumbs: bool = True, jobs: int = 1,
             progress: Callable[[int, int], None] | None = None) -> list[Picture]:
    """picture() for each (file, sha256), in order; in `jobs` processes when there are many."""
    tasks = [(file, sha, thumbs) for file, sha in wanted]
    if jobs > 1 and thumbs and len(tasks) >= 200:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = pool.map(_picture_task, tasks, chunksize=32)
            out = []
            for pic in results:
                out.append(pic)
                if progress:
                    progress(len(out), len(tasks))
            return out
    out = []
    for task in tasks:
        out.append(_picture_task(task))
        if progress:
            progress(len(out), len(tasks))
    return out


def crop(decoded: images.DecodedImage, box: tuple[int, int, int, int], margin: float = 0.25) -> Image.Image:
    """The face with a margin, at CROP_HEIGHT px high (boxes are in original upright pixels)."""
    x, y, w, h = (v * decoded.scale for v in box)
    mx, my = w * margin, h * margin
    H, W = decoded.pixels.shape[:2]
    left, top = max(0, int(x - mx)), max(0, int(y - my))
    right, bottom = min(W, int(math.ceil(x + w + mx))), min(H, int(math.ceil(y + h + my)))
    if right <= left or bottom <= top:
        raise ImageError("the face box lies outside the image")
    img = Image.fromarray(decoded.pixels[top:bottom, left:right])
    ratio = CROP_HEIGHT / img.height
    return img.resize((max(1, round(img.width * ratio)), CROP_HEIGHT), Image.Resampling.LANCZOS)


# -- the page -----------------------------------------------------------------------------------

def build(rows: list[Row], *, base: Path = Path("."), top: int = DEFAULT_TOP, thumbs: bool = True,
          title: str = "facescore report", bad_lines: int = 0, jobs: int = 1,
          progress: Callable[[int, int], None] | None = None) -> Report:
    """The report's HTML for these rows; image paths relative to `base` (where batch ran); the
    thumbnails are made in `jobs` processes."""
    start = time.perf_counter()
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(r.path, len(order))
    first: dict[str, Row] = {}
    for r in rows:
        first.setdefault(r.path, r)
    failed_paths = {r.path for r in rows if r.failed}
    shown = [p for p in order if p not in failed_paths]
    made = pictures([(_locate(base, p), first[p].sha256) for p in shown], thumbs, jobs, progress)
    pics = {p: Picture(NOT_SHOWN) for p in failed_paths} | dict(zip(shown, made))

    faces = [r for r in rows if r.face is not None and r.score is not None]
    ranked = sorted(faces, key=lambda r: (-r.score, r.path, r.face))  # type: ignore[operator]
    best = ranked[:top]
    worst = [r for r in reversed(ranked[len(best):])][:top]
    trait_names = sorted({k for r in rows for k in r.traits})
    missing = sum(1 for p in pics.values() if p.state not in (OK, NOT_SHOWN))

    parts = [
        _head(title),
        f"<header><h1>{_e(title)}</h1><p class=muted>{len(rows):,} rows &middot; made by facescore "
        f"{_e(__version__)} &middot; scores are <em>perceived</em> attractiveness as rated by a population of "
        f"raters, not a fact about anyone</p></header>",
        _counts(rows, pics, bad_lines),
        "<section class=two><div>", "<h2>Score distribution</h2>", histogram([r.score for r in faces]),  # type: ignore[misc]
        "</div><div>", "<h2>Vibes</h2>", _vibes(faces), "</div></section>",
        _faces_section("Top faces", best, base, "top"),
        _faces_section("Bottom faces", worst, base, "bottom"),
        _failures(rows),
        "<section><h2>All rows</h2><div id=controls></div><div id=table></div>"
        "<noscript>The table of all rows needs JavaScript.</noscript></section>",
        f"<script type=application/json id=rows>{_json_for_script(_table_data(rows, order, pics, trait_names))}</script>",
        f"<script>{asset('report.js')}</script></body></html>",
    ]
    return Report("\n".join(parts), len(rows), len(order), missing, time.perf_counter() - start)


def _locate(base: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _head(title: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            # no network, ever: even a stray URL in the data could not load anything
            "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{_e(title)}</title><style>{asset('report.css')}</style></head><body>")


def _counts(rows: list[Row], pics: dict[str, Picture], bad_lines: int) -> str:
    by_image: dict[str, Row] = {}
    for r in rows:
        by_image.setdefault(r.path, r)
    failed = {r.path for r in rows if r.failed}
    no_face = {r.path for r in rows if r.face is None and not r.failed}
    sources = Counter(r.source or "none" for p, r in by_image.items() if p not in failed)
    cells = [("images", len(by_image)), ("faces", sum(1 for r in rows if r.face is not None)),
             ("no face", len(no_face)), ("failed", len(failed))]
    cells += [(f"source {s}", n) for s, n in sorted(sources.items())]
    states = Counter(p.state for p in pics.values() if p.state not in (OK, NOT_SHOWN))
    cells += [(f"images {s} now", n) for s, n in sorted(states.items())]
    if bad_lines:
        cells.append(("lines not understood", bad_lines))
    items = "".join(f"<div class=count><b>{n:,}</b><span>{_e(label)}</span></div>" for label, n in cells)
    return f"<section class=counts id=counts>{items}</section>"


def histogram(scores: list[float], bins: int = HIST_BINS, width: int = 640, height: int = 220) -> str:
    """An inline SVG histogram of scores 0-100, one bar per 100/bins points, each with a tooltip."""
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, max(0, int(s / (100 / bins))))] += 1
    peak = max(counts) or 1
    left, bottom, top = 36, 24, 10
    plot_w, plot_h = width - left - 16, height - bottom - top
    bar_w = plot_w / bins
    out = [f"<svg id=histogram class=hist viewBox='0 0 {width} {height}' role=img "
           f"aria-label='score histogram of {len(scores)} faces'>"]
    for tick in (0, peak // 2, peak) if peak > 1 else (0, 1):
        y = top + plot_h - plot_h * tick / peak
        out.append(f"<line class=grid x1={left} x2={width - 16} y1={y:.1f} y2={y:.1f} />"
                   f"<text class=axis x={left - 4} y={y + 4:.1f} text-anchor=end>{tick}</text>")
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        lo, hi = i * 100 / bins, (i + 1) * 100 / bins
        out.append(f"<rect class=bar x={left + i * bar_w + 1:.1f} y={top + plot_h - h:.1f} width={bar_w - 2:.1f} "
                   f"height={h:.1f}><title>{lo:g}-{hi:g}: {n} face{'s' if n != 1 else ''}</title></rect>")
    for v in range(0, 101, 10):
        out.append(f"<text class=axis x={left + plot_w * v / 100:.1f} y={height - 6} text-anchor=middle>{v}</text>")
    out.append("</svg>")
    if scores:
        ordered = sorted(scores)
        median = ordered[len(ordered) // 2]
        out.append(f"<p class=muted>{len(scores):,} faces &middot; mean {sum(scores) / len(scores):.1f} "
                   f"&middot; median {median:.1f} &middot; range {ordered[0]:.1f}-{ordered[-1]:.1f}</p>")
    return "".join(out)


def _vibes(faces: list[Row]) -> str:
    counts = Counter(r.vibe or "(none)" for r in faces)
    if not counts:
        return "<p class=muted>no faces</p>"
    peak = max(counts.values())
    rows = "".join(f"<tr><td>{_e(v)}</td><td class=num>{n:,}</td><td class=barcell>"
                   f"<div style='width:{100 * n / peak:.1f}%'></div></td></tr>"
                   for v, n in counts.most_common())
    return f"<table id=vibes class=vibes><tbody>{rows}</tbody></table>"


def _faces_section(title: str, faces: list[Row], base: Path, key: str) -> str:
    if not faces:
        return ""
    cards = []
    decoded: dict[str, tuple[str, images.DecodedImage | None]] = {}
    for r in faces:
        if r.path not in decoded:  # a small face in a big photo needs the pixels the detector saw
            decoded[r.path] = _open(_locate(base, r.path), r.sha256, images.WORK_SIDE)
        state, img = decoded[r.path]
        pic = f"<div class=gone>{_e(state)}</div>"
        if img is not None and r.box is not None:
            try:
                pic = f"<img alt='face {r.face} of {_e(r.path)}' src='{_data_uri(crop(img, r.box), 82)}'>"
            except ImageError as exc:
                pic = f"<div class=gone>{_e(exc)}</div>"
        cards.append(f"<figure class=face>{pic}<figcaption><b class=score>{r.score:.1f}</b> {_e(r.vibe)}"
                     f"<br><span class=muted>rank {_fmt(r.rank)} &middot; face {r.face}</span>"
                     f"<br><span class=path title='{_e(r.path)}'>{_e(r.path)}</span></figcaption></figure>")
    return f"<section id={key}><h2>{_e(title)}</h2><div class=faces>{''.join(cards)}</div></section>"


def _failures(rows: list[Row], limit: int = 1000) -> str:
    failed = [r for r in rows if r.failed]
    if not failed:
        return "<section id=failures><h2>Failures</h2><p class=muted>none</p></section>"
    items = "".join(f"<tr><td class=path>{_e(r.path)}</td><td>{_e(r.error)}</td></tr>" for r in failed[:limit])
    more = (f"<p class=muted>and {len(failed) - limit:,} more: filter the table below by “failed”.</p>"
            if len(failed) > limit else "")
    return (f"<section id=failures><h2>Failures ({len(failed):,})</h2><table class=plain><thead><tr>"
            f"<th>path</th><th>error</th></tr></thead><tbody>{items}</tbody></table>{more}</section>")


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _table_data(rows: list[Row], order: dict[str, int], pics: dict[str, Picture],
                traits: list[str]) -> dict[str, Any]:
    return {
        "traits": traits,
        "images": [[p, pics[p].state, pics[p].thumb] for p in order],
        # [image, face, score, rank, vibe, confidence, source, error, store_rank, *traits]
        "rows": [[order[r.path], r.face, r.score, r.rank, r.vibe, r.confidence, r.source, r.error, r.store_rank,
                  *(r.traits.get(t) for t in traits)] for r in rows],
    }


def _json_for_script(data: Any) -> str:
    """JSON that cannot end its <script> element or open a comment, whatever the paths say."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
