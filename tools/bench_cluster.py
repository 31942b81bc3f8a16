"""What Ray Data costs on this machine: predict.py with and without --cluster local on the same photos, with make
predict's flags (make bench-cluster; docs/scale.md). Each is timed on 1 photo (its start-up) and on all --photos,
so that its rate is (N - 1) / (T_N - T_1), start-up apart; the two runs' files are compared byte for byte.

    python tools/bench_cluster.py --data-dir ../shared/isic2016 --photos 1000
"""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from project_root import ROOT  # first: lib/ and the top-level modules import from the project's root

from lib import cli
from lib.errors import UsageError

FLAGS = ("--tta", "--largest-component", "--overlay")  # make predict's


def timed(folder, out, extra):
    """Seconds of one predict.py run, start to exit."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "predict.py", str(folder), "-o", str(out), *FLAGS, *extra], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"predict.py {' '.join(extra)} failed: {result.stderr.strip()[-300:]}")
    return time.perf_counter() - start


def same_files(a, b):
    """(files alike, files in all) of two output folders."""
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    return sum((a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes()
               for n in names), len(names)


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_data_dir_flag(parser)
    parser.add_argument("--photos", type=int, default=1000, help="photos to segment, the first of --data-dir's")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each run; the fastest is kept")
    args = parser.parse_args(argv)
    found = sorted(p for p in Path(args.data_dir).rglob("*.jpg") if "_Data" in p.parent.name or p.parent.name ==
                   "images")[:args.photos]
    if len(found) < 2:
        raise UsageError(f"{args.data_dir} holds {len(found)} photos (*.jpg in its image folders); 2 or more needed")
    runs = {"plain": (), "cluster": ("--cluster", "local")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n, folder in ((1, tmp / "one"), (len(found), tmp / "all")):
            folder.mkdir()
            for path in found[:n]:
                shutil.copy(path, folder / path.name)
        seconds = {(name, n): min(timed(folder, tmp / f"{name}-{n}-{r}", extra) for r in range(args.repeats))
                   for name, extra in runs.items() for n, folder in ((1, tmp / "one"), (len(found), tmp / "all"))}
        alike, total = same_files(tmp / f"plain-{len(found)}-0", tmp / f"cluster-{len(found)}-0")
    rate = {name: (len(found) - 1) / (seconds[name, len(found)] - seconds[name, 1]) for name in runs}
    for name in runs:
        print(f"{name:<8} 1 photo {seconds[name, 1]:6.1f} s (start-up), {len(found)} photos "
              f"{seconds[name, len(found)]:6.1f} s: {rate[name]:.1f} photos/s after start-up")
    print(f"cluster / plain: {rate['cluster'] / rate['plain']:.0%} of the rate; start-up +"
          f"{seconds['cluster', 1] - seconds['plain', 1]:.1f} s; files alike: {alike} of {total}")


if __name__ == "__main__":
    cli.run(main)
