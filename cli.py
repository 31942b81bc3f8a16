"""What every script shares on the command line: help that gives each flag's default, the flags every script
means alike, and the entry point that turns the project's errors into one line and an exit code."""
import argparse
import sys

from errors import USER_ERRORS, Interrupted
from masks import checked_threshold


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


def add_device_flag(parser):
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: cuda, then mps, then cpu")


def add_cache_dir_flag(parser):
    parser.add_argument("--cache-dir", default="cache", help="where decoded images are cached between runs")


def add_threshold_flag(parser):
    parser.add_argument("--threshold", type=checked_threshold,
                        help="lesion where probability > this, strictly between 0 and 1 (default: the threshold "
                        "adapt.py stored in the model, else 0.5)")


def parser(description):
    """An ArgumentParser for a script, with its docstring as description."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def run(main):
    """Call a script's main(): Ctrl-C (Interrupted) exits 130, a user's error exits 1, each with one line."""
    try:
        main()
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
