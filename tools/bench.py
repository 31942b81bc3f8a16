"""Measure speed on this machine's device: training (frozen encoder with and without the feature cache, the
cached step's FLOP rate against a large matrix product's, full fine-tuning in channels_last and NCHW),
inference, the decoder's cost against the encoder's, and building the image cache from JPEGs.
Each number is printed beside the slower variant measured in the same run.

    python bench.py                    # CPU or the best GPU present
    python bench.py --device cuda --batch-size 64
    python bench.py --predict          # make predict on 100 photos of 1024x768: ONNX Runtime against PyTorch
    python bench.py --page             # the page's server on one photo of 1024x768
    python bench.py --scale            # one process against two under torchrun (make bench-scale)
"""
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as tools/x.py: lib/ and the top-level modules import from the root

import augment
from lib import cli, decoding, files, images, layouts, model_files
from lib.device import autocast, pick_device, sync
from lib.synthetic import write_synthetic
from losses import LOSSES, bce_loss
from model import MobileNetSegmenter, update_ema


def rate(step, n_images, device, seconds=4.0):
    """Images per second of step(), after one warm-up call, over at least `seconds`."""
    step()
    sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        calls += 1
    sync(device)
    return calls * n_images / (time.perf_counter() - start)


def flops(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_gflops(device, amp, seconds, n=2048):
    """This device's rate on a large matrix product (in the training step's precision): near its peak."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def matmul():
        with autocast(device, amp):
            a @ b
    return rate(matmul, 1, device, seconds) * 2 * n ** 3 / 1e9


def line(name, fast, slow=None, slow_name="", unit="img/s"):
    text = f"{name:<52} {fast:8.1f} {unit}"
    if slow is not None:
        text += f"   vs {slow_name}: {slow:.1f} {unit} ({fast / slow:.1f}x)"
    print(text, flush=True)


def bench_training(args, device):
    n, size, amp = args.batch_size, args.image_size, not args.no_amp
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
    masks = (torch.rand(n, 1, size, size, device=device) > 0.5).float()
    for skips in (False, True):
        torch.manual_seed(0)
        frozen = MobileNetSegmenter(args.encoder_weights, skips=skips, freeze_encoder=True).to(device).train()
        optimizer = torch.optim.Adam(frozen.decoder_parameters())
        with torch.no_grad(), autocast(device, amp):
            feats = [f.float() for f in frozen.encode(images)]

        def step(forward):
            with autocast(device, amp):
                loss = bce_loss(forward(), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def without_cache():
            with torch.no_grad(), autocast(device, amp):
                f = frozen.encode(images)
            step(lambda: frozen.decode([x.float() for x in f]))
        cached = rate(lambda: step(lambda: frozen.decode(feats)), n, device, args.seconds)
        uncached = rate(without_cache, n, device, args.seconds)
        tag = "with skips" if skips else "no skips"
        line(f"train, frozen encoder, feature cache ({tag})", cached, uncached, "encoder every step")
        if not skips:  # what bounds the cache's gain: how fast the decoder's step already runs
            step_flops = flops(lambda: step(lambda: frozen.decode(feats))) / n
            line("  the same step's FLOP rate (forward + backward)", cached * step_flops / 1e9,
                 matmul_gflops(device, amp, args.seconds), "2048x2048 matmul", "GFLOP/s")

    def finetune_rate(memory_format):
        full = MobileNetSegmenter(args.encoder_weights).to(device, memory_format=memory_format).train()
        optimizer = torch.optim.Adam(full.parameters())

        def finetune():
            with autocast(device, amp):
                loss = bce_loss(full(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return rate(finetune, n, device, args.seconds)
    line("train, whole network fine-tuned (no skips)", finetune_rate(torch.channels_last),
         finetune_rate(torch.contiguous_format), "NCHW weights")

    # Where the time goes: encoder and decoder, forward + backward each, and their FLOPs.
    model = MobileNetSegmenter(args.encoder_weights).to(device).train()
    feats = [f.detach().requires_grad_() for f in model.encode(images)]

    def encoder_fb():
        sum(f.float().mean() for f in model.encode(images)).backward()

    def decoder_fb():
        model.decode(feats).float().mean().backward()
    enc, dec = rate(encoder_fb, n, device, args.seconds), rate(decoder_fb, n, device, args.seconds)
    line("decoder forward+backward", dec, enc, "encoder forward+backward")
    enc_flops = flops(lambda: model.encode(images[:1]))
    dec_flops = flops(lambda: model.decode([f[:1].detach() for f in feats]))
    print(f"{'FLOPs per image, forward':<52} decoder {dec_flops / 1e6:.0f} M, encoder {enc_flops / 1e6:.0f} M "
          f"(decoder/encoder {dec_flops / enc_flops:.2f})")


def bench_inference(args, device):
    model = MobileNetSegmenter(args.encoder_weights).to(device).eval()
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           device=device)

    def batched():
        with torch.no_grad(), autocast(device, not args.no_amp):
            model(images)

    def one_by_one():
        with torch.no_grad(), autocast(device, not args.no_amp):
            for i in range(len(images)):
                model(images[i:i + 1])
    line(f"inference, batch {args.batch_size}", rate(batched, len(images), device, args.seconds),
         rate(one_by_one, len(images), device, args.seconds), "one image at a time")


def write_photo(path, rng):
    """A 1024x768 JPEG of smooth random blobs (noise drawn at 1/8 scale, upsampled); returns that noise."""
    noise = rng.integers(0, 255, (768 // 8, 1024 // 8, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((1024, 768), Image.BICUBIC).save(path, quality=90)
    return noise


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
    """make predict on --predict-images photos of 1024x768 with the released model on ONNX Runtime (the default)
    and on PyTorch (its .pt), side by side: start-up to the first mask, with and without overlays, where the
    time goes, and the forward pass alone."""
    with tempfile.TemporaryDirectory() as tmp:
        photos, rng, n = Path(tmp) / "photos", np.random.default_rng(0), args.predict_images
        photos.mkdir()
        for i in range(n):
            write_photo(photos / f"photo{i:03d}.jpg", rng)
        first = photos / "photo000.jpg"
        runtimes = {"ONNX Runtime": ["--device", args.device], "PyTorch": ["--device", args.device, "--checkpoint",
                                                                           str(model_files.PT)]}
        for kind, extra, files in (("start-up to the first mask, 1 photo", [], first),
                                   (f"{n} photos, --overlay", ["--overlay"], photos), (f"{n} photos", [], photos)):
            (onnx, torch_), k = (predict_seconds(files, Path(tmp) / f"out{i}", flags + extra)
                                 for i, flags in enumerate(runtimes.values())), 1 if files == first else n
            before = f"; predict.py of {args.before}: {before_seconds(args.before, files, Path(tmp), extra, onnx)}" \
                if args.before else ""
            print(f"{'make predict, ' + kind:<52} {onnx:8.2f} s ({k / onnx:.1f} img/s)   vs PyTorch: {torch_:.2f} s "
                  f"({torch_ / onnx:.1f}x){before}", flush=True)
        stage_shares(sorted(photos.glob("*.jpg")), Path(tmp) / "stages")
    if args.before:
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT)  # its folder went with tmp
    forward_rates(args)


def before_seconds(rev, files, tmp, extra, onnx):
    """'S s (Rx)': the same command with predict.py as it was at git revision rev (a worktree of it in tmp)."""
    tree = tmp / "before"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT,
                       check=True, capture_output=True)
    seconds = predict_seconds(files, tmp / f"before-out{len(list(tmp.iterdir()))}", [*extra, "--device", "cpu"], tree)
    return f"{seconds:.2f} s ({seconds / onnx:.1f}x)"


def stage_shares(paths, out, batch_size=16):
    """Where make predict's time goes on ONNX Runtime (--tta --largest-component --overlay), each stage run alone
    over all photos in this process: decoding, the model, post-processing (resize back, threshold, largest
    region, contour), writing (PNG and JPEG encoding, atomic write)."""
    from lib.masks import encoded, mask_at_size, mask_png, overlay
    from lib.segmenter import Segmenter
    segmenter, seconds = Segmenter.load(), {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - start
        return result
    photos = timed("decoding", lambda: [images.read_full_image(p) for p in paths])
    probs = timed("model", lambda: segmenter.probabilities(np.stack(
        [images.model_input(p, segmenter.image_size) for p in photos]), tta=True, batch_size=batch_size))
    pictures = timed("post-processing", lambda: [(m, overlay(p, m)) for p, m in (
        (p, mask_at_size(prob, p.shape[1], p.shape[0], segmenter.threshold, True, segmenter.edge_move))
        for p, prob in zip(photos, probs))])
    out.mkdir()
    timed("writing", lambda: [(files.write_bytes(out / f"{i}_segmentation.png", encoded(mask_png(m), "PNG")),
                               files.write_bytes(out / f"{i}_overlay.jpg", encoded(o, "JPEG")))
                              for i, (m, o) in enumerate(pictures)])
    total = sum(seconds.values())
    print(f"{'  where the time goes (ONNX Runtime, each stage alone)':<52} " + ", ".join(
        f"{k} {100 * v / total:.0f}% ({1e3 * v / len(paths):.0f} ms/img)" for k, v in seconds.items()))


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


def bench_page(args, photos=5):
    """The page (serve.py) in Debian's headless Chromium, the model running in the browser (WebAssembly): seconds
    from opening the page to the model loaded, and per 1024x768 photo with flip TTA and the pictures drawn (the
    page's own timing of each photo; median of `photos`, after one that warms up). Needs selenium
    (requirements-dev.txt), chromium and chromium-driver."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    server = subprocess.Popen([sys.executable, "serve.py", "--port", "0", *(["--model", args.model] if args.model
                              else [])], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        address = server.stdout.readline().split()[2]  # "serving on http://127.0.0.1:PORT/ ..."
        start = time.perf_counter()
        driver.get(address)
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        loaded = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            paths = [Path(tmp) / f"photo{i}.jpg" for i in range(photos + 1)]
            for i, path in enumerate(paths):
                write_photo(path, np.random.default_rng(i))
            driver.find_element(By.ID, "files").send_keys("\n".join(map(str, paths)))
            WebDriverWait(driver, 600).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result.done")) == len(paths))
        seconds = [float(c.get_attribute("data-seconds")) for c in driver.find_elements(By.CSS_SELECTOR, ".result")]
    finally:
        driver.quit()
        server.terminate()
        server.wait()
    print(f"{'the page in Chromium: open to model loaded':<52} {loaded:8.2f} s")
    print(f"{'the page: one photo of 1024x768, TTA, pictures drawn':<52} {float(np.median(seconds[1:])):8.2f} s per "
          "image")


