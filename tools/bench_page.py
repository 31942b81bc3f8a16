"""Measure the page (tools/serve.py) in Debian's headless Chromium: from opening it to the model loaded, and one
photo of 1024x768 with flip TTA and the pictures drawn (make bench-predict); with --folder, a folder of that many
photos chosen at once: the time to the last, the tab's peak memory and the main thread's longest task (make
bench-folder). Needs selenium (requirements-dev.txt), chromium and chromium-driver.

    python tools/bench_page.py
    python tools/bench_page.py --model model.onnx
    python tools/bench_page.py --folder 500
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from project_root import ROOT  # first: lib/ and the top-level modules import from the project's root

from lib import cli
from lib.timing import write_photo


# Every task of the page's main thread over 50 ms (the Long Tasks API), gathered from before the photos are chosen
LONG_TASKS = ("window.longTasks = []; new PerformanceObserver(list => list.getEntries().forEach("
              "e => window.longTasks.push(e.duration))).observe({type: 'longtask', buffered: true});")


def open_page(model):
    """(server, driver, the page's address) with the page open and its model loaded."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    server = subprocess.Popen([sys.executable, "tools/serve.py", "--port", "0", *(["--model", model] if model
                              else [])], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    address = server.stdout.readline().split()[2]  # "serving on http://127.0.0.1:PORT/ ..."
    driver.get(address)
    WebDriverWait(driver, 120).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    return server, driver, address


def close(server, driver):
    driver.quit()
    server.terminate()
    server.wait()


def bench_page(args, photos=5):
    """The page (serve.py) in Debian's headless Chromium, the model running in the browser (WebAssembly): seconds
    from opening the page to the model loaded, and per 1024x768 photo with flip TTA and the pictures drawn (the
    page's own timing of each photo; median of `photos`, after one that warms up)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    start = time.perf_counter()
    server, driver, _ = open_page(args.model)
    loaded = time.perf_counter() - start
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = [Path(tmp) / f"photo{i}.jpg" for i in range(photos + 1)]
            for i, path in enumerate(paths):
                write_photo(path, np.random.default_rng(i))
            driver.find_element(By.ID, "files").send_keys("\n".join(map(str, paths)))
            WebDriverWait(driver, 600).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result.done")) == len(paths))
        seconds = [float(c.get_attribute("data-seconds")) for c in driver.find_elements(By.CSS_SELECTOR, ".result")]
    finally:
        close(server, driver)
    print(f"{'the page in Chromium: open to model loaded':<52} {loaded:8.2f} s (server start included)")
    print(f"{'the page: one photo of 1024x768, TTA, pictures drawn':<52} {float(np.median(seconds[1:])):8.2f} s per "
          "image")


def chromium_memory():
    """{"tab": proportional set size of Chromium's renderer processes (the page, its WebAssembly threads), "all":
    of every Chromium process}, in bytes, from /proc."""
    sizes = {"tab": 0, "all": 0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read()
            if b"chromium" not in command.split(b"\0")[0]:
                continue
            pss = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{pid}/smaps_rollup")
                       if line.startswith("Pss:"))
        except (OSError, StopIteration):  # ended meanwhile
            continue
        sizes["all"] += pss
        sizes["tab"] += pss if b"--type=renderer" in command else 0
    return sizes


def bench_folder(args):
    """A folder of args.folder photos of 1024x768 chosen at once (the folder picker): seconds to the last one done,
    the peak memory of the tab and of all of Chromium (polled every 0.2 s), and the main thread's long tasks."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clinic"
        folder.mkdir()
        for i in range(args.folder):
            write_photo(folder / f"p{i:04d}.jpg", np.random.default_rng(i))
        server, driver, _ = open_page(args.model)
        peak, done = {"tab": 0, "all": 0}, threading.Event()

        def poll():
            while not done.wait(0.2):
                peak.update({k: max(peak[k], v) for k, v in chromium_memory().items()})
        threading.Thread(target=poll, daemon=True).start()
        try:
            driver.execute_script(LONG_TASKS)
            start = time.perf_counter()
            driver.find_element(By.ID, "folder").send_keys(str(folder))
            WebDriverWait(driver, 7200, poll_frequency=1).until(
                lambda d: d.find_element(By.ID, "progress").text == f"{args.folder} photos done")
            seconds = time.perf_counter() - start
            tasks = driver.execute_script("return window.longTasks")
        finally:
            done.set()
            close(server, driver)
    print(f"{args.folder} photos of 1024x768 as one folder: {seconds:.0f} s ({args.folder / seconds:.2f} photos/s); "
          f"peak memory: the tab {peak['tab'] / 2 ** 30:.2f} GiB, all of Chromium {peak['all'] / 2 ** 30:.2f} GiB; "
          f"main-thread tasks over 50 ms: {len(tasks)}, over 200 ms: {sum(t > 200 for t in tasks)}, longest "
          f"{max(tasks, default=0):.0f} ms")


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("--model", help="the .onnx model the page runs (default: the released model)")
    parser.add_argument("--photos", type=int, default=5, help="photos timed, after one that warms up")
    parser.add_argument("--folder", type=int, help="instead: a folder of this many photos chosen at once")
    args = parser.parse_args()
    bench_folder(args) if args.folder else bench_page(args, args.photos)


if __name__ == "__main__":
    cli.run(main)
