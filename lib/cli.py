"""What every script shares on the command line: help that gives each flag's default, the flags every script
means alike, and the entry point that turns the project's errors into one line and an exit code."""
import argparse
import os
import signal
import sys

from lib.errors import USER_ERRORS, Interrupted
from lib.masks import checked_threshold


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and "(default: ...)" after every flag's help that does not name its
    default itself (flags that are off, or unset, have none to give)."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == []
        if "default" in text or unset or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


DEVICES = ["auto", "cpu", "cuda", "mps"]


# The flags every script shares, one help text each. `target` is a parser, an argument group, or a function that
# adds a flag (train.py's a()).
def adder(target):
    return getattr(target, "add_argument", target)


def add_device_flag(target):
    adder(target)("--device", default="auto", choices=DEVICES, help="auto: cuda, then mps, then cpu")


def add_cache_dir_flag(target):
    adder(target)("--cache-dir", default="cache", help="where decoded images are cached between runs")


def add_threshold_flag(target):
    adder(target)("--threshold", type=checked_threshold,
                  help="lesion where probability > this, strictly between 0 and 1 (default: the threshold "
                  "adapt.py stored in the model, else 0.5)")


def add_data_dir_flag(target, note="", several=False, required=False):
    """--data-dir DIR (several=True: DIR [DIR ...]), 'data' unless required; note: what it is for here."""
    text = ("data folder(s)" if several else "a data folder") + " in any accepted layout (README: Data)"
    default = None if required else (["data"] if several else "data")
    adder(target)("--data-dir", nargs="+" if several else None, default=default, required=required, metavar="DIR",
                  help=text + (f"; {note}" if note else ""))


def add_checkpoint_flag(target, role, default=None, several=False, onnx=False, required=None):
    """--checkpoint FILE (several=True: FILE [FILE ...], an ensemble), required without a default; onnx: True where
    an .onnx file is read too, "only" where nothing else is. With several,
    argparse's default stays None (its "extend" would add to a default list) and the script falls back to
    `default` itself."""
    text = {True: f"{role}: an .onnx file (export.py), or best.pt / last.pt written by train.py (needs PyTorch)",
            "only": f"{role}: an .onnx file (export.py; make export turns a train.py checkpoint into one)",
            False: f"{role}: best.pt or last.pt written by train.py"}[onnx]
    if several:
        text += "; several .pt: their ensemble (the mean of their probabilities)"
    if default is not None:
        text += f" (default: {os.path.relpath(default)})"
    options = dict(nargs="+", action="extend") if several else dict(default=default and str(default))
    required = default is None if required is None else required
    adder(target)("--checkpoint", metavar="FILE", required=required, help=text, **options)


def plural(n, word, many=None):
    """'1 mask', '2 masks' (many: the plural where it is not word + 's')."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def parser(description):
    """An ArgumentParser for a script, with its docstring as description."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def run(main):
    """Call a script's main(): Ctrl-C (Interrupted) exits 130, a user's error exits 1, each with one line. SIGTERM,
    how a service manager or a script stops a job (a background job ignores SIGINT), ends it as Ctrl-C does."""
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        main()
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt(signum, frame):
    raise KeyboardInterrupt


class Silent:
    """progress()'s bar where nobody watches: counts nothing, prints nothing."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def progress(total, desc, unit="img"):
    """tqdm's progress bar on a terminal; elsewhere (a log, a pipe) none, as tqdm's disable=None decides, and
    without tqdm's import: 40 ms of make predict's start-up."""
    if not sys.stderr.isatty():
        return Silent()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit)
