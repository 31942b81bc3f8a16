"""A training run's folder (--out): refused when it holds a run unless --resume or --overwrite says what to do,
locked while the run lasts, its train.log beside the console, the code it ran recorded, its checkpoints written
(best.pt, last.pt) and read back for --resume with the flags the run was started with, and a run stopped by
Ctrl-C, SIGTERM or a failing loss ended with a sentence on what was kept."""
import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
from pathlib import Path

import filelock
import torch

from lib import saving
from lib.cli import interrupt
from lib.checkpoints import seal
from lib.errors import Interrupted, TrainingError, UsageError
from lib.plots import plot_curves, save_panel
from lib.revision import git
from lib.scoring import predict_logits

DIVERGED = 100  # a training loss this many times the run's first stops the run
RUN_FILES = ("config.json", "history.csv", "last.pt", "best.pt")
# Everything a run writes in its folder: what --overwrite removes (anything else there stays).
RUN_OUTPUTS = RUN_FILES + ("code.diff", "test_metrics.json", "test_per_image.csv", "test_*_metrics.json",
                           "test_*_per_image.csv", "val_metrics.json", "val_per_image.csv", "curves.png",
                           "panel_epoch*.png", "train.log", saving.TMP_PATTERN)


def record_code(out, diff_name="code.diff"):
    """config.json's 'code' (and evaluate.py's results'): the commit this run's code comes from, and whether
    tracked files differed from it. Their diff is written to out/diff_name, so that a run made after an edit shows
    the edit."""
    diff = git("diff", "HEAD")
    if diff:
        saving.write_text(out / diff_name, diff)
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
        stale = saving.remove_dead_temporaries(out)  # its lock: no other writer lives
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


def saved_flags(path):
    """The flags of a run's config.json (--config); UsageError for a missing file, broken JSON or other JSON."""
    try:
        saved = saving.read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--config {path} cannot be read as JSON ({e}); give a run's config.json") from None
    if not isinstance(saved, dict):
        raise UsageError(f"--config {path} holds a JSON {type(saved).__name__}, not a run's flags; give a run's "
                         "config.json (an object of flag names and values)")
    return saved


def resumed_config(args, given, out, resumable):
    """(flags, last.pt's contents or None): a resumed run keeps its own configuration, except the `resumable` flags
    given anew (e.g. more --epochs, another --device) and --out, where the run is now."""
    if not (args.resume and (out / "last.pt").exists()):
        return args, None
    last = read_last_checkpoint(out)
    changed = {k: getattr(args, k) for k in resumable if k in given}
    config = {**vars(args), **last["config"], **changed, "out": str(out), "resume": True, "overwrite": False}
    return argparse.Namespace(**config), last


def restore(last, out, trainer):
    """(history, best validation IoU) of a resumed run, its state loaded from last.pt; ([], -1) for a new run."""
    if last is None:
        return [], -1.0
    t = trainer
    t.model.load_state_dict(last.get("trained_model", last["model"]))
    if t.ema is not None:
        t.ema.load_state_dict(last["model"])
    t.optimizer.load_state_dict(last["optimizer"])
    t.scheduler.load_state_dict(last["scheduler"])
    t.scaler.load_state_dict(last["scaler"])
    t.start_loss = last["history"][0]["train_loss"]
    print(f"resuming {out} after epoch {last['epoch']}")
    return last["history"], last["best_iou"]


def save_checkpoints(out, trainer, history, best_iou, config, is_best):
    """best.pt (when this epoch is the best) before last.pt: a kill between the two leaves a last.pt from which
    --resume trains this epoch again and rewrites both."""
    t = trainer
    state = {"model": (t.model if t.ema is None else t.ema).state_dict(), "optimizer": t.optimizer.state_dict(),
             "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(), "epoch": history[-1]["epoch"],
             "history": history, "best_iou": best_iou, "config": config}
    state["seal"] = seal(state["model"], config)
    if t.ema is not None:
        state["trained_model"] = t.model.state_dict()  # what --resume trains on from
    if is_best:
        saving.atomic_save(state, out / "best.pt")
    saving.atomic_save(state, out / "last.pt")


@contextlib.contextmanager
def stop_cleanly(out, history, device, args):
    """Turn Ctrl-C and SIGTERM into Interrupted, a loss that is not finite or diverged and running out of GPU
    memory into TrainingError, each saying what was kept and what to do."""
    previous = signal.signal(signal.SIGTERM, interrupt)  # also where train.main() runs without cli.run

    def kept():
        done = history[-1]["epoch"] if history else 0
        return done, f"{out}/last.pt holds epoch {done}" if done else "no epoch had finished, so none was saved"
    try:
        yield
    except KeyboardInterrupt:
        done, saved = kept()
        raise Interrupted(f"interrupted during epoch {done + 1}; {saved}. Resume with: python train.py --out {out} "
                          "--resume (or: make <experiment> RESUME=1)") from None
    except TrainingError as e:  # from checked_losses
        raise TrainingError(f"{e}; {kept()[1]}. Try a lower --lr (now {args.lr}) or --no-amp.") from None
    except torch.OutOfMemoryError:
        raise TrainingError(f"out of {device.type} memory at batch size {args.batch_size}. Try a smaller "
                            f"--batch-size (e.g. {max(1, args.batch_size // 2)}) or a smaller --image-size.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_epoch(out, args, history, is_best, panel, device, amp):
    """history.csv, curves.png, prediction panels every few epochs, and one line on the console."""
    record, epoch = history[-1], history[-1]["epoch"]
    saving.write_csv(out / "history.csv", history)
    plot_curves(history, out / "curves.png", out.name)
    if epoch % (args.viz_every or max(1, args.epochs // 4)) == 0 or epoch == args.epochs:
        forward, inputs, images, masks, kind = panel
        logits = predict_logits(forward, inputs, 64, device, amp)
        save_panel(images.cpu(), masks.cpu(), logits, out / f"panel_epoch{epoch:03d}.png",
                   f"{out.name}, epoch {epoch}: {kind} images")
    held_out = not math.isnan(record["val_iou"])
    scores = (f"val loss {record['val_loss']:.4f}  val IoU {record['val_iou']:.4f}  val Dice "
              f"{record['val_dice']:.4f}  " if held_out else "no validation split  ")
    seconds = record["seconds"]
    print(f"epoch {epoch:3d}/{args.epochs}  train loss {record['train_loss']:.4f}  {scores}{seconds:.0f}s "
          f"(data {100 * record['data_seconds'] / seconds:.1f}%){'  *best' if is_best and held_out else ''}",
          flush=True)


def checked_losses(losses, epoch, first_step, trainer):
    """The losses (0-dim tensors) as floats; raises TrainingError at the first that is not finite or has grown to
    DIVERGED times the run's first (a run that diverges but stays finite would otherwise train to the end)."""
    values = torch.stack(losses).tolist()
    trainer.start_loss = values[0] if trainer.start_loss is None else trainer.start_loss
    for step, value in enumerate(values, first_step + 1):
        if not math.isfinite(value):
            raise TrainingError(f"the loss is {value} at epoch {epoch + 1}, step {step}")
        if value > DIVERGED * trainer.start_loss:
            raise TrainingError(f"the loss diverged: {value:.3g} at epoch {epoch + 1}, step {step}, over {DIVERGED}x "
                                f"the {trainer.start_loss:.3g} it started at")
    return values
