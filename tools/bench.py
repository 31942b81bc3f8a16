"""Measure speed on this machine's device: training (frozen encoder with and without the feature cache, the
cached step's FLOP rate against a large matrix product's, full fine-tuning in channels_last and NCHW),
inference, the decoder's cost against the encoder's, and building the image cache from JPEGs; or, with --profile,
make best's training step under torch.profiler. Each number is printed beside the slower variant measured in the
same run. make predict's speed: tools/bench_predict.py; the page's: tools/bench_page.py; torchrun's:
tools/bench_scale.py.

    python tools/bench.py                    # CPU or the best GPU present (make bench)
    python tools/bench.py --device cuda --batch-size 64
    python tools/bench.py --profile          # make best's training step: device busy time and top operators
"""
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

import augment
from lib import cli, decoding, layouts, readers
from lib.device import autocast, pick_device, sync
from lib.timing import flops, line, matmul_gflops, rate, write_photo
from losses import LOSSES, bce_loss
from model import MobileNetSegmenter, update_ema


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
            readers.read_image(image_path, args.image_size)
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
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
          f"batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"mixed precision {'off' if args.no_amp or device.type == 'cpu' else 'on'}")
    if args.profile:
        return profile_best_step(args, device)
    bench_training(args, device)
    bench_inference(args, device)
    bench_data_cache(args)


if __name__ == "__main__":
    cli.run(main)
