"""A folder that keeps receiving photos (predict.py --watch): after the first pass, each photo that lands in the
inputs, or changes there, is segmented once it is whole, its outputs written whole, until Ctrl-C or SIGTERM.
Polling with the standard library: a photo still being copied keeps changing its size or time; one whose size has
settled but that does not decode yet is given SETTLE seconds before it is called unreadable, and is tried again
when it changes (the rest of it arrives). predict.py's own outputs are never taken for photos."""
import time
from pathlib import Path

from lib import photos
from lib.errors import UsageError

POLL = 0.1  # seconds between two looks at the watched folders' times: most of a new photo's wait
RESCAN = 2.0  # seconds between two looks at every photo while no folder changes: a photo replaced in place
SETTLE = 2.0  # seconds a photo may keep its size without decoding whole before it is reported unreadable


def watch(inputs, out, handled, size, segment_and_write):
    """Segment every new or changed photo of `inputs` (files, folders, patterns) into `out` until Ctrl-C; handled:
    {photo: its output prefix, None where it got none} of the first pass, size: the model's input size,
    segment_and_write(photo, model input, output prefix): one photo's outputs. Returns how many were written."""
    seen = {p: looks(p) for p in handled}  # what each photo looked like when it was last tried
    named = {p: name for p, name in handled.items() if name is not None}
    waiting, written, folders, last = {}, 0, {}, 0.0
    try:
        while True:
            time.sleep(POLL)
            if not waiting and time.monotonic() - last < RESCAN and folder_times(folders) == folders:
                continue  # nothing landed (a new file changes its folder's time), nothing being copied
            new, folders, last = *arrivals(inputs, out, seen, named), time.monotonic()
            for path, folder in new.items():
                seconds = settled(path, waiting)
                if seconds is None:
                    continue  # still being copied
                photo, small_or_why = photos.decode(path, size)
                if photo is None and seconds < SETTLE:
                    continue  # its size has settled, its bytes have not yet
                seen[path] = looks(path)  # tried again once it changes
                waiting.pop(path)
                name = named.get(path) or free_name(path, folder, out, named)
                if name is None or photo is None:
                    print(f"{path}: " + (small_or_why if photo is None else
                                         f"{photos.output_stem(path.name)}_segmentation.png and "
                                         f"{photos.output_stem(path.name, True)}_segmentation.png are other "
                                         "photos'; rename it"), flush=True)
                    continue
                segment_and_write(photo, small_or_why, name)
                named[path] = name
                written += 1
                print(f"{path} -> {name}_segmentation.png", flush=True)
    except KeyboardInterrupt:  # between two files, or in one: its outputs are whole or absent (saving.atomic_write)
        return written


def free_name(path, folder, out, named):
    """A new photo's output prefix: its stem's, or when another photo has that, its stem's with its format (as
    photos.output_names names a clash); None when both are taken."""
    taken = set(named.values())
    return next((name for name in (photos.output_name(path, folder, out, clash) for clash in (False, True))
                 if name not in taken), None)


def arrivals(inputs, out, seen, named):
    """({photo: its output subfolder} of the inputs' photos that are new or changed since `seen` (a replaced photo
    gets a new mask) and are not outputs: neither of photos.outputs() nor named after a photo in `named`; the
    modification times of the folders looked in)."""
    folders = folder_times({Path(i): None for i in inputs if Path(i).is_dir()})
    try:
        found = photos.expand_inputs(inputs)
    except UsageError:  # a watched folder with nothing in it (yet, or for a moment)
        return {}, folders
    folders.update(folder_times({p.parent: None for p in found}))
    written = {f"{name}{kind}" for name in named.values() for kind in photos.OUTPUTS}
    outputs = photos.outputs(found, out, inputs)
    return {p: f for p, f in found.items()
            if p not in outputs and str(p) not in written and seen.get(p, ()) != looks(p)}, folders


def folder_times(folders):
    """{folder: its modification time (None when gone)} of the folders named: a file added, removed or renamed in
    a folder changes it."""
    def mtime(folder):
        try:
            return folder.stat().st_mtime_ns
        except OSError:
            return None
    return {folder: mtime(folder) for folder in folders}


def looks(path):
    """What tells a file's content changed: size, modification and status-change times, inode (a copy over it, or
    one moved in with an old modification time); None when it is gone."""
    try:
        s = path.stat()
    except OSError:
        return None
    return s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino


def settled(path, waiting):
    """Seconds since the file's size and modification time last changed, None when they changed since the last
    look (or it is gone); `waiting` keeps what each file looked like."""
    try:
        status = path.stat()
    except OSError:
        waiting.pop(path, None)
        return None
    now, looks_now = time.monotonic(), (status.st_size, status.st_mtime_ns)
    if path not in waiting or waiting[path][0] != looks_now:
        waiting[path] = (looks_now, now)
        return None
    return now - waiting[path][1] if status.st_size else None
