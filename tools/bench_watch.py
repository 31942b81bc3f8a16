"""Measure what predict.py --watch costs while nothing arrives: the CPU seconds its watcher spends over --seconds
on a folder of --photos photos, each with its mask beside it (the state after a first pass), and how soon it then
sees a photo copied in (make bench-watch; docs/speed.md).

    python tools/bench_watch.py --photos 806 --seconds 10
"""
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from lib import cli, photos, watching


def bench_watch(args):
    """(CPU seconds of the watcher over args.seconds of nothing arriving, seconds from a photo copied in to its
    segment_and_write call)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder, seen = Path(tmp), {}
        tiny = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
        for i in range(args.photos):
            tiny.save(folder / f"p{i:04d}.jpg")
            tiny.convert("L").save(folder / f"p{i:04d}_segmentation.png")
        handled = {p: photos.output_name(p, f, folder) for p, f in photos.expand_inputs([str(folder)]).items()
                   if p.suffix == ".jpg"}
        landed = {}

        def arrive():
            time.sleep(args.seconds)
            landed["cpu"] = time.process_time() - started
            landed["at"] = time.monotonic()
            tiny.save(folder / "new.jpg")

        def segment_and_write(photo, small, name):
            seen["after"] = time.monotonic() - landed["at"]
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=arrive, daemon=True).start()
        started = time.process_time()
        watching.watch([str(folder)], folder, handled, 8, segment_and_write)
    return landed["cpu"], seen["after"]


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--photos", type=int, default=806, help="photos in the watched folder, each with its mask")
    parser.add_argument("--seconds", type=float, default=10, help="how long nothing arrives")
    args = parser.parse_args(argv)
    cpu, after = bench_watch(args)
    print(f"--watch on {args.photos} photos and their masks: {cpu:.2f} CPU seconds over {args.seconds:g} s idle; "
          f"a photo copied in then reached the model {after:.2f} s later")


if __name__ == "__main__":
    cli.run(main)
