"""The page's clinic loop in Debian's Chromium: correcting a mask (brush, eraser, undo) at the image's own size,
corrections kept across a browser killed with kill -9, the edge calibrated in the page by make calibrate's rule,
and the export that make calibrate reads as it is."""
import base64
import json
import os
import subprocess
import time
import zipfile

import numpy as np
import pytest
from conftest import REAL_DATA, ROOT, without_torch
from PIL import Image
from test_page import chromium, downloaded, finished, offered_mask, open_page, upload
from test_page import pytestmark as needs_the_runtime

from lib import annotators, calibration, layouts, readers
from lib.segmenter import Segmenter
from selenium.webdriver.common.by import By  # noqa: E402 (after test_page's importorskip)
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [needs_the_runtime, pytest.mark.skipif(not REAL_DATA.is_dir(),
                                                   reason=f"{REAL_DATA}: real ISIC images, on dev and CI only")]


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "downloads", tmp_path / "profile")
    yield driver
    driver.quit()


def truth(pairs, shift=annotators.tighter):
    return [shift(readers.read_binary_mask(m)) for _, _, m in pairs]


def paste(driver, card, mask):
    """A whole mask put in through the open editor's own editing path (one undoable change, kept as a stroke is)."""
    driver.execute_script("window.lesionPage.edit(arguments[0], Uint8Array.from(atob(arguments[1]), c => "
                          "c.charCodeAt(0)))", card.get_attribute("data-id"),
                          base64.b64encode(mask.astype(np.uint8).tobytes()).decode())


