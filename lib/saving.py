"""Run-folder files, results (<name>_metrics.json, <name>_per_image.csv) among them, written atomically (temporary
file, then rename): a crash never leaves half a file, and a full disk leaves the previous version and no
temporary file."""
import csv
import errno
import io
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from lib.errors import StorageError

TMP_PATTERN = ".*.tmp"  # the temporary files atomic_write() leaves when a process is killed mid-write


def atomic_write(path, write):
    """Call write(file_object) on an in-memory buffer, write that to a temporary file next to `path`, then rename
    it over `path`. Raises StorageError, with the size needed and free, when the disk is full."""
    path = Path(path)
    buf = io.BytesIO()
    write(buf)
    data = buf.getbuffer()
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # two writers never share one
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, Ctrl-C: no temporary file stays behind
        tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError) or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        free = shutil.disk_usage(path.parent).free
        raise StorageError(f"no space left to write {path} ({len(data) / 1e6:.1f} MB needed, {free / 1e6:.1f} MB "
                           f"free there: {e.strerror}). Free some space or choose another folder; the previous "
                           "version of the file is intact.") from None


def atomic_save(obj, path):
    import torch  # here: the files of prediction on ONNX Runtime need no torch
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_dead_temporaries(folder):
    """Delete, below `folder`, the temporary files whose writer has died (kill -9, a power cut), and none of a
    writer that still runs (two predict.py may share a folder); returns their names."""
    dead = []
    for tmp in sorted(Path(folder).rglob(TMP_PATTERN)):
        match = re.search(r"\.(\d+)-[0-9a-f]{8}\.tmp$", tmp.name)
        if match and not process_alive(int(match[1])):
            tmp.unlink(missing_ok=True)
            dead.append(tmp.name)
    return dead


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_bytes(path, data):
    atomic_write(path, lambda f: f.write(data))


def write_text(path, text):
    write_bytes(path, text.encode())


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_csv(path, rows):
    """rows: list of dicts with the same keys; floats written with 6 significant digits."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    write_text(path, buf.getvalue())


def read_csv(path):
    """list of dicts, numbers converted to float where they parse."""
    def number(v):
        try:
            return float(v)
        except ValueError:
            return v
    with open(path, newline="") as f:
        return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_results(run_dir, name, summary, per_image, ids):
    """<name>_metrics.json and <name>_per_image.csv in the run folder; returns the JSON file's path."""
    write_json(Path(run_dir) / f"{name}_metrics.json", summary)
    rows = [{"id": i, **{k: v[n].item() for k, v in per_image.items()}} for n, i in enumerate(ids)]
    write_csv(Path(run_dir) / f"{name}_per_image.csv", rows)
    return Path(run_dir) / f"{name}_metrics.json"
