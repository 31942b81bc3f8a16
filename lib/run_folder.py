"""A training run's folder (--out): refused when it holds a run unless --resume or --overwrite says what to do,
locked while the run lasts, its train.log beside the console, the code it ran recorded, and its last.pt read back
for --resume."""
import contextlib
import os
import shutil
import sys
from pathlib import Path

import filelock
import torch

from lib import files
from lib.revision import git
from lib.errors import TrainingError, UsageError

RUN_FILES = ("config.json", "history.csv", "last.pt", "best.pt")
# Everything a run writes in its folder: what --overwrite removes (anything else there stays).
RUN_OUTPUTS = RUN_FILES + ("code.diff", "test_metrics.json", "test_per_image.csv", "test_*_metrics.json", "test_*_per_image.csv",
                           "val_metrics.json", "val_per_image.csv",
                           "curves.png", "panel_epoch*.png", "train.log", files.TMP_PATTERN)


def record_code(out, diff_name="code.diff"):
    """config.json's 'code' (and evaluate.py's results'): the commit this run's code comes from, and whether
    tracked files differed from it. Their diff is written to out/diff_name, so that a run made after an edit shows
    the edit."""
    diff = git("diff", "HEAD")
    if diff:
        files.write_text(out / diff_name, diff)
    else:
        (out / diff_name).unlink(missing_ok=True)  # a resumed run whose edits were committed meanwhile
    return {"commit": git("rev-parse", "HEAD").strip() or "unknown (not a git checkout)", "dirty": bool(diff)}


def check_run_dir(out, resume=False, overwrite=False, announce=True):
    """--out as a Path; refuses, before anything is loaded or written, a folder that holds a run unless --resume
    or --overwrite says what to do with it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if resume:
        if announce and not (out / "last.pt").exists():  # `make best RESUME=1`: seeds not started yet
            print(f"--resume: {out}/last.pt does not exist (no epoch finished there yet); starting the run")
    elif existing and not overwrite:
        raise UsageError(f"{out} already holds a run ({', '.join(existing)}). Add --resume to continue it, "
                         "--overwrite to replace it, or another --out to keep both (make ... RESUME=1 / OVERWRITE=1 "
                         "/ RUN=another-name).")
    return out


@contextlib.contextmanager
def lock_run_dir(out, resume=False, overwrite=False):
    """Hold --out's lock while the run lasts, taken before anything is loaded: a second train.py on the same folder
    is refused at once, and the kernel releases the lock of a process that dies. A folder this call created is
    removed again if the run stops before it wrote anything (bad data, bad weights)."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out / ".lock", timeout=0)  # flock on Unix, msvcrt on Windows
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = (out / ".lock").read_text().strip() or "?"
        raise UsageError(f"another train.py is running in {out} (pid {holder}); wait for it, or choose another "
                         "--out") from None
    try:
        (out / ".lock").write_text(str(os.getpid()))  # for the message above
        check_run_dir(out, resume, overwrite, announce=False)  # again, under the lock: a run that ended meanwhile stays
        yield out
    except BaseException:
        if created and [p.name for p in out.iterdir()] == [".lock"]:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()


@contextlib.contextmanager
def run_log(out, resume=False, overwrite=False):
    """train.log beside the console while the run lasts, each line written through at once (a kill -9 loses
    none). --overwrite first removes what an earlier run wrote (and nothing else); --resume removes the temporary
    files of a run that was killed mid-write."""
    if overwrite and not resume:
        for pattern in RUN_OUTPUTS:
            for path in out.glob(pattern):
                path.unlink()
    with open(out / "train.log", "a", buffering=1) as log, contextlib.redirect_stdout(Tee(sys.stdout, log)):
        stale = files.remove_dead_temporaries(out)  # its lock: no other writer lives
        if stale:
            print(f"removed temporary files of an interrupted write: {', '.join(stale)}")
        yield


class Tee:
    """A text stream that writes to several: the console and the run's train.log."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
            stream.flush()

    def flush(self):
        for stream in self.streams:
            stream.flush()


def read_last_checkpoint(out):
    """last.pt's contents; TrainingError when it is damaged, saying whether best.pt can take its place."""
    try:
        return torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    except Exception:  # truncated or overwritten: torch.load raises many types
        pass
    try:
        epoch = torch.load(out / "best.pt", map_location="cpu", weights_only=True)["epoch"]
        fallback = (f"best.pt (epoch {epoch}) is intact: to resume from it, copy it over last.pt "
                    f"(cp {out}/best.pt {out}/last.pt) and run again with --resume")
    except Exception:
        fallback = "best.pt is missing or damaged too: start the run again with --overwrite"
    raise TrainingError(f"{out}/last.pt is damaged and cannot be resumed; {fallback}")
