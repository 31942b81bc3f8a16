"""The page (serve.py), driven in a real headless Chromium through Selenium, and its server under bad input and two
clients at once."""
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile

import pytest
from PIL import Image

import layouts
import predict
import serve
from conftest import REAL_DATA, ROOT

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium: pip install -r requirements-dev.txt")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def server():
    """The page's address, served by `python serve.py --port 0` with the released model."""
    proc = subprocess.Popen([sys.executable, "serve.py", "--port", "0", "--device", "cpu"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("serving on http://127.0.0.1:"), line
    yield line.split()[2]
    proc.terminate()
    proc.wait()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's chromium and chromium-driver), downloads going to tmp_path / 'downloads'."""
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    (tmp_path / "downloads").mkdir()
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow",
                                                        "downloadPath": str(tmp_path / "downloads")})
    yield driver
    driver.quit()


def upload(driver, *paths):
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))


def wait_for(driver, css, count=1, timeout=120):
    return WebDriverWait(driver, timeout).until(
        lambda d: (found := d.find_elements(By.CSS_SELECTOR, css)) and len(found) >= count and found)


def downloaded(folder, name, timeout=30):
    path, deadline = folder / name, time.time() + timeout
    while time.time() < deadline and not (path.exists() and not list(folder.glob("*.crdownload"))):
        time.sleep(0.1)
    return path.read_bytes()


def test_the_page_segments_like_predict_says_what_is_wrong_and_keeps_serving(server, browser, synthetic, tmp_path):
    folder = REAL_DATA if REAL_DATA.is_dir() else synthetic[0]  # an ISIC 2016 test image where ../shared is here
    image = sorted((folder / layouts.SPLITS["test"][0]).glob("*.jpg"))[0]
    browser.get(server)
    upload(browser, image)
    wait_for(browser, ".result.done")[0].find_element(By.CSS_SELECTOR, "a.download").click()
    mask = downloaded(tmp_path / "downloads", f"{image.stem}_segmentation.png")
    predict.main([str(image), "--out", str(tmp_path / "cli"), "--tta", "--largest-component", "--device", "cpu"])
    assert mask == (tmp_path / "cli" / f"{image.stem}_segmentation.png").read_bytes()  # bit for bit
    with Image.open(image) as im:
        assert f"{im.width}x{im.height} px; lesion " in browser.find_element(By.CSS_SELECTOR, ".area").text

    (tmp_path / "notes.jpg").write_text("not an image at all")
    upload(browser, tmp_path / "notes.jpg")
    failed = wait_for(browser, ".result.failed")[0]
    assert "notes.jpg: not an image this page reads" in failed.text
    upload(browser, image)  # the server goes on serving
    assert len(wait_for(browser, ".result.done", count=2)) == 2

    many = [tmp_path / f"copy{i}.jpg" for i in range(serve.MAX_FILES + 1)]
    for path in many:
        shutil.copy(image, path)
    upload(browser, *many)
    assert "at most 50 at once" in wait_for(browser, "#message:not(:empty)")[0].text
    browser.save_screenshot(str(tmp_path / "page.png"))
    if os.environ.get("PAGE_SCREENSHOT"):  # make page-screenshot: the README's picture
        browser.get(server)
        upload(browser, *sorted((folder / layouts.SPLITS["test"][0]).glob("*.jpg"))[3:5])
        wait_for(browser, ".result.done", count=2)
        browser.save_screenshot(os.environ["PAGE_SCREENSHOT"])


def post(server, path, body, timeout=120):
    """(status, JSON answer or bytes) of a POST to the server."""
    try:
        with urllib.request.urlopen(urllib.request.Request(server + path, data=body, method="POST"),
                                    timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    return status, json.loads(raw) if raw[:1] == b"{" else raw


def test_two_clients_at_once_each_get_their_own_answer(server, synthetic):
    images = sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))[:2]
    alone = [post(server, "/segment", p.read_bytes())[1]["mask"] for p in images]
    together = [None, None]

    def client(i):
        together[i] = [post(server, "/segment", images[i].read_bytes())[1]["mask"] for _ in range(3)]
    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert alone[0] != alone[1] and together == [[alone[0]] * 3, [alone[1]] * 3]


def test_bad_uploads_get_a_message_and_the_server_goes_on(server, synthetic, tmp_path):
    jpeg = sorted((synthetic[0] / layouts.SPLITS["test"][0]).glob("*.jpg"))[0].read_bytes()
    Image.new("1", (12_000, 9_000)).save(tmp_path / "huge.png")  # 108 megapixels in a small file
    cases = {b"": "the file is empty", jpeg[:len(jpeg) // 2]: "damaged or cut short",
             b"GIF89a not really": "not an image", (tmp_path / "huge.png").read_bytes(): "over 100 megapixels"}
    for body, message in cases.items():
        status, answer = post(server, "/segment", body)
        assert status == 400 and message in answer["error"], message
    assert post(server, "/segment?threshold=2", jpeg)[0] == 400
    status, answer = post(server, "/zip", json.dumps({"files": [{"name": "a", "mask": ""}] * 51}).encode())
    assert status == 400 and "1 to 50 masks" in answer["error"]
    status, answer = post(server, "/segment", jpeg)
    assert status == 200 and answer["area"] > 0  # still serving


def test_the_zip_holds_every_mask_under_a_safe_name(server, synthetic):
    mask = base64.b64encode(b"png bytes").decode()
    status, raw = post(server, "/zip", json.dumps({"files": [
        {"name": "../../etc/passwd.jpg", "mask": mask}, {"name": "a.jpg", "mask": mask},
        {"name": "a.png", "mask": mask}]}).encode())
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    assert status == 200 and names == ["passwd_segmentation.png", "a_segmentation.png", "a_2_segmentation.png"]


def test_only_localhost_unless_host_is_given_then_a_warning():
    proc = subprocess.run([sys.executable, "serve.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert "default: 127.0.0.1" in proc.stdout
    proc = subprocess.Popen([sys.executable, "serve.py", "--host", "127.0.0.2", "--port", "0", "--device", "cpu"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("warning: listening on 127.0.0.2: anyone who can reach")
    finally:
        proc.terminate()
        proc.wait()