def call(driver, script, *args):
    """The value of an async script that imports a page module as m and calls done(...) with its result."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1], args = arguments; " + script, *args)


def test_the_pages_calibration_rule_is_make_calibrates(server, browser):
    pairs = layouts.find_pairs(REAL_DATA, "test")[20:32]
    masks = truth(pairs[:8]) + truth(pairs[8:], annotators.looser)
    segmenter = Segmenter.load()
    probs = segmenter.probabilities(np.stack([readers.read_image(i, 128, draft=False)[0] for _, i, _ in pairs]), True)
    curves = calibration.edge_curves(probs, masks)
    expected = calibration.calibrate(curves)
    open_page(browser, server[0])
    page = call(browser, "import('./calibrate.js').then(m => { const images = args[0].map(([p, w, h, k]) => ({prob: "
                "Float32Array.from(p), size: 128, w, h, mask: Uint8Array.from(k)})); const curves = "
                "m.edgeCurves(images); done({moves: m.EDGE_MOVES, curves, c: m.calibrateEdge(curves)}); })",
                [[p.ravel().tolist(), m.shape[1], m.shape[0], m.ravel().astype(int).tolist()]
                 for p, m in zip(probs, masks)])
    assert page["moves"] == calibration.EDGE_MOVES.tolist()
    assert np.abs(np.array(page["curves"]) - curves).max() < 2e-3  # PIL's and the page's float resize of the map
    assert page["c"]["edgeMove"] == expected["edge_move"] and page["c"]["bestEdgeMove"] == expected["best_edge_move"]
    assert page["c"]["gain"] == pytest.approx(expected["gain"], abs=1e-4)
    assert page["c"]["standardError"] == pytest.approx(expected["standard_error"], abs=1e-4)


def test_the_pages_edge_rule_decides_as_make_calibrates_on_any_curves(server, browser):
    """calibrate_edge and the page's calibrateEdge on 300 random sets of curves, many near the rule's line."""
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(300):
        n, peak = int(rng.integers(1, 30)), rng.uniform(-0.16, 0.16)
        shape = -np.abs(calibration.EDGE_MOVES - peak) * rng.uniform(0, 0.03)  # one peak, of a random height
        cases.append(0.8 + shape + rng.normal(0, rng.uniform(0.001, 0.05), (n, 1)) + rng.normal(0, 0.002, (n, 33)))
    open_page(browser, server[0])
    page = call(browser, "import('./calibrate.js').then(m => done(args[0].map(c => m.calibrateEdge(c))))",
                [c.tolist() for c in cases])
    expected = [calibration.calibrate(c) for c in cases]
    assert [p["edgeMove"] for p in page] == [e["edge_move"] for e in expected]
    assert [p["bestEdgeMove"] for p in page] == [e["best_edge_move"] for e in expected]
    ratios = np.array([e["gain"] / e["standard_error"] for e in expected if 0 < e["standard_error"] < np.inf])
    assert ((ratios > 0.5) & (ratios <= 1)).sum() >= 20 and ((ratios > 1) & (ratios < 3)).sum() >= 20  # near the line


def stroke_pixels(w, h, points, radius):
    """The pixels whose centre lies within radius of a stroke through points (a dot where it starts, then each
    segment), in editor.js's paintStroke's arithmetic."""
    yy, xx = np.mgrid[:h, :w] + 0.5
    under = np.zeros((h, w), bool)
    for (ax, ay), (bx, by) in [(points[0], points[0]), *zip(points, points[1:])]:
        dx, dy = bx - ax, by - ay
        len2 = dx * dx + dy * dy
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / len2, 0, 1) if len2 else 0
        ex, ey = xx - (ax + t * dx), yy - (ay + t * dy)
        under |= ex * ex + ey * ey <= radius * radius
    return under


def stroke(driver, card, tool, fractions):
    """A scripted pointer stroke (down, moves, up) with the card's editor's tool through whole client pixels at
    these fractions of the editor's canvas; returns (the client points, the canvas's [left, top, width, height])."""
    card.find_element(By.XPATH, f".//div[@class='editor-tools']/button[text()='{tool}']").click()
    canvas = card.find_element(By.CSS_SELECTOR, ".editor-canvas")
    rect = driver.execute_script("arguments[0].scrollIntoView(); const r = arguments[0].getBoundingClientRect(); "
                                 "return [r.left, r.top, r.width, r.height];", canvas)
    points = [(round(rect[0] + fx * rect[2]), round(rect[1] + fy * rect[3])) for fx, fy in fractions]
    driver.execute_script(
        "const [c, points] = arguments, kinds = ['pointerdown', ...points.slice(1).map(() => 'pointermove'), "
        "'pointerup']; kinds.forEach((kind, i) => { const [x, y] = points[Math.min(i, points.length - 1)]; "
        "c.dispatchEvent(new PointerEvent(kind, {clientX: x, clientY: y, pointerId: 1, bubbles: true, "
        "isPrimary: true})); });", canvas, points)
    return points, rect


def test_a_brush_stroke_changes_exactly_the_pixels_under_it_and_undo_restores_the_mask(server, browser, tmp_path):
    _, image, _ = layouts.find_pairs(REAL_DATA, "test")[0]
    Image.open(image).resize((1000, 750)).save(tmp_path / "big.png")  # shown at 768 px: drawn at another scale
    open_page(browser, server[0])
    upload(browser, tmp_path / "big.png")
    card = finished(browser, 1)[0]
    proposal = offered_mask(browser, card)
    card.find_element(By.CSS_SELECTOR, "button.correct").click()
    client, (left, top, width, height) = stroke(browser, card, "Brush", [(0.1, 0.1), (0.15, 0.2), (0.3, 0.25)])
    radius = 20 / 2 * 1000 / width  # the brush's default 20 screen pixels across
    points = [((x - left) * 1000 / width, (y - top) * 750 / height) for x, y in client]
    expected = proposal | stroke_pixels(1000, 750, points, radius)
    WebDriverWait(browser, 30).until(lambda d: card.find_elements(By.CSS_SELECTOR, ".editor-canvas[data-drawn]"))
    if os.environ.get("PAGE_EDITOR_SCREENSHOT"):  # make page-screenshot: docs/page.md's picture of the editor
        browser.save_screenshot(os.environ["PAGE_EDITOR_SCREENSHOT"])
    assert 0 < (expected & ~proposal).sum()
    card.find_element(By.CSS_SELECTOR, "button.accept").click()
    time.sleep(0.5)
    card = browser.find_element(By.CSS_SELECTOR, ".result.accepted")
    assert np.array_equal(offered_mask(browser, card), expected)
    card.find_element(By.CSS_SELECTOR, "button.correct").click()
    stroke(browser, card, "Eraser", [(0.2, 0.2), (0.8, 0.7)])
    card.find_element(By.XPATH, ".//button[text()='Undo']").click()
    card.find_element(By.XPATH, ".//button[text()='Close']").click()
    time.sleep(0.5)
    assert np.array_equal(offered_mask(browser, browser.find_element(By.CSS_SELECTOR, ".result")), expected)


def test_undo_takes_back_the_last_30_steps_and_then_says_none_is_left(server, browser, tmp_path):
    """A 256x256 photo opens enlarged to 768 px with a line on how to draw; 31 changes leave 30 to undo, the button
    counting them down and greyed out once none is left."""
    _, image, _ = layouts.find_pairs(REAL_DATA, "test")[0]
    open_page(browser, server[0])
    upload(browser, image)
    card = finished(browser, 1)[0]
    card.find_element(By.CSS_SELECTOR, "button.correct").click()
    canvas = card.find_element(By.CSS_SELECTOR, "canvas.editor-canvas")
    assert browser.execute_script("return arguments[0].clientWidth", canvas) == 768  # its border aside
    assert "the brush adds to the lesion" in card.find_element(By.CSS_SELECTOR, ".editor-hint").text
    undo = card.find_element(By.XPATH, ".//button[text()='Undo']")
    assert not undo.is_enabled()
    mask = offered_mask(browser, card)
    for k in range(31):
        paste(browser, card, np.roll(mask, k, axis=1))
    assert undo.get_attribute("title").startswith("30 steps to undo")
    for _ in range(30):
        undo.click()
    assert not undo.is_enabled() and undo.get_attribute("title").startswith("0 steps to undo")


def test_corrections_survive_a_browser_killed_with_kill_9_until_cleared(server, tmp_path):
    pairs = layouts.find_pairs(REAL_DATA, "test")[:2]
    driver = chromium(tmp_path / "downloads", tmp_path / "profile")
    try:
        open_page(driver, server[0])
        upload(driver, *[i for _, i, _ in pairs])
        cards = finished(driver, 2)
        corrected = truth(pairs[:1])[0]
        cards[0].find_element(By.CSS_SELECTOR, "button.correct").click()
        paste(driver, cards[0], corrected)
        cards[0].find_element(By.CSS_SELECTOR, "button.accept").click()
        time.sleep(1)
        assert driver.find_element(By.ID, "kept").get_attribute("data-count") == "1"
    finally:
        subprocess.run(["pkill", "-9", "-f", f"user-data-dir={tmp_path / 'profile'}"])  # the real crash
        try:
            driver.quit()
        except Exception:  # its browser is gone
            pass
    driver = chromium(tmp_path / "downloads", tmp_path / "profile")
    try:
        open_page(driver, server[0])
        kept = driver.find_elements(By.CSS_SELECTOR, ".result.done")
        assert len(kept) == 1 and "accepted" in kept[0].get_attribute("class")
        assert np.array_equal(offered_mask(driver, kept[0]), corrected)
        assert "1 corrected image kept in this browser" in driver.find_element(By.ID, "kept").text
        driver.find_element(By.ID, "clear").click()
        driver.switch_to.alert.accept()
        time.sleep(1)
        open_page(driver, server[0])
        assert not driver.find_elements(By.CSS_SELECTOR, ".result")
    finally:
        driver.quit()


def correct_and_accept(driver, photo, mask):
    """Drop one photo on the page in this tab, put `mask` in through its editor and accept it."""
    upload(driver, photo)
    card = finished(driver, len(driver.find_elements(By.CSS_SELECTOR, ".result")))[-1]
    card.find_element(By.CSS_SELECTOR, "button.correct").click()
    paste(driver, card, mask)
    card.find_element(By.CSS_SELECTOR, "button.accept").click()


def kept_count(driver, expected, timeout=30):
    """The page's count of kept corrections, once it reads `expected` (or the timeout)."""
    deadline = time.time() + timeout
    while (count := driver.find_element(By.ID, "kept").get_attribute("data-count")) != str(expected) and \
            time.time() < deadline:
        time.sleep(0.2)
    return count


