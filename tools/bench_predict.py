"""Measure make predict on this machine: its command on --images photos of 1024x768 with the released model on
ONNX Runtime (the default) against the same model on PyTorch, start-up included, with and without overlays; where
the time goes, stage by stage; the model alone with flip TTA, the limit of the pipeline around it; --watch's delay
from a photo landing to its mask; and the forward pass alone (make bench-predict).

    python tools/bench_predict.py                       # 100 photos
    python tools/bench_predict.py --before 746f3c7      # and predict.py as it was at that revision
    python tools/bench_predict.py --int8 runs/quantize/lesion_segmenter_int8.onnx    # and with make quantize's file
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from project_root import ROOT  # first: lib/ and the top-level modules import from the project's root

from lib import cli, model_files, readers, saving
from lib.timing import flops, line, matmul_gflops, rate, write_photo


def predict_seconds(photos, out, flags, repo=ROOT):
    """Wall seconds of `python predict.py photos --out out --tta --largest-component FLAGS` in repo as a user runs
    it: Python's start-up, the runtime's import, loading the model, decoding and writing every file included."""
    command = [sys.executable, "predict.py", str(photos), "--out", str(out), "--tta", "--largest-component", *flags]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"predict.py failed: {result.stderr.strip()}")
    return time.perf_counter() - start


def bench_predict(args):
    """make predict on --images photos of 1024x768 with the released model on ONNX Runtime (the default)
    and on PyTorch (its .pt), side by side: start-up to the first mask, with and without overlays, where the
    time goes, and the forward pass alone."""
    with tempfile.TemporaryDirectory() as tmp:
        photos, rng, n = Path(tmp) / "photos", np.random.default_rng(0), args.images
        photos.mkdir()
        for i in range(n):
            write_photo(photos / f"photo{i:03d}.jpg", rng)
        first = photos / "photo000.jpg"
        runtimes = {"ONNX Runtime": ["--device", args.device], "PyTorch": ["--device", args.device, "--checkpoint",
                                                                           str(model_files.PT)]}
        seconds = {}
        for kind, extra, inputs in (("start-up to the first mask, 1 photo", [], first),
                                   (f"{n} photos, --overlay", ["--overlay"], photos), (f"{n} photos", [], photos)):
            (onnx, torch_), k = (predict_seconds(inputs, Path(tmp) / f"out{i}", flags + extra)
                                 for i, flags in enumerate(runtimes.values())), 1 if inputs == first else n
            before = f"; predict.py of {args.before}: {before_seconds(args.before, inputs, Path(tmp), extra, onnx)}" \
                if args.before else ""
            seconds[kind] = onnx
            print(f"{'make predict, ' + kind:<52} {onnx:8.2f} s ({k / onnx:.1f} img/s)   vs PyTorch: {torch_:.2f} s "
                  f"({torch_ / onnx:.1f}x){before}", flush=True)
        if args.before:
            same = same_masks(Path(tmp) / "out0", Path(tmp) / "before-out")
            print(f"{f'  masks the same as those of {args.before}':<52} {same} of {n}, pixel for pixel", flush=True)
        if args.int8:
            int8 = predict_seconds(photos, Path(tmp) / "int8", ["--overlay", "--checkpoint", str(args.int8)])
            print(f"{f'  {n} photos, --overlay, {args.int8.name}':<52} {int8:8.2f} s ({n / int8:.1f} img/s)   "
                  f"vs the float file: {seconds[f'{n} photos, --overlay'] / int8:.2f}x", flush=True)
        model_alone(sorted(photos.glob("*.jpg")), n / seconds[f"{n} photos, --overlay"], args.seconds)
        stage_shares(sorted(photos.glob("*.jpg")), Path(tmp) / "stages")
        watch_latency(sorted(photos.glob("*.jpg")), Path(tmp))
    if args.before:
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT)  # its folder went with tmp
    forward_rates(args)


def model_alone(paths, pipeline_rate, seconds, batch_size=8):
    """The released model alone with flip TTA on ONNX Runtime, as make predict batches it: the pipeline's limit on
    this CPU, and the share of it that make predict --overlay reached."""
    from lib.segmenter import Segmenter
    segmenter = Segmenter.load()
    inputs = np.stack([readers.read_photo(p, segmenter.image_size)[1] for p in paths[:batch_size]])
    alone = rate(lambda: segmenter.probabilities(inputs, tta=True), len(inputs), torch.device("cpu"), seconds)
    print(f"{f'the model alone, flip TTA, batch {batch_size} (ONNX Runtime)':<52} {alone:8.1f} photos/s   make predict "
          f"--overlay: {pipeline_rate:.1f} photos/s, {100 * pipeline_rate / alone:.0f}% of it", flush=True)


def watch_latency(photos, tmp, n=20):
    """make predict WATCH=1's delay (median of n) from a photo landing in the watched folder (renamed into it
    whole, as a capture program saves) to its mask written there, the machine otherwise idle."""
    clinic = tmp / "clinic"
    clinic.mkdir()
    proc = subprocess.Popen([sys.executable, "predict.py", str(clinic), "-o", str(clinic), "--watch", "--tta",
                             "--largest-component", "--overlay"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    delays = []
    try:
        while "watching" not in proc.stdout.readline():
            pass
        for photo in photos[:n]:
            staged = tmp / photo.name
            staged.write_bytes(photo.read_bytes())
            mask, start = clinic / f"{photo.stem}_segmentation.png", time.perf_counter()
            staged.rename(clinic / photo.name)
            while not mask.exists():
                time.sleep(0.002)
            delays.append(time.perf_counter() - start)
            time.sleep(0.3)  # the next photo comes to an idle watcher
    finally:
        proc.terminate()
        proc.wait()
    print(f"{f'make predict WATCH=1: photo landed to its mask written':<52} {float(np.median(delays)):8.2f} s "
          f"(median of {len(delays)}, slowest {max(delays):.2f} s)", flush=True)


def before_seconds(rev, inputs, tmp, extra, onnx):
    """'S s (Rx)': the same command with predict.py as it was at git revision rev (a worktree of it in tmp)."""
    tree = tmp / "before"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT,
                       check=True, capture_output=True)
    seconds = predict_seconds(inputs, tmp / "before-out", [*extra, "--device", "cpu"], tree)
    return f"{seconds:.2f} s ({seconds / onnx:.1f}x)"


def same_masks(folder, other):
    """How many mask files of folder decode to the same pixels as other's file of that name."""
    return sum(np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(other / f.name)))
               for f in sorted(folder.glob("*_segmentation.png")) if (other / f.name).is_file())


