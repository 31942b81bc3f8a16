"""Download and unpack the official ISIC archives into the layout that --data-dir reads (layouts.LAYOUTS).

    python tools/download.py --dataset isic2016 --data-dir data
    python tools/download.py --dataset isic2018 --data-dir data/isic2018    # about 11 GB

An interrupted download resumes where it stopped; every archive's size is checked against the server's and its
CRC checksums before it is unpacked. PH2 cannot be fetched by script (see --dataset ph2).
"""
import shutil
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from lib import cli
from lib.errors import DataError
from lib.layouts import LAYOUTS, detect_layout, present_groups

SERVER = "https://isic-challenge-data.s3.amazonaws.com/"
# dataset: (server folder, layout name); each folder of the layout comes as <folder>.zip, holding that folder
DATASETS = {"isic2016": ("2016/", "ISIC 2016 Part 1"), "isic2017": ("2017/", "ISIC 2017 Part 1"),
            "isic2018": ("2018/", "ISIC 2018 Task 1")}
PH2 = ("PH2 is not downloadable by script: request it from https://www.fc.up.pt/addi/ph2%20database.html, unpack "
       "PH2Dataset.rar, and pass its folder (the one holding 'PH2 Dataset images') as --data-dir / DATA_DIR.")


def fetch(url, path):
    """Download url to path via path.part, resuming a .part left by an interrupted run; DataError when the
    download fails or its size differs from what the server announced."""
    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request) as response:
            if have and getattr(response, "status", None) != 206:  # the server ignored the range: start over
                have = 0
            expected = int(response.headers.get("Content-Length", -1))
            expected = expected + have if expected >= 0 else -1
            with open(part, "ab" if have else "wb") as f, tqdm(
                    total=expected if expected >= 0 else None, initial=have, unit="B", unit_scale=True,
                    desc=path.name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        raise DataError(f"could not download {url} ({e}): with a local copy, name it (make ... DATA_DIR=path/to/it); "
                        f"else run the same command again to resume, or unzip the archive into {path.parent} by "
                        "hand") from None
    if expected >= 0 and part.stat().st_size != expected:
        raise DataError(f"{part} has {part.stat().st_size} bytes, the server announced {expected}; run the same "
                        "command again to resume")
    part.rename(path)


def unpack(archive, folder):
    """Check every member's CRC and the free space, then unpack the archive beside it and remove it (macOS
    __MACOSX entries left out); DataError for a damaged archive, a full disk, or an archive without `folder`."""
    try:
        with zipfile.ZipFile(archive) as z:
            damaged = z.testzip()
            members = [m for m in z.infolist() if not m.filename.startswith("__MACOSX/")]
            needed, free = sum(m.file_size for m in members), shutil.disk_usage(archive.parent).free
            if needed > free:
                raise DataError(f"unpacking {archive} needs {needed >> 20} MB, {archive.parent} has {free >> 20} MB "
                                "free; make room and run the same command again")
            if damaged is None and any(m.filename.startswith(folder + "/") for m in members):
                z.extractall(archive.parent, members)
    except zipfile.BadZipFile as e:
        damaged = str(e)
    if damaged is not None:
        archive.unlink()
        raise DataError(f"{archive} is damaged ({damaged}); it was removed: run the same command again")
    if not (archive.parent / folder).is_dir():
        raise DataError(f"{archive} does not hold the folder {folder}/; is it the official archive?")
    archive.unlink()


def held_layout(data_dir):
    """The layout data_dir already holds, or None."""
    try:
        return detect_layout(data_dir)
    except DataError:
        return None


def download(dataset, data_dir, server=SERVER):
    """Fetch and unpack every archive of `dataset` that data_dir lacks; returns the layout's name. A folder that
    already holds data of another layout (your own, PH2) is left alone: the experiments' targets call this first."""
    data_dir = Path(data_dir)
    held = held_layout(data_dir)
    if held is not None and (dataset == "ph2" or held != DATASETS[dataset][1]):
        return held
    if dataset == "ph2":
        raise DataError(PH2)
    folder_url, layout = DATASETS[dataset]
    data_dir.mkdir(parents=True, exist_ok=True)
    for folder in (f for pair in LAYOUTS[layout].values() for f in pair):
        if (data_dir / folder).is_dir():
            continue
        archive = data_dir / f"{folder}.zip"
        if not archive.exists():
            fetch(server + folder_url + archive.name, archive)
        unpack(archive, folder)
    return detect_layout(data_dir)


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--dataset", default="isic2016", choices=[*DATASETS, "ph2"],
                        help="which data set (default: isic2016)")
    cli.add_data_dir_flag(parser, "where its folders go")
    args = parser.parse_args(argv)
    layout = download(args.dataset, args.data_dir)
    print(f"{layout} is in {args.data_dir}: {', '.join(present_groups(args.data_dir))}")


if __name__ == "__main__":
    cli.run(main)