def test_two_tabs_keep_both_photos_of_one_name_and_see_each_others_changes(server, browser, tmp_path):
    """cam1/IMG_0001.jpg corrected in tab A, cam2/IMG_0001.jpg (another photo) in tab B: a third tab restores both
    (the store keys a photo by its content), A shows B's photo, and B's "Clear" leaves A keeping none."""
    pairs = layouts.find_pairs(REAL_DATA, "test")[:2]
    photos = []
    for (_, image, _), cam in zip(pairs, ("cam1", "cam2")):
        (tmp_path / cam).mkdir()
        photos.append(tmp_path / cam / "IMG_0001.jpg")
        photos[-1].write_bytes(image.read_bytes())
    masks = truth(pairs)
    open_page(browser, server[0])
    tab_a = browser.current_window_handle
    correct_and_accept(browser, photos[0], masks[0])
    assert kept_count(browser, 1) == "1"
    browser.switch_to.new_window("tab")
    open_page(browser, server[0])
    tab_b = browser.current_window_handle
    correct_and_accept(browser, photos[1], masks[1])
    assert kept_count(browser, 2) == "2"
    browser.switch_to.window(tab_a)
    assert kept_count(browser, 2) == "2"  # B's photo, heard from the other tab
    browser.switch_to.new_window("tab")
    open_page(browser, server[0])
    restored = browser.find_elements(By.CSS_SELECTOR, ".result.done")
    assert len(restored) == 2
    assert sorted(offered_mask(browser, c).sum() for c in restored) == sorted(m.sum() for m in masks)
    browser.switch_to.window(tab_b)
    browser.find_element(By.ID, "clear").click()
    browser.switch_to.alert.accept()
    browser.switch_to.window(tab_a)
    assert kept_count(browser, 0) == "0"