def stage_shares(paths, out, batch_size=8):
    """Where make predict's time goes on ONNX Runtime (--tta --largest-component --overlay), each stage run alone
    over all photos in this process, one thread but the model's: decoding (and the model's input), the model,
    post-processing (resize back, threshold, largest region), writing (contour, PNG and JPEG encoding, atomic
    write)."""
    from lib.masks import mask_png, overlay_jpeg
    from lib.segmenter import Segmenter
    segmenter, seconds = Segmenter.load(), {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - start
        return result
    decoded = timed("decoding", lambda: [readers.read_photo(p, segmenter.image_size) for p in paths])
    probs = timed("model", lambda: segmenter.probabilities(np.stack([small for _, small in decoded]), tta=True,
                                                           batch_size=batch_size))
    masks = timed("post-processing", lambda: [segmenter.mask(prob, *p.size, largest_component=True)
                                              for (p, _), prob in zip(decoded, probs)])
    out.mkdir()
    timed("writing", lambda: [(saving.write_bytes(out / f"{i}_segmentation.png", mask_png(m)),
                               saving.write_bytes(out / f"{i}_overlay.jpg", overlay_jpeg(p, m)))
                              for i, ((p, _), m) in enumerate(zip(decoded, masks))])
    total, jpeg = sum(seconds.values()), np.mean([f.stat().st_size for f in out.glob("*_overlay.jpg")])
    print(f"{'  where the time goes (ONNX Runtime, each stage alone)':<52} " + ", ".join(
        f"{k} {100 * v / total:.0f}% ({1e3 * v / len(paths):.0f} ms/img)" for k, v in seconds.items())
        + f"; overlays {jpeg / 1e6:.2f} MB each")


def forward_rates(args, n=32):
    """The released model's forward pass at batch n: ONNX Runtime against PyTorch on the same float32 images,
    and ONNX Runtime's FLOP rate against this CPU's on a large matrix product."""
    from lib.checkpoints import load_models
    from lib.segmenter import OnnxRuntime
    model, _ = load_models([model_files.PT])
    onnx = OnnxRuntime(model_files.ONNX, "cpu")
    x = np.random.default_rng(0).random((n, 3, onnx.image_size, onnx.image_size), dtype=np.float32) * 255
    tx = torch.from_numpy(x)
    with torch.no_grad():
        cpu = torch.device("cpu")
        fast = rate(lambda: onnx(x), n, cpu, args.seconds)
        slow = rate(lambda: model(tx), n, cpu, args.seconds)
        per_image = flops(lambda: model(tx[:1]))
    line(f"forward pass, batch {n}, ONNX Runtime", fast, slow, "PyTorch")
    print(f"{'  its FLOP rate':<52} {fast * per_image / 1e9:8.1f} GFLOP/s   vs 2048x2048 matmul: "
          f"{matmul_gflops(cpu, False, args.seconds):.1f} GFLOP/s ({per_image / 1e6:.0f} MFLOPs per image)")


def main():
    parser = cli.parser(__doc__)
    cli.add_device_flag(parser)
    parser.add_argument("--images", type=int, default=100, help="photos of 1024x768 to segment")
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time of each forward-pass rate")
    parser.add_argument("--int8", type=Path, metavar="FILE",
                        help="also time make predict with this int8 .onnx (make quantize writes "
                        "runs/quantize/lesion_segmenter_int8.onnx)")
    parser.add_argument("--before", metavar="REV",
                        help="also time predict.py as it was at this git revision (e.g. 104d63e, the PyTorch-only "
                        "pipeline before the light runtime)")
    args = parser.parse_args()
    bench_predict(args)


if __name__ == "__main__":
    cli.run(main)
