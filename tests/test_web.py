"""The web page (`cameras serve`): its Python functions, then the page in a real browser.

The browser tests start `cameras serve` in a subprocess on a free loopback port and drive
Debian's Chromium through Playwright. They skip only when /usr/bin/chromium is absent
(`apt-get install -y chromium chromium-driver`); Playwright's own browser download is
never used.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

import cameras
from cameras import CAMERAS, GradCAM, web
from cameras.apps.viz import colorize, overlay
from cameras.core.images import resize_map
from cameras.methods.cameras import default_scales
from cameras.web import (
    MAX_SIDE,
    MAX_UPLOAD_BYTES,
    ResultFolders,
    WebError,
    explain_photo,
    handle_explain,
    handle_opacity,
    handle_upload,
    method_for,
    open_upload,
    preset_scales,
    render,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# The `cameras` command, run by this interpreter (the console script may not be on PATH).
SERVE = "import sys; from cameras.cli import main; sys.exit(main())"
CHELSEA_SIZE = (451, 300)  # width, height of scikit-image's chelsea


@pytest.fixture(scope="module")
def session(lite0):
    model, prep, classes = lite0
    return cameras.Session(model, prep, classes)


# ---------------------------------------------------------------- functions, no browser


def test_presets_are_the_paper_steps_and_default_is_the_library_default():
    assert preset_scales("fewer", 224) == [224, 324, 424, 524, 624]
    assert preset_scales("default", 224) == list(range(224, 925, 100))
    assert preset_scales("more", 224) == list(range(224, 1225, 100))
    for side in (224, 260, 300, 331):
        assert preset_scales("default", side) == default_scales(side)
    # 260-pixel input: 624 * 260 / 224 = 724.29 -> 724; 1224 * 260 / 224 = 1420.71 -> 1421.
    assert preset_scales("fewer", 260)[-1] == 724
    assert preset_scales("more", 260)[-1] == 1421
    with pytest.raises(ValueError, match="unknown quality preset 'best'"):
        preset_scales("best", 224)


def test_open_upload_reads_a_photo_at_its_own_size(tmp_path, chelsea):
    path = tmp_path / "chelsea.jpg"
    chelsea.save(path)
    image = open_upload(path)
    assert image.mode == "RGB"
    assert image.size == CHELSEA_SIZE


def test_open_upload_rejects_a_text_file_by_its_own_name(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a photo\n")
    with pytest.raises(WebError) as caught:
        open_upload(path)
    message = str(caught.value)
    assert message == "notes.txt: not an image (unrecognised format)"
    assert str(tmp_path) not in message  # the server's temporary path is not shown


def test_open_upload_rejects_an_empty_and_a_missing_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(WebError, match=r"^empty\.png: empty file$"):
        open_upload(empty)
    with pytest.raises(WebError, match=r"^gone\.png: the upload could not be read"):
        open_upload(tmp_path / "gone.png")


def test_open_upload_limits_bytes(tmp_path, chelsea):
    path = tmp_path / "chelsea.png"
    chelsea.save(path)
    size = path.stat().st_size
    assert size < MAX_UPLOAD_BYTES
    open_upload(path, max_bytes=size)  # exactly at the limit is allowed
    limit = 64 * 1024  # 0.0625 MB; the photo is larger
    assert size > limit
    with pytest.raises(WebError) as caught:
        open_upload(path, max_bytes=limit)
    assert str(caught.value) == (
        f"chelsea.png: the file is {size / 2**20:.1f} MB, over the 0.0625 MB limit"
    )


def test_open_upload_limits_pixels_per_side_before_decoding(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("L", (MAX_SIDE + 1, 2)).save(wide)  # a few bytes, but too wide
    with pytest.raises(WebError) as caught:
        open_upload(wide)
    assert str(caught.value) == (
        f"wide.png: the image is {MAX_SIDE + 1} x 2 pixels; "
        f"the limit is {MAX_SIDE} pixels on either side"
    )
    tall = tmp_path / "tall.png"
    Image.new("L", (3, 40)).save(tall)
    with pytest.raises(WebError, match="3 x 40 pixels; the limit is 39 pixels"):
        open_upload(tall, max_side=39)
    assert open_upload(tall, max_side=40).size == (3, 40)


def test_upload_handler_shows_the_photo_and_the_models_top5(session, lite0, chelsea, tmp_path):
    model, prep, _ = lite0
    training = model.training
    path = tmp_path / "chelsea.png"
    chelsea.save(path)
    page = handle_upload(session, str(path))
    with torch.no_grad():
        reference = model(prep(chelsea)[None]).softmax(dim=1)[0].topk(5)
    assert [value for _, value in page["choices"]] == [str(i) for i in reference.indices.tolist()]
    assert page["choice"] == str(reference.indices[0].item())
    assert list(page["top5"].values()) == pytest.approx(reference.values.tolist(), abs=1e-6)
    assert list(page["top5"])[0] == session.class_label(int(reference.indices[0]))
    assert page["state"]["stem"] == "chelsea" and page["state"]["image"].size == CHELSEA_SIZE
    assert page["status"].startswith("**chelsea.png**: 451 x 300 px")
    assert model.training == training
    nothing = handle_upload(session, None)
    assert nothing["state"] is None and nothing["status"] == "Upload a photo to start."
    (tmp_path / "notes.txt").write_text("not a photo")
    refused = handle_upload(session, str(tmp_path / "notes.txt"))
    assert refused["state"] is None
    assert refused["status"] == "**Error:** notes.txt: not an image (unrecognised format)"


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("1000", "class 1000 is out of range: the model has 1000 classes (0 to 999)"),
        ("-3", "class -3 is out of range: the model has 1000 classes (0 to 999)"),
        ("\u00b2", "unknown class name '\u00b2'; no close match"),  # a superscript two
        (
            "persian kat",
            "unknown class name 'persian kat'; closest: Persian cat, pomegranate, Egyptian cat",
        ),
        ("  ", "empty class: give an index or a name"),
        (None, "empty class: give an index or a name"),
    ],
)
def test_explain_handler_reports_a_bad_class_on_the_page(session, chelsea, typed, message):
    """Bad classes are one line on the page (the class rule's own wording), never an
    exception escaping the handler."""
    state = {"image": chelsea.resize((60, 40)), "stem": "chelsea"}
    page = handle_explain(session, state, typed, ["gradcam"], "fewer", 0.5, ResultFolders())
    assert page == {"status": f"**Error:** {message}", "items": [], "files": None, "done": None}


def test_explain_handler_needs_a_photo_and_a_method(session, chelsea):
    folders = ResultFolders()
    page = handle_explain(session, None, "281", ["gradcam"], "fewer", 0.5, folders)
    assert page["status"] == "**Error:** upload a photo first"
    state = {"image": chelsea.resize((60, 40)), "stem": "chelsea"}
    page = handle_explain(session, state, "281", [], "fewer", 0.5, folders)
    assert page["status"] == "**Error:** choose at least one method"
    assert handle_opacity(None, 0.5, folders) is None


def test_explain_and_opacity_handlers_write_the_librarys_maps(session, lite0, chelsea, monkeypatch):
    model, prep, _ = lite0
    monkeypatch.setitem(web.PRESETS, "fewer", 324)
    small = chelsea.resize((150, 100))
    folders = ResultFolders()
    state = {"image": small, "stem": "cat"}
    page = handle_explain(session, state, " Persian CAT ", ["gradcam"], "fewer", 1.0, folders)
    assert page["status"] == "Explained **Persian cat** (283)."
    png, npy = page["files"]
    assert Path(png).name == "cat_gradcam.png" and Path(npy).name == "cat_gradcam.npy"
    reference = resize_map(GradCAM(model, layer="bn2")(prep(small)[None], 283).maps[0], 100, 150)
    np.testing.assert_allclose(np.load(npy), reference, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), colorize(reference))
    redrawn = handle_opacity(page["done"], 0.0, folders)
    assert redrawn["files"][1] == npy  # the map is reused, only the overlay is redrawn
    np.testing.assert_array_equal(np.asarray(Image.open(redrawn["files"][0])), np.asarray(small))
    shutil.rmtree(folders.root)


def test_explain_photo_calls_the_library_and_resizes_to_the_photo(lite0, chelsea, monkeypatch):
    """The page's maps are the library's maps at the photo's size: no maths of its own."""
    model, prep, classes = lite0
    # Two scales keep this fast on a CPU; the browser test runs the real "fewer" preset.
    monkeypatch.setitem(web.PRESETS, "fewer", 324)
    session = cameras.Session(model, prep, classes)
    small = chelsea.resize((150, 100))
    seen = []
    results = explain_photo(
        session, small, 283, ["gradcam", "cameras"], "fewer", lambda i, n: seen.append((i, n))
    )
    assert seen == [(0, "gradcam"), (1, "cameras")]
    assert [r.method for r in results] == ["gradcam", "cameras"]
    assert session.layer == "bn2"  # found once, shared by every method
    x = prep(small)[None]
    expected = {
        "gradcam": GradCAM(model, layer="bn2")(x, targets=283),
        "cameras": CAMERAS(model, layer="bn2", scales=[224, 324])(x, targets=283),
    }
    for result in results:
        assert result.saliency.shape == (100, 150)
        assert result.saliency.dtype == np.float32
        assert result.target == 283 and result.target_name == "Persian cat"
        reference = resize_map(expected[result.method].maps[0], 100, 150)
        np.testing.assert_allclose(result.saliency, reference, atol=1e-6)
    assert results[1].scales_kept == [224, 324]  # a class given keeps every scale
    with pytest.raises(WebError, match="choose at least one method"):
        explain_photo(session, small, 283, [], "fewer")
    with pytest.raises(WebError, match="unknown method 'magic'"):
        method_for(session, "magic")


def test_render_writes_the_overlay_and_the_raw_map(tmp_path, chelsea):
    from cameras.web import MapResult

    saliency = np.zeros((300, 451), dtype=np.float32)
    saliency[100:200, 150:300] = 1.0
    result = MapResult("cameras", saliency, 283, "Persian cat", [224])
    items, files = render(chelsea, [result], 1.0, tmp_path / "out", "chelsea")
    png, npy = tmp_path / "out" / "chelsea_cameras.png", tmp_path / "out" / "chelsea_cameras.npy"
    assert items == [(str(png), "cameras: Persian cat (283)")]
    assert files == [str(png), str(npy)]
    np.testing.assert_array_equal(np.load(npy), saliency)
    drawn = np.asarray(Image.open(png))
    assert drawn.shape == (300, 451, 3)
    # Opacity 1 shows the colour map alone: jet at 1 is dark red, at 0 dark blue.
    np.testing.assert_array_equal(drawn, colorize(saliency))
    assert tuple(drawn[150, 200]) == (128, 0, 0) and tuple(drawn[0, 0]) == (0, 0, 128)
    # A new opacity redraws the overlay and reuses the map already written.
    _, files = render(chelsea, [result], 0.5, tmp_path / "half", "chelsea", maps=[str(npy)])
    assert files == [str(tmp_path / "half" / "chelsea_cameras.png"), str(npy)]
    assert not (tmp_path / "half" / "chelsea_cameras.npy").exists()
    half = Image.open(tmp_path / "half" / "chelsea_cameras.png")
    np.testing.assert_array_equal(np.asarray(half), np.asarray(overlay(chelsea, saliency)))


def test_result_folders_expire():
    folders = web.ResultFolders(keep_seconds=-1)  # everything older than now expires
    first = folders.new()
    second = folders.new()
    assert not first.exists() and second.is_dir() and second.parent == folders.root
    kept = web.ResultFolders()
    assert kept.new().is_dir() and kept.new().is_dir() and len(list(kept.root.iterdir())) == 2
    for made in (folders, kept):
        shutil.rmtree(made.root)


def test_model_work_runs_one_at_a_time(session):
    """Upload (top-5) and Explain share one queue slot; redrawing at a new opacity does not
    touch the model and has its own."""
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    app = web.build_app(session)
    events = {fn.name: fn for fn in app.fns.values()}
    assert set(events) == {"on_upload", "on_explain", "on_opacity"}
    for name in ("on_upload", "on_explain"):
        assert events[name].queue and events[name].concurrency_limit == 1
        assert events[name].concurrency_id == "model"
    assert events["on_opacity"].concurrency_id != "model"
    assert app.cameras_max_bytes == MAX_UPLOAD_BYTES


# ---------------------------------------------------------------- the page in a browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`cameras serve` in a subprocess on a free loopback port; yields its URL."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium chromium-driver")
    # With Chromium present, a missing gradio or playwright is a failure, not a skip.
    folder = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(folder / "gradio"), PYTHONUNBUFFERED="1")
    log_path = folder / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--port", str(port), "--device", "cpu"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"cameras serve exited with {process.returncode}:\n{log_path.read_text()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"cameras serve did not answer in 120 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page that records every address it asks for."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    page.goto(server)
    page.wait_for_selector("#upload input[type=file]", state="attached")
    yield page
    page.close()


def _status_contains(page, text: str, timeout_ms: int) -> None:
    page.wait_for_function(
        "text => document.querySelector('#status').innerText.includes(text)",
        arg=text,
        timeout=timeout_ms,
    )


def _assert_only_loopback(page, server: str) -> None:
    """The page works offline: nothing is fetched from outside this machine."""
    own = urlparse(server).netloc
    outside = [u for u in page.requested if urlparse(u).scheme in ("http", "https", "ws", "wss")]
    outside = [u for u in outside if urlparse(u).netloc != own]
    assert outside == []


def test_page_explains_a_photo(page, server, tmp_path, chelsea):
    photo = tmp_path / "chelsea.jpg"
    chelsea.save(photo, quality=95)
    page.set_input_files("#upload input[type=file]", str(photo))
    _status_contains(page, "451 x 300 px", 60_000)
    top5 = page.locator("#top5").inner_text()
    assert top5.count("%") == 5 and "cat" in top5

    # Choose the class by typing a name that is not among the top-5 offered.
    box = page.locator("#target input")
    box.fill("Persian cat")
    box.press("Enter")
    page.locator("#preset").get_by_label("fewer", exact=False).check()
    page.locator("#explain").click()
    _status_contains(page, "Explained", 180_000)
    assert "Persian cat (283)" in page.locator("#status").inner_text()
    assert "224, 324, 424, 524, 624" in page.locator("#status").inner_text()

    # One overlay per method, side by side, each at the photo's own size.
    images = page.locator("#overlays img")
    images.first.wait_for()
    assert images.count() == 2
    page.wait_for_function(
        "() => [...document.querySelectorAll('#overlays img')]"
        ".every(img => img.complete && img.naturalWidth > 0)",
        timeout=20_000,
    )
    sizes = images.evaluate_all("els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert sizes == [list(CHELSEA_SIZE)] * 2
    captions = images.evaluate_all("els => els.map(e => e.alt)")
    assert captions == ["cameras: Persian cat (283)", "gradcam: Persian cat (283)"]

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True)

    # Downloads: the overlay PNG and the raw map, both at the photo's size.
    links = page.locator("#downloads a[download]")
    names = links.evaluate_all("els => els.map(e => e.getAttribute('download'))")
    assert names == [
        "chelsea_cameras.png",
        "chelsea_cameras.npy",
        "chelsea_gradcam.png",
        "chelsea_gradcam.npy",
    ]
    hrefs = links.evaluate_all("els => els.map(e => e.href)")
    saliency = np.load(io.BytesIO(page.request.get(hrefs[1]).body()))
    assert saliency.shape == (300, 451) and saliency.dtype == np.float32
    # In [0, 1]; the resize to the photo's size may round the peak just below 1.
    assert saliency.min() >= 0.0 and 0.9 < saliency.max() <= 1.0
    drawn = Image.open(io.BytesIO(page.request.get(hrefs[0]).body()))
    assert drawn.size == CHELSEA_SIZE

    # Opacity 1: the overlay becomes the colour map of the raw map alone.
    before = images.first.get_attribute("src")
    page.locator("#alpha input[type=number]").fill("1")
    page.locator("#alpha input[type=number]").press("Enter")
    page.wait_for_function(
        "src => document.querySelector('#overlays img')?.src !== src", arg=before, timeout=20_000
    )
    page.wait_for_function(
        "() => document.querySelector('#downloads a[download]')?.href.includes('cameras.png')"
    )
    new_png = page.locator("#downloads a[download]").first.get_attribute("href")
    drawn = np.asarray(Image.open(io.BytesIO(page.request.get(new_png).body())))
    np.testing.assert_array_equal(drawn, colorize(saliency))
    _assert_only_loopback(page, server)


def test_page_refuses_a_text_file_and_an_oversized_upload(page, server, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a photo\n")
    page.set_input_files("#upload input[type=file]", str(notes))
    _status_contains(page, "Error", 30_000)
    assert page.locator("#status").inner_text() == (
        "Error: notes.txt: not an image (unrecognised format)"
    )
    assert page.locator("#overlays img").count() == 0

    # Gradio refuses uploads over the limit in the browser, before sending them.
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    page.set_input_files("#upload input[type=file]", str(big))
    page.get_by_text("exceed the maximum allowed size").wait_for(timeout=20_000)
    assert "notes.txt" in page.locator("#status").inner_text()  # the server never saw it
    _assert_only_loopback(page, server)


def test_serve_usage_errors_are_one_line(capsys):
    from cameras.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "cameras serve: error: --port 70000: must be between 1 and 65535",
        "cameras serve: error: --max-upload-mb 0.0: must be positive",
    ]
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2  # before loading any model
    assert capsys.readouterr().err == (
        f"cameras serve: error: --port {port}: cannot listen on 127.0.0.1 "
        "(Address already in use)\n"
    )


def test_serve_offers_no_share_link_and_prints_no_share_hint(monkeypatch):
    """Gradio's banner suggests ``share=True``; the page never offers it, so it stays quiet."""
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    seen = {}

    class FakeApp:
        cameras_max_bytes = 123

        def launch(self, **options):
            seen.update(options)

    web.serve(FakeApp(), "127.0.0.1", 7861, block=False)
    assert seen["share"] is False and seen["quiet"] is True
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7861
    assert seen["max_file_size"] == 123 and seen["prevent_thread_lock"] is True