def test_twenty_corrections_calibrate_in_the_page_as_make_calibrate_does_on_the_export(server, browser, tmp_path):
    pairs = layouts.find_pairs(REAL_DATA, "test")[40:60]
    masks = truth(pairs)
    open_page(browser, server[0])
    upload(browser, *[i for _, i, _ in pairs])
    for card, mask in zip(finished(browser, len(pairs)), masks):  # each truth pasted through the editing path
        card.find_element(By.CSS_SELECTOR, "button.correct").click()
        paste(browser, card, mask)
        card.find_element(By.CSS_SELECTOR, "button.accept").click()
    time.sleep(1)
    browser.find_element(By.ID, "calibrate").click()
    found = browser.find_element(By.ID, "calibration")
    page_move = float(found.get_attribute("data-edge-move"))
    assert page_move > 0 and "held out" in found.text  # the tighter annotator: in
    browser.find_element(By.ID, "export").click()
    with zipfile.ZipFile(downloaded(tmp_path / "downloads", "labelled.zip")) as z:
        z.extractall(tmp_path / "labelled")
    labels = json.loads((tmp_path / "labelled" / "labels.json").read_text())
    assert labels["model"]["file"] == "lesion_segmenter.onnx" and len(labels["images"]) == 20
    assert len(list((tmp_path / "labelled" / "test" / "masks").iterdir())) == 4  # every fifth held out
    result = subprocess.run(["make", "-s", "-o", ".venv/predict-installed", "calibrate",
                             f"DATA_DIR={tmp_path / 'labelled'}", f"RUNS={tmp_path / 'runs'}"], cwd=ROOT,
                            capture_output=True, text=True, env=without_torch(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "runs" / "calibrate" / "calibrate.json").read_text())
    assert report["edge_move"] == page_move and report["held_out"] == 4
    page_held, ours = json.loads(found.get_attribute("data-held-out")), report["comparisons"][
        f"calibrated (edge {page_move:+g})"]
    assert page_held["change"][0] == pytest.approx(ours["difference"], abs=1e-4)


def test_the_export_keeps_a_jpeg_as_it_came_and_a_webp_as_a_png_of_its_pixels(server, browser, tmp_path):
    pairs = layouts.find_pairs(REAL_DATA, "test")[:2]
    webp = tmp_path / "photo.webp"
    Image.open(pairs[1][1]).save(webp, lossless=True)  # a format make calibrate does not read: its pixels as PNG
    open_page(browser, server[0])
    upload(browser, pairs[0][1], webp)
    masks = truth(pairs)
    for card, mask in zip(finished(browser, 2), masks):
        card.find_element(By.CSS_SELECTOR, "button.correct").click()
        paste(browser, card, mask)
        card.find_element(By.CSS_SELECTOR, "button.accept").click()
    time.sleep(1)
    browser.find_element(By.ID, "export").click()
    with zipfile.ZipFile(downloaded(tmp_path / "downloads", "labelled.zip")) as z:
        z.extractall(tmp_path / "labelled")
    folder = tmp_path / "labelled" / "train"
    assert (folder / "images" / pairs[0][1].name).read_bytes() == pairs[0][1].read_bytes()
    with Image.open(folder / "images" / "photo.png") as im:  # the mask's name, as predict.py names it
        assert im.format == "PNG" and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(webp).convert("RGB")))
    for stem, mask in zip((pairs[0][0], "photo"), masks):  # 8-bit grey 0/255, as predict.py writes masks
        with Image.open(folder / "masks" / f"{stem}_segmentation.png") as im:
            assert im.mode == "L" and set(np.unique(im)) == {0, 255} and np.array_equal(np.asarray(im) > 0, mask)
