"""The page (web/, served by serve.py), driven in a real headless Chromium through Selenium: the model runs in the
browser, its masks match predict.py's, bad files get a sentence, and no request carries an image; the server
under hostile and many clients."""
import base64
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import serve
from conftest import REAL_DATA, ROOT, start_server
from PIL import Image

from lib import layouts, readers, saving
from lib.photos import output_stem

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium: pip install -r requirements-dev.txt")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not all((serve.RUNTIME / f).is_file() for f in serve.RUNTIME_FILES),
                                reason="ONNX Runtime Web is not installed: make site (npm ci in web/)")


def chromium(downloads, profile=None):
    """Headless Chromium (Debian's chromium and chromium-driver) that logs every request it makes and saves
    downloads to a folder; with a profile folder of its own, what survives a crash."""
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 *([f"--user-data-dir={profile}"] if profile else [])):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    downloads.mkdir(exist_ok=True)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "downloads")
    yield driver
    driver.quit()


def downloaded(folder, name, timeout=60):
    """The path of a file the browser downloads into folder, once it is there and complete."""
    deadline = time.time() + timeout
    while time.time() < deadline and not (folder / name).exists():
        time.sleep(0.1)
    time.sleep(0.5)
    return folder / name


def open_page(driver, address, timeout=60):
    """The page's status line once it is ready (after the one reload a first visit to a host without isolation
    headers makes)."""
    driver.get(address)
    WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    return driver.find_element(By.ID, "status").text


def upload(driver, *paths):
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))


def finished(driver, count, timeout=300):
    """The result cards once `count` of them are done or failed, in the order their photos were given (the page
    shows the most unsure first)."""
    found = WebDriverWait(driver, timeout).until(
        lambda d: len(found := d.find_elements(By.CSS_SELECTOR, ".result.done, .result.failed")) >= count and found)
    return sorted(found, key=lambda card: int(card.get_attribute("data-order")))


def offered_mask(driver, card):
    """The bytes the card's "Download mask" link offers, as a boolean mask: an 8-bit grey PNG of 0 and 255, as
    predict.py writes it."""
    href = card.find_element(By.CSS_SELECTOR, "a.download").get_attribute("href")
    encoded = driver.execute_async_script(
        "const done = arguments[1]; fetch(arguments[0]).then(r => r.blob()).then(b => { const reader = new "
        "FileReader(); reader.onload = () => done(reader.result.split(',')[1]); reader.readAsDataURL(b); })", href)
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as im:
        mask = np.asarray(im)
        assert im.format == "PNG" and im.mode == "L" and set(np.unique(mask)) <= {0, 255}
    return mask > 0


def requests_made(driver):
    """(method, url) of every request the browser sent, from its performance log."""
    events = (json.loads(e["message"])["message"] for e in driver.get_log("performance"))
    return [(e["params"]["request"]["method"], e["params"]["request"]["url"]) for e in events
            if e["method"] == "Network.requestWillBeSent"]


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_the_page_segments_like_predict_in_the_browser_and_sends_no_image(server, browser, synthetic, tmp_path):
    folder = REAL_DATA if REAL_DATA.is_dir() else synthetic[0]  # real ISIC test images where ../shared is here
    pairs = layouts.find_pairs(folder, "test")[:20]
    status = open_page(browser, server[0])
    assert "images never leave this computer" in status and "WebAssembly" in status
    upload(browser, *[image for _, image, _ in pairs])
    cards = finished(browser, len(pairs))
    assert [c.find_element(By.TAG_NAME, "h2").text for c in cards] == [image.name for _, image, _ in pairs]
    subprocess.run([sys.executable, "predict.py", *[str(i) for _, i, _ in pairs], "-o", str(tmp_path / "cli"),
                    "--tta", "--largest-component"], cwd=ROOT, check=True, capture_output=True)
    agreement, page_iou, cli_iou = [], [], []
    for card, (_, image, mask_path) in zip(cards, pairs):
        page = offered_mask(browser, card)
        cli = np.asarray(Image.open(tmp_path / "cli" / f"{output_stem(image.name)}_segmentation.png")) > 0
        truth = np.asarray(Image.open(mask_path)) > 0
        assert page.shape == cli.shape == truth.shape
        agreement.append(iou(page, cli)), page_iou.append(iou(page, truth)), cli_iou.append(iou(cli, truth))
    assert np.mean(agreement) >= 0.99 and abs(np.mean(page_iou) - np.mean(cli_iou)) <= 0.005, agreement
    assert "lesion" in cards[0].find_element(By.CSS_SELECTOR, ".area").text
    browser.find_element(By.ID, "zip").click()
    assert len(zipfile.ZipFile(downloaded(tmp_path / "downloads", "masks.zip")).namelist()) == len(pairs)
    requests = requests_made(browser)
    assert requests and all(method == "GET" and url.startswith((server[0], "blob:", "data:"))
                            for method, url in requests), requests
    received = [line.split('"')[1] for line in server[1].read_text().splitlines() if '"' in line]
    assert received and all(r.startswith("GET ") for r in received), received  # the server saw no upload
    if os.environ.get("PAGE_SCREENSHOT"):  # make page-screenshot: the README's picture
        open_page(browser, server[0])
        upload(browser, *[image for _, image, _ in pairs[3:5]])
        finished(browser, 2)
        browser.save_screenshot(os.environ["PAGE_SCREENSHOT"])


