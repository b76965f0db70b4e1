"""The web page `serve api` answers at `GET /`, and the assets the HTML report inlines.

One file, no external assets: choose or drop photos, each is sent to `POST /api/score` and shown
with its boxes and, per face, score, vibe, rank and traits; errors are the API's own messages.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


@lru_cache(maxsize=None)
def asset(name: str) -> str:
    """The text of a file shipped in facescore_cli/web/ (index.html, report.css, report.js)."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def mount(app: "FastAPI") -> None:
    """Add `GET /`, the page, to the API app (left out of the OpenAPI document: it is not API)."""
    from fastapi.responses import HTMLResponse

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(asset("index.html"), headers={"cache-control": "no-cache"})
