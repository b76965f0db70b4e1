"""The web page of `serve api` and the HTML report, in a real headless Chromium through Selenium.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`) and
selenium (the test extra). Nothing is downloaded at run time: selenium is pointed at
/usr/bin/chromedriver. Without them these tests, and only these, skip with how to install them.
Set FACESCORE_SCREENSHOTS=DIR to keep the screenshots (docs/page.png and docs/report.png come
from there).
"""
from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import dies_with_pytest, free_port, wait_for_port
from queue_support import CLI, base_env

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = next((Path(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
INSTALL = ("needs a headless browser: apt-get install -y chromium chromium-driver, "
           "and pip install -e '.[test]' for selenium")

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the test extra is not installed
    webdriver = None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if webdriver is None or CHROMIUM is None or not CHROMEDRIVER.exists():
        pytest.skip(INSTALL)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1280,1000",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), popen_kw={"preexec_fn": dies_with_pytest(signal.SIGTERM)})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver, path: Path, name: str) -> np.ndarray:
    """Save a screenshot of the whole page; return its pixels (grey) to check it is not blank."""
    height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 4000)")
    driver.set_window_size(1280, max(700, int(height) + 20))  # headless: the window is the viewport
    driver.save_screenshot(str(path))
    keep = os.environ.get("FACESCORE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    driver.set_window_size(1280, 1000)
    return np.asarray(Image.open(path).convert("L"), dtype=float)


def _not_blank(pixels: np.ndarray) -> None:
    assert pixels.size > 500 * 500
    assert pixels.std() > 20, f"screenshot looks blank (pixel std {pixels.std():.1f})"
    assert len(np.unique(pixels.astype(np.uint8))) > 64  # photos and text, not a flat page


@pytest.fixture()
def api_url(tmp_path: Path):
    """`facescore serve api --via local` on a free port, stopped after the test."""
    env = base_env("redis://127.0.0.1:9", tmp_path / "home")  # --via local: no Redis needed
    port = free_port()
    log = (tmp_path / "api.log").open("w")
    # its own process group, so its scoring processes go with it too (they outlive a SIGTERM alone)
    proc = subprocess.Popen(CLI + ["serve", "api", "--via", "local", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=dies_with_pytest(signal.SIGTERM),
                            start_new_session=True)
    try:
        wait_for_port(port, 60)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(15)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


def _wait_scored(driver, cards: int, timeout: float = 120.0) -> list:
    WebDriverWait(driver, timeout).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-state]")) >= cards)
    return driver.find_elements(By.CSS_SELECTOR, ".card")


def test_page_scores_a_dropped_photo_and_shows_api_errors(browser, api_url, group_photo: Path,
                                                          portrait: Path, tmp_path: Path) -> None:
    browser.get(api_url)
    assert browser.title == "facescore"
    page = browser.page_source
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page

    file_input = browser.find_element(By.ID, "file")
    file_input.send_keys(str(portrait))
    [card] = _wait_scored(browser, 1)
    assert card.get_attribute("data-state") == "scored", card.text
    shown = card.find_element(By.CSS_SELECTOR, ".face .score").text

    answer = httpx.post(api_url + "api/score", json={"image": base64.b64encode(portrait.read_bytes()).decode()},
                        timeout=60).json()
    assert answer["success"] is True
    face = answer["data"]["faces"][0]
    assert shown == f"{face['score']:.1f}"
    assert card.find_element(By.CSS_SELECTOR, ".face .vibe").text == face["vibe"]
    assert f"rank {face['rank']:.1f}" in card.find_element(By.CSS_SELECTOR, ".face .rank").text
    traits = card.find_elements(By.CSS_SELECTOR, ".traits > span:not(.num)")
    assert {t.text for t in traits} == set(face["traits"]) and traits

    # the five-face photo: a box (two rects: the dark rim and the colour) and a block per face
    file_input.send_keys(str(group_photo))
    cards = _wait_scored(browser, 2)
    group = cards[0]  # the newest card comes first
    assert group.get_attribute("data-state") == "scored", group.text
    assert len(group.find_elements(By.CSS_SELECTOR, ".face")) == 5
    assert len(group.find_elements(By.CSS_SELECTOR, ".stage svg rect")) == 10
    # the boxes sit on the photo: the largest face's box, in screen pixels, lies inside the image
    img = group.find_element(By.CSS_SELECTOR, ".stage img").rect
    box = group.find_elements(By.CSS_SELECTOR, ".stage svg rect")[1].rect
    assert img["x"] <= box["x"] < box["x"] + box["width"] <= img["x"] + img["width"] + 1
    assert box["width"] > img["width"] * 0.1

    pixels = _screenshot(browser, tmp_path / "page.png", "page.png")
    _not_blank(pixels)

    # errors are the API's own messages
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("plain text, no pixels")
    file_input.send_keys(str(not_image))
    bad = _wait_scored(browser, 3)[0]
    assert bad.get_attribute("data-state") == "error"
    message = bad.find_element(By.CSS_SELECTOR, ".status").text
    assert "not an image" in message and "HTTP 422" in message

    wall = tmp_path / "wall.png"
    Image.linear_gradient("L").resize((400, 300)).convert("RGB").save(wall)
    file_input.send_keys(str(wall))
    empty = _wait_scored(browser, 4)[0]
    assert empty.get_attribute("data-state") == "error"
    assert "no face found" in empty.find_element(By.CSS_SELECTOR, ".status").text
    assert browser.get_log("browser") == [] or all(e["level"] != "SEVERE" or "api/score" in e["message"]
                                                   for e in browser.get_log("browser"))


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_report_renders_histogram_top_faces_and_a_working_table(browser, tmp_path: Path, group_photo: Path,
                                                                omi_dir: Path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(group_photo.parent / "faces", photos / "faces")
    shutil.copy(group_photo, photos / "group.jpg")
    for name in sorted(os.listdir(omi_dir / "images"))[:40]:
        shutil.copy(omi_dir / "images" / name, photos / f"omi-{name}")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    env = base_env("redis://127.0.0.1:9", tmp_path / "home")
    done = _run(["batch", "photos", "--out", "results.csv", "--via", "local", "--no-store"], tmp_path, env)
    assert done.returncode == 1, done.stderr  # the broken file
    with (tmp_path / "results.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # a row whose path is an attack: it must show as text and run nothing
    evil = '<img src=x onerror="alert(document.domain)">.jpg'
    with (tmp_path / "results.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow([evil, "", "", "", "", "", "", "", "", "", "", '<script>alert(2)</script>'])
    made = _run(["report", "results.csv", "--out", "report.html", "--top", "8"], tmp_path, env)
    assert made.returncode == 0, made.stderr

    browser.get((tmp_path / "report.html").as_uri())
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    bars = browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bar")
    assert len(bars) == 20
    heights = [float(b.get_attribute("height")) for b in bars]
    assert sum(h > 0 for h in heights) >= 4 and max(heights) > 100
    crops = browser.find_elements(By.CSS_SELECTOR, "#top figure img")
    assert len(crops) == 8
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalHeight", c) == 160
               for c in crops)
    best = max(float(r["score"]) for r in rows if r["score"])
    assert browser.find_element(By.CSS_SELECTOR, "#top .score").text == f"{best:.1f}"
    assert evil in browser.find_element(By.ID, "failures").text

    faces = sum(1 for r in rows if r["face"] != "")
    shown = browser.find_element(By.ID, "shown")
    assert shown.text == f"rows 1-{min(100, len(rows) + 1)} of {len(rows) + 1}"
    score_header = browser.find_element(By.CSS_SELECTOR, "#rowtable th[data-col='3']")
    score_header.click()  # numbers sort highest first
    first = browser.find_element(By.CSS_SELECTOR, "#rowtable tbody tr td:nth-child(4)").text
    assert first == f"{best:.1f}"
    browser.find_element(By.CSS_SELECTOR, "#rowtable th[data-col='3']").click()
    low = min(float(r["score"]) for r in rows if r["score"])
    assert browser.find_element(By.CSS_SELECTOR, "#rowtable tbody tr td:nth-child(4)").text == f"{low:.1f}"
    status = browser.find_element(By.ID, "status")
    status.find_element(By.CSS_SELECTOR, "option[value='failed']").click()
    assert browser.find_element(By.ID, "shown").text.startswith("rows 1-2 of 2")
    status.find_element(By.CSS_SELECTOR, "option[value='faces']").click()
    browser.find_element(By.ID, "filter").send_keys("group")
    assert browser.find_element(By.ID, "shown").text == f"rows 1-5 of 5 (filtered from {len(rows) + 1})"
    assert faces > 40
    browser.refresh()  # the page as it opens, for the screenshot

    pixels = _screenshot(browser, tmp_path / "report.png", "report.png")
    _not_blank(pixels)


def test_the_page_is_served_whole_and_kept_out_of_the_api_document(tmp_path: Path) -> None:
    """Runs without a browser: GET / is one HTML file with nothing external to load."""
    from fastapi.testclient import TestClient

    from facescore_cli.api import create_app
    from queue_support import settings_for

    settings = settings_for(base_env("redis://127.0.0.1:9", tmp_path / "home"))
    with TestClient(create_app(settings, via="local", processes=1)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "api/score" in page.text and "<script>" in page.text and "<style>" in page.text
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # no external asset
        assert "/" not in client.get("/openapi.json").json()["paths"]
