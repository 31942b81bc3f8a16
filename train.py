"""Train the MobileNetV2 segmentation model on ISIC 2016 Part 1; evaluate the best checkpoint on the test split.

Every run writes one folder (--out): config.json, history.csv, last.pt, best.pt, test_metrics.json,
test_per_image.csv, curves.png and prediction panels. Ctrl-C keeps last.pt; --resume continues.

    python train.py --freeze-encoder --loss bce --optimizer rmsprop --out runs/exp1-bce
"""
import argparse
import copy
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
import runfiles
import visualize
from evaluate import autocast, evaluate, pick_device, predict_logits, score_model, write_results
from losses import LOSSES
from model import DECODER_WIDTHS, USER_ERRORS, SegNet

RUN_FILES = ("config.json", "history.csv", "last.pt", "best.pt")
# Flags that may be given anew when a run is resumed; every other flag is taken from the run's config.json.
RESUMABLE = ("epochs", "device", "workers", "cache_dir", "data_dir", "compile")


def parse_args(argv=None):
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    a = p.add_argument
    a("--data-dir", default="data", help="ISIC 2016 Part 1 folder in the official layout")
    a("--cache-dir", default="cache", help="where decoded images are cached between runs")
    a("--out", default="runs/train", help="run folder for config, history, checkpoints, metrics and plots")
    a("--encoder-weights", default="imagenet",
      help="'imagenet' (torchvision download), 'none' (random), or a MobileNetV2 state_dict file")
    a("--image-size", type=int, default=128, help="images and masks are resized to this square size (multiple of 32)")
    a("--aug-copies", type=int, default=3, help="flipped/rotated copies added per training image (3: 4x data)")
    a("--random-aug", action="store_true",
      help="also rotate (any angle), zoom (0.8-1.25x) and colour-jitter every batch at random; "
           "turns the feature cache off")
    a("--val-fraction", type=float, default=0.1,
      help="share of training images held out for validation (0: train on all of them; best.pt is the last epoch)")
    a("--freeze-encoder", action="store_true", help="train the decoder only; the encoder stays fixed")
    a("--no-feature-cache", action="store_true",
      help="with --freeze-encoder, run the encoder at every step instead of once per run (same results, slower)")
    a("--skips", action="store_true", help="feed encoder stages into the decoder (U-Net style skip connections)")
    a("--decoder-widths", type=int, nargs=5, default=list(DECODER_WIDTHS), metavar="C",
      help="decoder channels at 1/16, 1/8, 1/4, 1/2 and full resolution")
    a("--loss", default="bce", choices=sorted(LOSSES),
      help="bce: BCEWithLogitsLoss; iou: soft Jaccard; bce+dice: BCE plus soft Dice; bce+lovasz: BCE plus Lovasz hinge")
    a("--optimizer", default="adam", choices=["adam", "rmsprop"], help="Adam or RMSprop (PyTorch defaults otherwise)")
    a("--lr", type=float, default=1e-3, help="learning rate (of the decoder when --encoder-lr-scale is set)")
    a("--encoder-lr-scale", type=float, default=1.0, help="encoder learning rate = lr x this, when fine-tuning")
    a("--weight-decay", type=float, default=0.0, help="L2 penalty of the optimizer")
    a("--schedule", default="constant", choices=["constant", "cosine"], help="learning rate over the run")
    a("--warmup-epochs", type=float, default=0.0, help="linear learning-rate warm-up before the schedule")
    a("--ema", type=float, default=0.0, metavar="DECAY",
      help="validate, save and test an exponential moving average of the weights with this decay per step "
           "(e.g. 0.99); 0: the weights as trained")
    a("--epochs", type=int, default=15, help="passes over the augmented training set")
    a("--batch-size", type=int, default=32, help="images per optimizer step")
    a("--seed", type=int, default=0, help="seeds the augmentation, initialisation and batch order")
    a("--split-seed", type=int, default=0,
      help="seeds the train/validation split (apart from --seed: runs of several seeds validate on the same images)")
    a("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto: cuda, then mps, then cpu")
    a("--workers", type=int, default=2, help="processes that decode JPEGs when the cache is built")
    a("--no-amp", action="store_true", help="no mixed precision on GPU (CPU always runs float32)")
    a("--compile", action="store_true", help="torch.compile the forward pass (opt-in; slow to start)")
    a("--viz-every", type=int, default=0, help="prediction panels every N epochs (0: about 4 per run)")
    a("--resume", action="store_true", help="continue the run in --out from its last.pt (start it if it has none)")
    a("--overwrite", action="store_true", help="replace an existing run in --out")
    args = p.parse_args(argv)
    # The flags on the command line, as argparse itself resolved them (abbreviations, --flag=value): parse again
    # with every default suppressed.
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(p.parse_args(argv)))
    if args.image_size % 32:
        p.error(f"--image-size {args.image_size} is not divisible by 32 (the encoder downsamples 32x); try 128 or 160")
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be at least 0 and below 1")
    if not 0 <= args.ema < 1:
        p.error("--ema must be at least 0 and below 1 (e.g. 0.99)")
    return args, given