def test_bad_files_get_a_sentence_and_the_page_goes_on(server, browser, synthetic, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("1", (12_000, 9_000)).save(tmp_path / "huge.png")  # 108 megapixels in a small file
    good = sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))[0]
    open_page(browser, server[0])
    upload(browser, tmp_path / "notes.jpg", tmp_path / "empty.png", tmp_path / "huge.png", good)
    cards = finished(browser, 4)
    texts = [c.text for c in cards]
    assert "notes.jpg: not an image this page reads" in texts[0] and "empty.png: the file is empty" in texts[1]
    assert "huge.png: the image is 12000x9000, over 100 megapixels" in texts[2]
    assert "done" in cards[3].get_attribute("class")  # and the page went on
    browser.find_element(By.ID, "threshold").clear()
    browser.find_element(By.ID, "threshold").send_keys("1.5")
    upload(browser, good)
    assert "strictly between 0 and 1" in finished(browser, 5)[4].text


def clinic_folder(folder, n, prefix):
    """A folder of n small random photos (<prefix>00.jpg ...), every second one in its subfolder day2/, and a hidden
    macOS resource fork beside them, which is no photo."""
    rng = np.random.default_rng(n)
    (folder / "day2").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            folder / ("day2" if i % 2 else "") / f"{prefix}{i:02d}.jpg")
    (folder / f"._{prefix}00.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    return folder


def test_a_folder_of_photos_in_subfolders_is_segmented_whole_with_a_progress_line(server, browser, tmp_path):
    """A chosen folder (the folder picker) of 60 photos, in a subfolder too, with a hidden macOS file beside them:
    every photo segmented in turn, no cap on their number, and a progress line that ends saying so."""
    folder = clinic_folder(tmp_path / "clinic", 60, "p")
    open_page(browser, server[0])
    browser.find_element(By.ID, "folder").send_keys(str(folder))
    cards = finished(browser, 60)
    assert len(cards) == 60 and all("done" in c.get_attribute("class") for c in cards)
    assert "clinic/day2/p01.jpg" in {c.find_element(By.TAG_NAME, "h2").text for c in cards}
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "progress").text == "60 photos done")


def test_a_folder_dragged_onto_the_page_is_searched_through_and_segmented(server, browser, tmp_path):
    """A real drag and drop of a folder (Chromium's own drag events, through DevTools), a subfolder and a hidden
    macOS file in it: every photo below it segmented, the hidden file left out."""
    folder = clinic_folder(tmp_path / "dragged", 5, "d")
    open_page(browser, server[0])
    x, y = browser.execute_script("const r = document.getElementById('drop').getBoundingClientRect(); "
                                  "return [r.left + r.width / 2, r.top + r.height / 2];")
    for kind in ("dragEnter", "dragOver", "drop"):
        browser.execute_cdp_cmd("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": {
            "items": [], "files": [str(folder)], "dragOperationsMask": 1}})
    cards = finished(browser, 5)
    assert sorted(c.find_element(By.TAG_NAME, "h2").text for c in cards) == [f"d{i:02d}.jpg" for i in range(5)]
    assert all("done" in c.get_attribute("class") for c in cards)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "progress").text == "5 photos done")


