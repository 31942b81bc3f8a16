"""Which code wrote a file: the git commit of this checkout, marked when tracked files differ from it. Torch-free:
model cards written on the light install (make calibrate) name it too."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(*words, cwd=ROOT):
    """What git prints for these words in this repository ('' outside a git checkout, or without git); bytes that
    are not UTF-8 (a file in another encoding) replaced, never fatal."""
    try:
        return subprocess.run(["git", *words], capture_output=True, text=True, errors="replace", cwd=cwd).stdout
    except OSError:
        return ""


def code_revision():
    """The commit the running code comes from, with '+changes' when tracked files differ from it."""
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + ("+changes" if git("diff", "HEAD", "--stat").strip() else "")