def prepare_run_dir(args):
    """Create --out, or refuse to touch an existing run unless --resume or --overwrite says what to do."""
    out = Path(args.out)
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if args.resume:
        if not (out / "last.pt").exists():  # e.g. `make best RESUME=1`: the seeds after the interrupted one
            print(f"--resume: {out}/last.pt does not exist (no epoch finished there yet); starting the run")
    elif existing and not args.overwrite:
        raise SystemExit(f"{out} already holds a run ({', '.join(existing)}). "
                         "Add --resume to continue it or --overwrite to replace it (make ... RESUME=1 / OVERWRITE=1).")
    elif existing:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def lr_factor(step, total_steps, warmup_steps, schedule):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return 1.0


def make_optimizer(model, args):
    if args.freeze_encoder:
        groups = [{"params": model.decoder_parameters(), "lr": args.lr}]
    else:
        groups = [{"params": model.encoder.parameters(), "lr": args.lr * args.encoder_lr_scale},
                  {"params": model.decoder_parameters(), "lr": args.lr}]
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=args.weight_decay)
    return torch.optim.RMSprop(groups, weight_decay=args.weight_decay)


@torch.no_grad()
def update_ema(ema, model, decay, updates):
    """ema = decay * ema + (1 - decay) * model, buffers included; a lower decay for the first updates lets the
    random initial weights fade quickly."""
    decay = min(decay, (1 + updates) / (10 + updates))
    pairs = list(zip(ema.state_dict().values(), model.state_dict().values()))
    floats = [pair for pair in pairs if pair[0].is_floating_point()]
    torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - decay)  # one call for all tensors
    for averaged, current in pairs:
        if not averaged.is_floating_point():  # counters, such as BatchNorm's num_batches_tracked
            averaged.copy_(current)


@torch.no_grad()
def encode_all(model, images, batch_size, device, amp):
    """The frozen encoder's features of every image, computed once ([tensor per tap], rows = images)."""
    feats = None
    for start in tqdm(range(0, len(images), batch_size), desc="encoding (frozen encoder, once)", leave=False):
        with autocast(device, amp):
            out = model.encode(images[start:start + batch_size].to(device))
        out = [f.float() for f in out]
        feats = [[f] for f in out] if feats is None else [acc + [f] for acc, f in zip(feats, out)]
    return [torch.cat(f) for f in feats]