def get(address, path="/", host=None, method="GET"):
    """(status, body) of one request to the server."""
    hostport = address.split("//")[1].rstrip("/")
    connection = http.client.HTTPConnection(hostport, timeout=30)
    connection.request(method, path, headers={"Host": host or hostport}, body=b"x" if method == "POST" else None)
    response = connection.getresponse()
    status, body = response.status, response.read()
    connection.close()
    return status, body


def test_the_server_serves_its_files_and_nothing_else(server):
    address = server[0]
    assert get(address)[0] == 200 and get(address, "/model.onnx")[1] == serve.model_files.ONNX.read_bytes()
    assert json.loads(get(address, "/model.json")[1]) == {
        "image_size": 128, "threshold": 0.5, "edge_move": 0.0, "file": serve.model_files.ONNX.name,
        "sha256": json.loads((serve.model_files.FOLDER / "card.json").read_text())["onnx"]["sha256"]}
    assert get(address, "/../tools/serve.py")[0] == 404 and get(address, "/tools/serve.py")[0] == 404
    assert get(address, host="attacker.example:80")[0] == 403  # a DNS-rebinding page's requests
    assert get(address, method="POST")[0] == 501  # nothing is ever uploaded


def test_stalled_clients_do_not_stop_the_page_from_being_served(server):
    """A bounded load test on 127.0.0.1: 50 clients that connect and send nothing, 20 that load the page and its
    model for 5 s beside them; every good request is answered, and no connection is dropped for a full queue
    (whose client would wait for its retry, 1 to 7 s)."""
    address, dropped = server[0], dropped_connections()
    host, port = address.split("//")[1].rstrip("/").split(":")
    stalled = [socket.create_connection((host, int(port))) for _ in range(50)]
    results, deadline = [], time.time() + 5

    def client():
        while time.time() < deadline:
            try:
                results.append(get(address, "/model.json")[0] == 200 and get(address, "/")[0] == 200)
            except OSError:  # a refused or timed-out request counts as unanswered
                results.append(False)
    threads = [threading.Thread(target=client) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stalled:
        s.close()
    assert len(results) >= 20 and all(results)
    assert dropped_connections() == dropped


def dropped_connections():
    """The kernel's count of connections dropped because a listening socket's queue was full (Linux; else None)."""
    try:
        lines = open("/proc/net/netstat").read().splitlines()
    except OSError:
        return None
    names, values = next((n, v) for n, v in zip(lines[::2], lines[1::2]) if n.startswith("TcpExt:"))
    return dict(zip(names.split(), values.split()))["ListenOverflows"]


def test_the_site_folder_holds_everything_the_page_needs(tmp_path):
    result = subprocess.run([sys.executable, "tools/serve.py", "--write", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(tmp_path / "site")) for p in (tmp_path / "site").rglob("*") if p.is_file())
    assert written == sorted([*serve.PAGE_FILES, *[f"ort/{f}" for f in serve.RUNTIME_FILES], "model.json",
                              "model.onnx"])


def urllib_get(address):
    """The status of GET / at an http://host:port/ address (an IPv6 host in brackets)."""
    host, port = address.split("//")[1].rstrip("/").rsplit(":", 1)
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
    connection.request("GET", "/")
    return connection.getresponse().status


def test_only_localhost_unless_host_is_given_then_a_warning():
    proc = subprocess.run([sys.executable, "tools/serve.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert "default: 127.0.0.1" in proc.stdout
    for host, first in (("127.0.0.2", "serving on http://127.0.0.2:"),  # loopback: this machine only, no warning
                        ("0.0.0.0", "warning: listening on 0.0.0.0: anyone who can reach")):
        proc = subprocess.Popen([sys.executable, "tools/serve.py", "--host", host, "--port", "0"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout.readline().startswith(first)
        finally:
            proc.terminate()
            proc.wait()


def test_an_ipv6_or_foreign_address_and_a_client_gone_mid_download_are_one_line_each(tmp_path):
    """--host ::1 listens (IPv6), an address this machine lacks is named as such (not as a port in use), and a
    client that resets its connection mid-download leaves one line in the log, not a traceback."""
    result = subprocess.run([sys.executable, "tools/serve.py", "--host", "192.0.2.1", "--port", "0"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "give an address of this machine" in result.stderr, result.stderr
    if socket.has_ipv6:
        proc = subprocess.Popen([sys.executable, "tools/serve.py", "--host", "::1", "--port", "0"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            address = proc.stdout.readline().split()[2]
            assert address.startswith("http://[::1]:") and urllib_get(address) == 200
        finally:
            proc.terminate()
            proc.wait()
    proc, address = start_server(tmp_path / "requests.log")
    try:
        port = int(address.rstrip("/").rsplit(":", 1)[1])
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(f"GET /model.onnx HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            client.recv(1000)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
            client.close()
        time.sleep(1)
        assert urllib_get(address) == 200  # still serving
    finally:
        proc.terminate()
        proc.wait()
    log = (tmp_path / "requests.log").read_text()
    assert "Traceback" not in log and "closed the connection before the answer was sent" in log, log


def test_the_pages_edge_move_is_make_predicts_to_the_pixel(server, browser, synthetic):
    from lib.masks import move_edge
    folder = REAL_DATA if REAL_DATA.is_dir() else synthetic[0]
    masks = [np.asarray(Image.open(m)) > 0 for _, _, m in layouts.find_pairs(folder, "test")[:4]]
    cut = np.zeros((30, 40), bool)
    cut[5:25, 0:12] = True  # a lesion cut by the image's edge
    masks += [cut, np.zeros((30, 40), bool), np.ones((30, 40), bool)]  # the last two: no edge to move
    open_page(browser, server[0])
    script = ("const [rows, w, h, share, done] = arguments; import('./segment.js').then(m => "
              "done(Array.from(m.moveEdge(Uint8Array.from(rows), w, h, share))))")
    for mask in masks:
        for share in (0.07, -0.07, 0.16):
            h, w = mask.shape
            page = browser.execute_async_script(script, mask.ravel().astype(int).tolist(), w, h, share)
            assert np.array_equal(np.array(page, bool).reshape(h, w), move_edge(mask, share)), (mask.shape, share)


def test_a_calibrated_models_edge_move_is_applied_on_the_page_as_by_predict(browser, synthetic, tmp_path):
    import torch

    from lib.checkpoints import read_checkpoint, sealed
    from lib.model_files import PT
    checkpoint = read_checkpoint(PT)
    checkpoint["config"]["edge_move"] = 0.07  # as make calibrate stores it for a tighter annotator
    torch.save(sealed(checkpoint), tmp_path / "calibrated.pt")
    assert subprocess.run([sys.executable, "tools/export.py", "--checkpoint", str(tmp_path / "calibrated.pt"), "-o",
                           str(tmp_path / "calibrated.onnx")], cwd=ROOT, capture_output=True).returncode == 0
    folder = REAL_DATA if REAL_DATA.is_dir() else synthetic[0]
    photos = [image for _, image, _ in layouts.find_pairs(folder, "test")[:3]]
    proc, address = start_server(tmp_path / "requests.log", "--model", str(tmp_path / "calibrated.onnx"))
    try:
        assert "edge moves in by 7%" in open_page(browser, address)
        upload(browser, *photos)
        cards = finished(browser, len(photos))
        for model, out in ((tmp_path / "calibrated.onnx", "moved"), (PT, "own")):
            subprocess.run([sys.executable, "predict.py", *map(str, photos), "--checkpoint", str(model), "-o",
                            str(tmp_path / out), "--tta", "--largest-component"], cwd=ROOT, check=True)
        for card, photo in zip(cards, photos):
            page = offered_mask(browser, card)
            moved, own = (np.asarray(Image.open(tmp_path / out / f"{output_stem(photo.name)}_segmentation.png")) > 0
                          for out in ("moved", "own"))
            assert iou(page, moved) >= 0.99 and page.sum() < 0.95 * own.sum()  # moved in, as predict.py moves it
    finally:
        proc.terminate()
        proc.wait()


def test_an_edge_move_chosen_on_the_page_stays_with_its_model(browser, tmp_path):
    """A move kept for the released model is used with it again, and not with another model served later at the
    same address (same browser store): a move belongs to the model it was fitted on."""
    from lib import model_files
    other = tmp_path / "other.onnx"
    other.write_bytes(model_files.with_metadata(model_files.ONNX.read_bytes(), {"threshold": "0.3"}))
    first, port = started("--port", "0")  # a free port, then each model served on it in turn
    first.terminate()
    first.wait()
    for model, said in ((model_files.ONNX, True), (model_files.ONNX, True), (other, False)):
        proc, _ = started("--port", str(port), "--model", str(model))
        try:
            status = open_page(browser, f"http://127.0.0.1:{port}/")
            if not (tmp_path / "kept").exists():  # the first visit keeps a move of 0.1 for the released model
                browser.execute_async_script(
                    "const done = arguments[0]; Promise.all([import('./store.js'), fetch('model.json').then(r => "
                    "r.json())]).then(([s, meta]) => s.saveSetting(`edgeMove ${meta.sha256}`, 0.1)).then(done)")
                (tmp_path / "kept").touch()
                continue
            assert ("edge moves in by 10%" in status) == said, status
        finally:
            proc.terminate()
            proc.wait()


def started(*flags):
    """(process, port) of `python tools/serve.py *flags` once it listens."""
    proc = subprocess.Popen([sys.executable, "tools/serve.py", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    while line.startswith("warning:"):
        line = proc.stdout.readline()
    assert line.startswith("serving on http://"), line
    return proc, int(line.split()[2].rstrip("/").rsplit(":", 1)[1])


def test_a_server_on_every_address_answers_each_of_them_and_no_other_name():
    """--host 0.0.0.0 lets other machines load the page: a real request to another of this machine's addresses
    (127.0.0.2) is answered, a DNS-rebinding page's name is still refused."""
    proc, port = started("--host", "0.0.0.0", "--port", "0")
    try:
        assert get(f"http://127.0.0.2:{port}/")[0] == 200
        assert get(f"http://127.0.0.1:{port}/", host=f"{socket.gethostname()}:{port}")[0] == 200
        assert get(f"http://127.0.0.2:{port}/", host=f"attacker.example:{port}")[0] == 403
    finally:
        proc.terminate()
        proc.wait()


def test_on_port_80_a_host_without_its_port_is_answered():
    """Browsers leave HTTP's default port out of Host: `Host: 127.0.0.1` for a server on port 80."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 80)) == 0 or os.geteuid() != 0:
            pytest.skip("port 80 is in use here, or needs root")
    proc, port = started("--port", "80")
    try:
        assert get("http://127.0.0.1:80/", host="127.0.0.1")[0] == 200
        assert get("http://127.0.0.1:80/", host="127.0.0.1:8000")[0] == 403
    finally:
        proc.terminate()
        proc.wait()


def test_a_client_that_trickles_its_request_is_dropped_at_the_deadline():
    """One header byte every 0.2 s never lets a read time out; the whole request has --timeout seconds."""
    proc, port = started("--port", "0", "--timeout", "2")
    try:
        with socket.create_connection(("127.0.0.1", port)) as slow:
            start, request = time.time(), b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Slow: " % port + b"a" * 100
            try:
                for byte in request:
                    slow.sendall(bytes([byte]))
                    time.sleep(0.2)
                    if time.time() - start > 10:
                        break
                slow.settimeout(5)
                dropped = slow.recv(1) == b""
            except OSError:  # reset by the server
                dropped = True
        assert dropped and time.time() - start < 6
        assert get(f"http://127.0.0.1:{port}/")[0] == 200  # and the server goes on
    finally:
        proc.terminate()
        proc.wait()


def oversized_files(folder):
    """{file: the size its header declares} of small files whose headers declare over 100 megapixels, one per
    format the page decodes: a real PNG, a JPEG whose frame header says 12000x10000, a 34-byte lossless WebP
    (16383x16383) and an extended one (VP8X)."""
    Image.new("1", (12_000, 9_000)).save(folder / "huge.png")
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16)).save(jpeg, "JPEG")
    data = bytearray(jpeg.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 10_000, 12_000)
    (folder / "huge.jpg").write_bytes(data)
    bits = 16382 | 16382 << 14
    (folder / "huge.webp").write_bytes(b"RIFF" + struct.pack("<I", 26) + b"WEBPVP8L" + struct.pack("<I", 14) + b"\x2f"
                                       + struct.pack("<I", bits) + bytes(9))
    (folder / "huge-x.webp").write_bytes(b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10)
                                         + bytes(4) + (19_999).to_bytes(3, "little") + (9_999).to_bytes(3, "little"))
    return {folder / "huge.png": (12_000, 9_000), folder / "huge.jpg": (12_000, 10_000),
            folder / "huge.webp": (16_383, 16_383), folder / "huge-x.webp": (20_000, 10_000)}


def test_one_pixel_limit_in_one_sentence_on_the_page_and_in_predict(server, browser, tmp_path):
    files = oversized_files(tmp_path)
    open_page(browser, server[0])
    start = time.time()
    upload(browser, *files)
    texts = [card.text for card in finished(browser, len(files), timeout=60)]
    assert time.time() - start < 30  # refused from the header, never decoded
    for (path, size), text in zip(files.items(), texts):
        assert f"{path.name}: {readers.too_large(size)}" in text
    result = subprocess.run([sys.executable, "predict.py", *map(str, files), "-o", str(tmp_path / "out")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Warning" not in result.stderr and "Traceback" not in result.stderr
    for path, size in files.items():  # PIL reads no size from a VP8X header without frames: refused all the same
        assert f"{path}: {readers.too_large(size)}" in result.stderr or path.name == "huge-x.webp"
    assert f"{tmp_path / 'huge-x.webp'}: " in result.stderr and not list((tmp_path / "out").glob("*.png"))


def test_the_page_names_masks_by_predicts_rule(server, browser):
    names = ["ISIC_0000053 big.jpg", "photo2.bmp", "photo2.PNG", "x.JPG", "x.jpeg", "a.b.jpg", "a.", ".hidden",
             "..x", "..x.png", "no_extension", "sub/dir/y.webp"]
    open_page(browser, server[0])
    for clash in (False, True):
        stems = browser.execute_async_script(
            "const [names, clash, done] = arguments; import('./segment.js').then(m => "
            "done(names.map(n => m.outputStem(n, clash))))", names, clash)
        assert stems == [output_stem(n, clash) for n in names]
    assert stems[:4] == ["ISIC_0000053 big_jpg", "photo2_bmp", "photo2_png", "x_jpg"]  # clash: with the format
    assert [output_stem(n) for n in names[:4]] == ["ISIC_0000053 big", "photo2", "photo2", "x"]


@pytest.fixture
def static_site(tmp_path):
    """(the address of make site's files served by a plain static server, without the page's server's headers,
    the site folder, a function that stops the server)."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "tools/serve.py", "--write", str(site)], cwd=ROOT, check=True, capture_output=True)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(site))  # noqa: E731
    static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=static.serve_forever, daemon=True).start()

    def stop():  # no answer at that address any more, as with no network
        static.shutdown()
        static.server_close()
    yield f"http://127.0.0.1:{static.server_address[1]}/", site, stop
    stop()


def test_the_page_refuses_a_model_whose_bytes_are_not_model_jsons(static_site, browser):
    """One flipped byte in the served model.onnx: the page says so and segments nothing, where it ran the damaged
    model before. Its sha256 is checked by SubtleCrypto, or by the page's own where the page is no secure context."""
    address, site, _ = static_site
    data = bytearray((site / "model.onnx").read_bytes())
    expected = json.loads((site / "model.json").read_text())["sha256"]
    open_page(browser, address)
    ours = browser.execute_async_script(
        "const done = arguments[0]; import('./formats.js').then(async m => { const bytes = new Uint8Array(await "
        "(await fetch('model.onnx')).arrayBuffer()); Object.defineProperty(globalThis, 'crypto', {value: undefined});"
        " done(await m.sha256(bytes)); })")
    assert ours == expected == hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0x10
    (site / "model.onnx").write_bytes(data)
    browser.get(address)
    WebDriverWait(browser, 60, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: "did not load" in d.find_element(By.ID, "status").text)
    assert "model.onnx is damaged or was changed" in browser.find_element(By.ID, "status").text


def test_the_zip_holds_every_result_with_names_in_utf8(server, browser, tmp_path):
    """Two drops of 30 photos: 60 masks in "Download all masks (zip)", and a name with an umlaut reads back as it
    was written (the zip's UTF-8 flag)."""
    rng = np.random.default_rng(0)
    folders = [tmp_path / "one", tmp_path / "two"]
    for k, folder in enumerate(folders):
        folder.mkdir()
        for i in range(30):
            name = f"Patient Müller {i:02d}.jpg" if k == 0 else f"p{i:02d}.png"
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / name)
    open_page(browser, server[0])
    upload(browser, *sorted(folders[0].iterdir()))
    finished(browser, 30)
    upload(browser, *sorted(folders[1].iterdir()))
    finished(browser, 60)
    browser.find_element(By.ID, "zip").click()
    names = zipfile.ZipFile(downloaded(tmp_path / "downloads", "masks.zip")).namelist()
    assert len(names) == 60 and "Patient Müller 00_segmentation.png" in names and "p29_segmentation.png" in names


def test_the_pages_unsure_score_is_predicts_and_orders_the_queue(server, browser, synthetic, tmp_path):
    """The page's unsure score equals lib/masks.py's on the same probabilities (real and random maps); the results
    stand in the order of predict.py's unsure.csv, the most unsure fifth marked, and the editor steps through them
    in that order, saying how many are left."""
    from lib.masks import unsure
    from lib.segmenter import Segmenter
    folder = REAL_DATA if REAL_DATA.is_dir() else synthetic[0]
    photos = [image for _, image, _ in layouts.find_pairs(folder, "test")[:5]]
    segmenter = Segmenter.load()
    probs = list(segmenter.probabilities(np.stack([readers.read_image(p, 128, draft=False)[0] for p in photos]), True))
    probs += [np.random.default_rng(k).random((128, 128)).astype(np.float32) ** (k + 1) for k in range(3)]
    probs.append(np.zeros((128, 128), np.float32))  # nothing found: the most unsure of all
    open_page(browser, server[0])
    page = browser.execute_async_script(
        "const [maps, done] = arguments; import('./segment.js').then(m => done(maps.map(p => "
        "m.unsure(Float32Array.from(p), 0.5))))", [p.ravel().tolist() for p in probs])
    assert np.allclose(page, [unsure(p, 0.5) for p in probs], rtol=0, atol=1e-9)
    subprocess.run([sys.executable, "predict.py", *map(str, photos), "-o", str(tmp_path / "cli"), "--tta"], cwd=ROOT,
                   check=True, capture_output=True)
    order = [r["mask"].removesuffix("_segmentation.png") for r in saving.read_csv(tmp_path / "cli" / "unsure.csv")]
    upload(browser, *photos)
    cards = finished(browser, len(photos))
    time.sleep(0.5)
    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    assert [c.get_attribute("data-id") for c in cards] == order
    assert ["check-first" in c.get_attribute("class") for c in cards] == [True, False, False, False, False]
    if os.environ.get("PAGE_QUEUE_SCREENSHOT"):  # make page-screenshot: docs/page.md's picture of the queue
        browser.save_screenshot(os.environ["PAGE_QUEUE_SCREENSHOT"])
    cards[0].find_element(By.CSS_SELECTOR, "button.correct").click()
    step = cards[0].find_element(By.CSS_SELECTOR, "button.next-unsure")
    assert step.text == "Next most unsure (4 left)"
    step.click()
    assert not cards[0].find_elements(By.CSS_SELECTOR, ".editor")
    assert cards[1].find_element(By.CSS_SELECTOR, "button.next-unsure").text == "Next most unsure (3 left)"


def test_a_static_host_without_headers_gets_threads_and_the_page_works_offline(static_site, browser, synthetic):
    """make site served by a plain static server that sends no COOP/COEP: after its one reload the page is
    cross-origin isolated with 2 threads; with the server stopped, a reload still loads it and segments a photo."""
    address, _, stop = static_site
    status = open_page(browser, address)
    assert browser.execute_script("return crossOriginIsolated") is True, status
    threads = browser.execute_script("return navigator.hardwareConcurrency")
    assert threads >= 2 and f"WebAssembly, {threads} thread(s)" in status, status
    folder = REAL_DATA if REAL_DATA.is_dir() else synthetic[0]
    photo = layouts.find_pairs(folder, "test")[0][1]
    stop()
    status = open_page(browser, address)
    assert "Model loaded" in status, status
    upload(browser, photo)
    card = finished(browser, 1)[0]
    assert "done" in card.get_attribute("class") and offered_mask(browser, card).any()
