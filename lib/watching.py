"""A folder that keeps receiving photos (predict.py --watch): after the first pass, each photo that lands in the
inputs is segmented once it is whole, its outputs written whole, until Ctrl-C. Polling with the standard library:
a photo still being copied keeps changing its size or time, and one whose size has settled but that does not decode
yet is given SETTLE seconds before it is called unreadable. predict.py's own outputs are never taken for photos."""
import time

from lib import photos
from lib.errors import UsageError

POLL = 0.1  # seconds between two looks at the watched inputs: most of a new photo's wait
SETTLE = 2.0  # seconds a photo may keep its size without decoding whole before it is reported unreadable


def watch(inputs, out, done, size, segment_and_write):
    """Segment every new photo of `inputs` (files, folders, patterns) into `out` until Ctrl-C; `done`: the photos
    handled already, size: the model's input size, segment_and_write(photo, model input, output name): one
    photo's outputs. Returns how many were written."""
    waiting, names, written = {}, {photos.output_name(p, f, out) for p, f in done.items()}, 0
    try:
        while True:
            for path, folder in arrivals(inputs, out, done).items():
                seconds = settled(path, waiting)
                if seconds is None:
                    continue  # still being copied
                photo, small_or_why = photos.decode(path, size)
                if photo is None and seconds < SETTLE:
                    continue  # its size has settled, its bytes have not yet
                done[path], name = folder, photos.output_name(path, folder, out)
                if name in names or photo is None:
                    print(f"{path}: " + (small_or_why if photo is None else
                                         f"{name.name}_segmentation.png is another photo's; rename it"), flush=True)
                    continue
                segment_and_write(photo, small_or_why, name)
                names.add(name)
                written += 1
                print(f"{path} -> {name}_segmentation.png", flush=True)
            time.sleep(POLL)
    except KeyboardInterrupt:  # between two files, or in one: its outputs are whole or absent (files.atomic_write)
        return written


def arrivals(inputs, out, done):
    """{photo: its output subfolder} of the inputs' photos that are not in `done` and are not outputs."""
    try:
        found = photos.expand_inputs(inputs)
    except UsageError:  # a watched folder with nothing in it (yet, or for a moment)
        return {}
    return {p: f for p, f in found.items() if p not in done and not photos.is_output(p, out, inputs)}


def settled(path, waiting):
    """Seconds since the file's size and modification time last changed, None when they changed since the last
    look (or it is gone); `waiting` keeps what each file looked like."""
    try:
        status = path.stat()
    except OSError:
        waiting.pop(path, None)
        return None
    now, looks = time.monotonic(), (status.st_size, status.st_mtime_ns)
    if path not in waiting or waiting[path][0] != looks:
        waiting[path] = (looks, now)
        return None
    return now - waiting[path][1] if status.st_size else None

