"""Run-folder files, written atomically (temporary file, then rename): a crash never leaves half a file."""
import csv
import io
import json
import os
from pathlib import Path

import torch


def atomic_write(path, write):
    """Call write(file_object) on a temporary file next to `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


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
