"""Measure the page (tools/serve.py) in Debian's headless Chromium: from opening it to the model loaded, and one
photo of 1024x768 with flip TTA and the pictures drawn (make bench-predict). Needs selenium (requirements-dev.txt),
chromium and chromium-driver.

    python tools/bench_page.py
    python tools/bench_page.py --model model.onnx
"""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from project_root import ROOT  # first: lib/ and the top-level modules import from the project's root

from lib import cli
from lib.timing import write_photo


def bench_page(args, photos=5):
    """The page (serve.py) in Debian's headless Chromium, the model running in the browser (WebAssembly): seconds
    from opening the page to the model loaded, and per 1024x768 photo with flip TTA and the pictures drawn (the
    page's own timing of each photo; median of `photos`, after one that warms up). Needs selenium
    (requirements-dev.txt), chromium and chromium-driver."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    server = subprocess.Popen([sys.executable, "tools/serve.py", "--port", "0", *(["--model", args.model] if args.model
                              else [])], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        address = server.stdout.readline().split()[2]  # "serving on http://127.0.0.1:PORT/ ..."
        start = time.perf_counter()
        driver.get(address)
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        loaded = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            paths = [Path(tmp) / f"photo{i}.jpg" for i in range(photos + 1)]
            for i, path in enumerate(paths):
                write_photo(path, np.random.default_rng(i))
            driver.find_element(By.ID, "files").send_keys("\n".join(map(str, paths)))
            WebDriverWait(driver, 600).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result.done")) == len(paths))
        seconds = [float(c.get_attribute("data-seconds")) for c in driver.find_elements(By.CSS_SELECTOR, ".result")]
    finally:
        driver.quit()
        server.terminate()
        server.wait()
    print(f"{'the page in Chromium: open to model loaded':<52} {loaded:8.2f} s")
    print(f"{'the page: one photo of 1024x768, TTA, pictures drawn':<52} {float(np.median(seconds[1:])):8.2f} s per "
          "image")


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("--model", help="the .onnx model the page runs (default: the released model)")
    parser.add_argument("--photos", type=int, default=5, help="photos timed, after one that warms up")
    args = parser.parse_args()
    bench_page(args, args.photos)


if __name__ == "__main__":
    cli.run(main)