def bench_scale(args, epochs=2):
    """One process against two (torchrun, gloo, one thread each) on this machine: make predict's command on
    --predict-images photos of 1024x768 (images per second, start-up included), and training on a synthetic set
    (seconds per step of the last epoch, and its training loss)."""
    here, launch = ROOT, [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    with tempfile.TemporaryDirectory() as tmp:
        photos, rng = Path(tmp) / "photos", np.random.default_rng(0)
        photos.mkdir()
        for i in range(args.predict_images):
            write_photo(photos / f"photo{i:03d}.jpg", rng)
        write_synthetic(Path(tmp) / "data", n_train=160, n_test=8)
        train = ["--data-dir", str(Path(tmp) / "data"), "--cache-dir", str(Path(tmp) / "cache"), "--workers", "0",
                 "--encoder-weights", "none", "--epochs", str(epochs), "--batch-size", str(args.batch_size),
                 "--device", "cpu"]
        for n in (1, 2):
            start = time.perf_counter()
            subprocess.run([*launch, f"--nproc_per_node={n}", "predict.py", str(photos), "--out",
                            str(Path(tmp) / f"masks{n}"), "--device", "cpu"], cwd=here, check=True, capture_output=True)
            seconds = time.perf_counter() - start
            print(f"{f'make predict, {n} process(es), {args.predict_images} photos':<52} {seconds:8.2f} s "
                  f"({args.predict_images / seconds:.1f} img/s)")
            subprocess.run([*launch, f"--nproc_per_node={n}", "train.py", *train, "--out", str(Path(tmp) / f"run{n}")],
                           cwd=here, check=True, capture_output=True)
            last = files.read_csv(Path(tmp) / f"run{n}" / "history.csv")[-1]
            steps = -(-144 * 4 // args.batch_size)  # 144 training images (a tenth validates), 3 copies each
            print(f"{f'training, {n} process(es), global batch {args.batch_size}':<52} "
                  f"{last['seconds'] / steps:8.3f} s per step (train loss {last['train_loss']:.4f})")


def bench_data_cache(args):
    """Decoding large JPEGs into the uint8 cache: ours (JPEG draft mode, worker processes) against a full-size
    decode and resize, and loading the finished cache."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for split in layouts.SPLITS:
            for folder in layouts.SPLITS[split]:
                (root / folder).mkdir()
            for i in range(args.cache_images):
                image_id = f"ISIC_{split[:2]}{i:05d}"
                noise = write_photo(root / layouts.SPLITS[split][0] / f"{image_id}.jpg", rng)
                Image.fromarray((noise[..., 0] > 128).astype(np.uint8) * 255).resize((1024, 768)).save(
                    root / layouts.SPLITS[split][1] / f"{image_id}{layouts.MASK_SUFFIX}")
        pairs = layouts.find_pairs(root, "train")

        start = time.perf_counter()
        for _, image_path, _ in pairs:
            with Image.open(image_path) as im:
                np.asarray(im.convert("RGB").resize((args.image_size, args.image_size), Image.BILINEAR))
        naive = len(pairs) / (time.perf_counter() - start)
        start = time.perf_counter()
        for _, image_path, _ in pairs:
            images.read_image(image_path, args.image_size)
        draft = len(pairs) / (time.perf_counter() - start)
        line("JPEG 1024x768 decode+resize, draft mode", draft, naive, "full decode", "img/s")

        def build(workers):
            start = time.perf_counter()
            decoding.load_split(root, "train", args.image_size, root / f"cache{workers}", workers=workers)
            return len(pairs) / (time.perf_counter() - start)
        parallel, serial = build(args.workers), build(0)
        line(f"build the cache (images + masks), {args.workers} workers", parallel, serial, "1 process", "img/s")
        start = time.perf_counter()
        decoding.load_split(root, "train", args.image_size, root / "cache0")
        line("load the finished cache", len(pairs) / (time.perf_counter() - start), serial, "building it", "img/s")


def profile_best_step(args, device, steps=10):
    """torch.profiler over `make best`'s training step (skips, random distortion, BCE + Dice, two learning rates,
    EMA): wall time per step against the time the device spends in kernels. On a GPU the difference is time the
    device waits for Python, launches or copies."""
    from torch.profiler import ProfilerActivity, profile
    n, size, amp = args.batch_size, args.image_size, not args.no_amp
    model = MobileNetSegmenter(args.encoder_weights, skips=True).to(device).train()
    ema = MobileNetSegmenter(args.encoder_weights, skips=True).to(device).requires_grad_(False).eval()
    optimizer = torch.optim.Adam([{"params": model.encoder.parameters(), "lr": 3e-4},
                                  {"params": model.decoder_parameters(), "lr": 1e-3}])
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
    masks = (torch.rand(n, 1, size, size, device=device) > 0.5).to(torch.uint8)
    draws = augment.draw_distortions(n, torch.Generator().manual_seed(0)).to(device)

    def step(i):
        batch, target = augment.random_distort(images, masks, draws)
        with autocast(device, amp):
            loss = LOSSES["bce+dice"](model(batch), target)
        loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_ema(ema, model, 0.99, i + 1)
    start = time.perf_counter()
    step(0)  # the first step: with --cudnn-benchmark, cuDNN times its kernels for every new shape here
    sync(device)
    print(f"{'first training step (make best, cudnn.benchmark ' + str(args.cudnn_benchmark) + ')':<52} "
          f"{time.perf_counter() - start:8.2f} s")
    for i in range(1, 5):
        step(i)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        sync(device)
        wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    busy = ""
    if device.type == "cuda":
        kernels = sum(e.self_device_time_total for e in events) / steps / 1e6
        busy = f", GPU busy {kernels * 1e3:.2f} ms ({100 * kernels / wall:.0f}%)"
    print(f"{'profile of make best step, batch ' + str(n):<52} {wall * 1e3:8.2f} ms/step ({n / wall:.0f} img/s){busy}")
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.profile_rows, max_name_column_width=48))


def main():
    parser = cli.parser(__doc__)
    cli.add_device_flag(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--encoder-weights", default="none", help="weights do not change speed; 'none' needs no file")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per number")
    parser.add_argument("--cache-images", type=int, default=48, help="synthetic 1024x768 JPEGs for the cache test")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its kernels per shape")
    parser.add_argument("--profile", action="store_true",
                        help="only profile make best's training step (torch.profiler): device busy time and top ops")
    parser.add_argument("--profile-rows", type=int, default=15, help="operators listed by --profile")
    parser.add_argument("--predict", action="store_true",
                        help="only time make predict end to end on --predict-images photos of 1024x768, the released "
                        "model on ONNX Runtime against PyTorch, and their forward passes (make bench-predict)")
    parser.add_argument("--predict-images", type=int, default=100, help="photos for --predict")
    parser.add_argument("--before", metavar="REV",
                        help="--predict also times predict.py as it was at this git revision (e.g. 104d63e, the "
                        "PyTorch-only pipeline before the light runtime)")
    parser.add_argument("--page", action="store_true",
                        help="only time the page (serve.py) in headless Chromium: loading the model, and photos of "
                        "1024x768 (make bench-predict)")
    parser.add_argument("--scale", action="store_true",
                        help="only one process against two under torchrun: prediction and training (make bench-scale)")
    parser.add_argument("--model", help="--page's .onnx model (default: the released model)")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
          f"batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"mixed precision {'off' if args.no_amp or device.type == 'cpu' else 'on'}")
    if args.profile:
        return profile_best_step(args, device)
    if args.predict:
        return bench_predict(args)
    if args.page:
        return bench_page(args)
    if args.scale:
        return bench_scale(args)
    bench_training(args, device)
    bench_inference(args, device)
    bench_data_cache(args)


if __name__ == "__main__":
    cli.run(main)
