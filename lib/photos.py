"""Your photos in, their masks out, without torch: the images that files, folders and glob patterns name, each
one's output name (one rule, the page's too), the photo decoded once, its mask and overlay written whole, and what
an earlier run wrote checked before it is skipped. predict.py runs them; lib/watching.py does it for a folder that
keeps receiving photos."""
import glob
import itertools
import os
import sys
import threading
import warnings
from pathlib import Path

from lib import layouts, readers, saving
from lib.errors import UsageError
from lib.masks import mask_png, overlay_jpeg

decoding = threading.local()  # the photo this thread decodes: show_warning names it
printing = threading.Lock()
PHOTO_EXTS = layouts.IMAGE_EXTS + (".gif", ".webp")  # what folders and patterns yield: named, any file is tried
OUTPUTS = ("_segmentation.png", "_overlay.jpg")  # what predict.py writes after each image's name


def expand_inputs(inputs):
    """{image file: the folder its outputs go to, relative to --out} of files, folders (searched recursively,
    linked folders too; an entry named x.jpg that is a folder is searched) and glob patterns, expanded here so that
    quoted patterns work on every OS; hidden files in folders (macOS's ._name.jpg) are skipped. An image keeps its
    subfolder below the folder (or the pattern's fixed part) it was found in. UsageError naming any input that
    matched nothing."""
    def photo(p):
        return p.suffix.lower() in PHOTO_EXTS and p.is_file()
    found, unmatched = {}, []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            base, matches = path, sorted(p for p in files_below(path) if photo(p) and not layouts.is_hidden(p))
        elif path.is_file():
            base, matches = path.parent, [path]
        else:  # glob skips dot files (._name.jpg) itself
            base = Path(*itertools.takewhile(lambda part: not glob.has_magic(part), path.parts))
            matches = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if photo(p))
        for match in matches:
            found.setdefault(match, match.parent.relative_to(base))
        if not matches:
            unmatched.append(item)
    if unmatched:
        raise UsageError("no images found for: " + ", ".join(unmatched))
    return found


def files_below(folder):
    """Every file below folder, through linked folders too (each real folder once, so a link loop ends)."""
    seen = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield from (Path(root) / name for name in names)


def output_names(found, out):
    """({image: out/<its subfolder>/<output_stem>}, the prefix of its outputs; [why each image left out has no
    name]). Photos of one folder that share a stem (x.jpg, x.png) are named with their format (x_jpg, x_png); two
    that share that too (x.jpg, x.JPG) are left out, named, and the others keep theirs."""
    by_stem = {}
    for path, folder in found.items():
        by_stem.setdefault(output_name(path, folder, out), []).append(path)
    names = {p: output_name(p, found[p], out, clash=len(paths) > 1) for paths in by_stem.values() for p in paths}
    taken = {}
    for path, name in names.items():
        taken.setdefault(name, []).append(path)
    left_out = [f"{p}: it and {', '.join(q.name for q in paths if q != p)} would write the same mask "
                f"({name.name}_segmentation.png); rename one" for name, paths in taken.items() if len(paths) > 1
                for p in paths]
    return {p: n for p, n in names.items() if len(taken[n]) == 1}, left_out


def output_stem(name, clash=False):
    """What an image's outputs are named after (<stem>_segmentation.png, the ISIC convention, whatever the format);
    with clash (another photo of its folder has that stem), its stem and format: x.jpg beside x.png gives x_jpg and
    x_png. The page names its downloads by the same rule (web/segment.js outputStem; a test holds the two)."""
    stem, suffix = os.path.splitext(os.path.basename(name))
    return f"{stem}_{suffix[1:].lower()}" if clash and suffix else stem


def output_name(path, folder, out, clash=False):
    """The prefix of an image's outputs: out/<its subfolder>/<output_stem of its name>."""
    return out / folder / output_stem(path.name, clash)


def outputs(found, out, inputs):
    """The files among `found` (expand_inputs()) that are predict.py's own outputs (--watch, with --out inside an
    input folder): anywhere below an --out that is not itself an input folder, or named <prefix>_segmentation.png
    or <prefix>_overlay.jpg after a photo beside them (x.jpg: x_..., or x_jpg_...). A photo of the user's own named
    lesion_overlay.jpg, with no lesion.* beside it, is a photo."""
    own_folder = out.resolve() not in {Path(i).resolve() for i in inputs}
    stems = {}
    for path in found:
        stems.setdefault(path.parent, set()).update(output_stem(path.name, clash) for clash in (False, True))
    def named_after_a_photo(path):
        return any(path.name.endswith(kind) and path.name[:-len(kind)] in stems[path.parent] for kind in OUTPUTS)
    return {p for p in found if own_folder and p.resolve().is_relative_to(out.resolve()) or named_after_a_photo(p)}


def open_output_folder(out, inputs, paths, inside_inputs=False):
    """Create --out; a sentence instead of a traceback when it is a file, cannot be written, or lies in an input
    folder (where its masks would be read as inputs by the next run, and could replace the user's own files;
    inside_inputs allows that for --watch, which tells its outputs apart)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    target = out.resolve()
    searched = [Path(i).resolve() for i in inputs if Path(i).is_dir()]  # searched recursively
    inside = next((f for f in searched if target.is_relative_to(f)), None) or (
        target if target in {p.parent.resolve() for p in paths} else None)
    if inside is not None and not inside_inputs:
        raise UsageError(f"--out {out} is inside the input folder {inside}: the masks would be read as images by "
                         "the next run and could replace your own files; choose an --out outside it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # one per process: under torchrun several probe at once
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --out {out} ({e.strerror}); choose a folder you can write to") from None
    return out


def decode(path, size):
    """(the photo as an RGB PIL image, its model input: uint8 [size,size,3]) or (None, why it cannot be read):
    decoded once, for the model and for the overlay."""
    decoding.path = path
    try:
        return readers.read_photo(path, size)
    except Exception as e:  # PIL raises many types for corrupt or non-image files
        return None, str(e)
    finally:
        decoding.path = None


def show_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for a script that decodes photos in threads: a warning raised while a photo is decoded
    (PIL's "Corrupt EXIF data", which names no file) is one line that names the photo."""
    path = getattr(decoding, "path", None)
    text = f"{path}: {message}" if path else warnings.formatwarning(message, category, filename, lineno, line)
    with printing:  # one whole line: the pool's threads decode side by side
        (sys.stderr if file is None else file).write(str(text).strip() + "\n")


def outputs_done(path, name, kinds):
    """--skip-existing: whether every output of this image exists and decodes whole at the image's size. One that
    exists but does not (cut short, emptied, another image's) is said, and redone."""
    found = [Path(f"{name}{kind}") for kind in kinds if Path(f"{name}{kind}").exists()]
    if not found:
        return False
    try:
        size = readers.displayed_size(path)
    except Exception:  # an unreadable image: predicting it says why
        return False
    broken = [f.name for f in found if not readers.decodes_whole(f, size)]
    if broken:
        print(f"{', '.join(broken)}: does not decode whole at {size[0]}x{size[1]}; writing it again")
    return not broken and len(found) == len(kinds)


def write_outputs(photo, mask, name, with_overlay):
    """<name>_segmentation.png of the boolean mask and, with_overlay, <name>_overlay.jpg of the photo (an RGB PIL
    image) with its contour, each written whole or not at all."""
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    saving.write_bytes(Path(f"{name}_segmentation.png"), mask_png(mask))
    if with_overlay:
        saving.write_bytes(Path(f"{name}_overlay.jpg"), overlay_jpeg(photo, mask))