def main(argv=None):
    args, given = parse_args(argv)
    out = prepare_run_dir(args)
    resuming = args.resume and (out / "last.pt").exists()
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True) if resuming else None
    if last:  # a resumed run keeps its own configuration
        changed = {k: getattr(args, k) for k in RESUMABLE if k in given}  # e.g. more --epochs, another --device
        args = argparse.Namespace(**{**vars(args), **last["config"], **changed, "resume": True, "overwrite": False})
        if "split_seed" not in last["config"]:  # runs from before --split-seed split by --seed
            args.split_seed = args.seed
    config = vars(args)
    device = pick_device(args.device)
    amp = not args.no_amp
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)

    # Data: decoded once into uint8 tensors, split before augmentation, held in memory (on the GPU if there is one).
    full = data.load_split(args.data_dir, "train", args.image_size, args.cache_dir, args.workers)
    test = data.load_split(args.data_dir, "test", args.image_size, args.cache_dir, args.workers)
    train_idx, val_idx = data.split_indices(len(full["images"]), args.val_fraction, args.split_seed)
    train_images, train_masks = data.augment(full["images"][train_idx], full["masks"][train_idx],
                                             args.aug_copies, args.seed)
    val_images, val_masks = full["images"][val_idx], full["masks"][val_idx]
    held_out = len(val_idx) > 0  # --val-fraction 0: no validation; every epoch's checkpoint is best.pt
    # Panels show validation images, or without them training images (augment() puts the originals first).
    viz_idx = torch.randperm(len(val_idx) if held_out else len(train_idx),
                             generator=torch.Generator().manual_seed(args.split_seed))[:6]
    print(f"{len(train_idx)} training images x{args.aug_copies + 1} = {len(train_images)}, "
          f"{len(val_idx)} validation, {len(test['images'])} test; device {device}")

    model = SegNet(args.encoder_weights, args.skips, args.freeze_encoder, tuple(args.decoder_widths)).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval() if args.ema else None
    kept = model if ema is None else ema  # the weights that are validated, saved as "model" and tested
    runfiles.write_json(out / "config.json", config)  # only now: bad data or weights leave no half-made run
    optimizer = make_optimizer(model, args)
    steps_per_epoch = math.ceil(len(train_images) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch, args.schedule))
    fp16 = amp and device.type != "cpu" and not (device.type == "cuda" and torch.cuda.is_bf16_supported())
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    history, best_iou, start_epoch = [], -1.0, 0
    if last:
        model.load_state_dict(last.get("trained_model", last["model"]))
        if ema is not None:
            ema.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        scaler.load_state_dict(last["scaler"])
        history, best_iou, start_epoch = last["history"], last["best_iou"], last["epoch"]
        print(f"resuming {out} after epoch {start_epoch}")

    if device.type != "cpu":  # the whole (small) training set lives on the GPU; test batches copy from pinned memory
        train_images, train_masks, val_images, val_masks = (
            t.to(device) for t in (train_images, train_masks, val_images, val_masks))
        test["images"] = test["images"].pin_memory() if device.type == "cuda" else test["images"]
    cached = args.freeze_encoder and not args.no_feature_cache and not args.random_aug
    if cached:  # a frozen encoder computes the same features every epoch: compute them once
        model.eval()
        train_inputs = encode_all(model, train_images, 2 * args.batch_size, device, amp)
        val_inputs = encode_all(model, val_images, 2 * args.batch_size, device, amp) if held_out else []
    else:
        train_inputs, val_inputs = [train_images], [val_images]

    def forward_of(net):
        """net's logits from a batch of train_inputs/val_inputs (features when cached, else images)."""
        fn = net.decode if cached else lambda batch: net(batch[0])
        return torch.compile(fn) if args.compile else fn
    forward = forward_of(model)
    kept_forward = forward if ema is None else forward_of(ema)
    panel_inputs, panel_images, panel_masks = ((val_inputs, val_images, val_masks) if held_out
                                               else (train_inputs, train_images, train_masks))

    def handle_sigterm(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handle_sigterm)
    resume_hint = f"python train.py --out {out} --resume (or: make <experiment> RESUME=1)"
    try:
        for epoch in range(start_epoch, args.epochs):
            model.train()
            started, data_seconds, total_loss = time.perf_counter(), 0.0, 0.0
            rng = torch.Generator().manual_seed(args.seed + epoch)  # batch order and random augmentation
            order = torch.randperm(len(train_images), generator=rng)
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
            for step in bar:
                t0 = time.perf_counter()
                idx = order[step * args.batch_size:(step + 1) * args.batch_size].to(train_masks.device)
                batch = data.take(train_inputs, idx, device)
                masks = train_masks[idx].to(device, non_blocking=True)
                if args.random_aug:
                    batch[0], masks = data.random_distort(batch[0], masks, rng)
                data_seconds += time.perf_counter() - t0
                with autocast(device, amp):
                    loss = LOSSES[args.loss](forward(batch), masks)
                value = loss.item()  # the one host-device sync of a step
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss is {value} at epoch {epoch + 1}, step {step + 1}. {out}/last.pt holds the "
                        f"last good epoch. Try a lower --lr (now {args.lr}) or --no-amp.")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    update_ema(ema, model, args.ema, epoch * steps_per_epoch + step + 1)
                total_loss += value * len(idx)
                bar.set_postfix(loss=f"{value:.4f}")
            model.eval()
            if held_out:
                val, _ = evaluate(kept_forward, val_inputs, val_masks, args.loss, 2 * args.batch_size, device, amp)
            else:
                val = dict.fromkeys(("loss", "iou", "dice"), math.nan)
            seconds = time.perf_counter() - started
            history.append({"epoch": epoch + 1, "train_loss": total_loss / len(train_images),
                            "val_loss": val["loss"], "val_iou": val["iou"], "val_dice": val["dice"],
                            "lr": optimizer.param_groups[-1]["lr"], "seconds": seconds, "data_seconds": data_seconds})
            is_best = val["iou"] > best_iou or not held_out
            best_iou = max(best_iou, val["iou"])
            state = {"model": kept.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                     "history": history, "best_iou": best_iou, "config": config}
            if ema is not None:
                state["trained_model"] = model.state_dict()  # what --resume trains on from
            runfiles.atomic_save(state, out / "last.pt")
            if is_best:
                runfiles.atomic_save(state, out / "best.pt")
            runfiles.write_csv(out / "history.csv", history)
            visualize.plot_curves(history, out / "curves.png", out.name)
            viz_every = args.viz_every or max(1, args.epochs // 4)
            if (epoch + 1) % viz_every == 0 or epoch + 1 == args.epochs:
                panel_batch = [t[viz_idx.to(t.device)] for t in panel_inputs]
                logits = predict_logits(kept_forward, panel_batch, 64, device, amp)
                visualize.save_panel(panel_images[viz_idx.to(panel_images.device)].cpu(),
                                     panel_masks[viz_idx.to(panel_masks.device)].cpu(), logits,
                                     out / f"panel_epoch{epoch + 1:03d}.png", f"{out.name}, epoch {epoch + 1}")
            scores = (f"val loss {val['loss']:.4f}  val IoU {val['iou']:.4f}  val Dice {val['dice']:.4f}  "
                      if held_out else "no validation split  ")
            mark = "  *best" if is_best and held_out else ""
            print(f"epoch {epoch + 1:3d}/{args.epochs}  train loss {history[-1]['train_loss']:.4f}  {scores}"
                  f"{seconds:.0f}s (data {100 * data_seconds / seconds:.1f}%){mark}", flush=True)
    except KeyboardInterrupt:
        done = history[-1]["epoch"] if history else 0
        saved = f"{out}/last.pt holds epoch {done}" if done else "no epoch had finished"
        print(f"\ninterrupted during epoch {done + 1}; {saved}. Resume with: {resume_hint}", file=sys.stderr)
        raise SystemExit(130) from None
    except FloatingPointError as e:
        raise SystemExit(f"training stopped: {e}") from None
    except torch.OutOfMemoryError:
        raise SystemExit(f"out of {device.type} memory at batch size {args.batch_size}. Try a smaller --batch-size "
                         f"(e.g. {max(1, args.batch_size // 2)}) or a smaller --image-size.") from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    # Test: the best checkpoint (by validation IoU; the last without validation), through the whole model.
    best = torch.load(out / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    model.eval()
    summary, per_image = score_model(model, test, args.loss, 2 * args.batch_size, device, amp)
    write_results(out, "test", summary, per_image, test["ids"])
    print(f"test (best epoch {best['epoch']}, {summary['n_images']} images): loss {summary['loss']:.4f}  "
          f"IoU {summary['iou']:.4f}  Dice {summary['dice']:.4f}  with flip TTA: IoU {summary['tta_iou']:.4f}  "
          f"at full resolution: IoU {summary['fullres_iou']:.4f} -> {out}/test_metrics.json")
    return summary


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
