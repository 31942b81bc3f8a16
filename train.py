"""Train the MobileNetV2 segmentation model on one or more data folders (ISIC 2016 Part 1 by default; any layout of
README: Data); score the best checkpoint on the test split.

Every run writes one folder (--out): config.json, history.csv, last.pt, best.pt, test_metrics.json,
test_per_image.csv, curves.png and prediction panels. Ctrl-C keeps last.pt; --resume continues.

    python train.py --freeze-encoder --loss bce --optimizer rmsprop --out runs/exp1-bce
"""
import argparse
import copy
import dataclasses
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import augment
from data import copies_per_folder, load_data
from lib import cli, distributed, run_folder, saving
from lib.checkpoints import architecture_of, read_checkpoint
from lib.device import autocast, pick_device
from lib.errors import UsageError
from lib.features import encode_all
from lib.scoring import evaluate, score_model
from losses import LOSSES
from model import DECODER_WIDTHS, build_model, update_ema

# Flags that may be given anew when a run is resumed; every other flag is taken from the run's config.json.
RESUMABLE = ("epochs", "device", "workers", "cache_dir", "data_dir", "compile", "cudnn_benchmark")
# config.json's keys that are no flags to take from another run (--config): where it ran and what it recorded
RECORDS = ("out", "resume", "overwrite", "config", "augmentations", "code")
SYNC_EVERY = 10  # training steps between reads of the loss from the device (each read waits for the GPU)


def build_parser(add_help=True):
    """train.py's flags, in groups (FLAG_GROUPS)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter, add_help=add_help)
    for name, add_flags in FLAG_GROUPS.items():
        add_flags(p.add_argument_group(name))
    return p


def given_flags(argv):
    """{flag: value} of the flags given on the command line alone: every default left out."""
    parser = build_parser(add_help=False)  # --help: the parser with defaults prints it
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_known_args(argv)[0])


def data_flags(g):
    """train.py's data flags: flags added to the argument group g."""
    cli.add_data_dir_flag(g, "several: train on the union of their training splits, validate on the union of "
                          "their validation splits, test on each test split apart", several=True)
    cli.add_cache_dir_flag(g)
    g.add_argument("--workers", type=int, default=2, help="processes that decode JPEGs when the cache is built")
    g.add_argument("--memory-map", default=False, action="store_true",
                   help="keep the decoded images on disk (memory-mapped files in --cache-dir) and read each batch "
                        "from there: for training sets larger than memory; needs --aug-copies 0 (use --random-aug) "
                        "and one --data-dir")
    g.add_argument("--image-size", type=int, default=128,
                   help="images and masks are resized to this square size (multiple of 32)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of training images held out for validation (0: train on all of them; best.pt is the "
                        "last epoch)")
    g.add_argument("--split-seed", type=int, default=0,
                   help="seeds the train/validation split (apart from --seed: runs of several seeds validate on the "
                        "same images)")


def model_flags(g):
    """train.py's model flags: flags added to the argument group g."""
    g.add_argument("--encoder-weights", default="imagenet",
                   help="'imagenet' (torchvision download), 'none' (random), or a MobileNetV2 state_dict file")
    g.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights instead of --encoder-weights: fine-tuning a trained "
                        "model (a train.py best.pt, or models/lesion_segmenter.pt as make adapt does); its --skips, "
                        "--decoder-widths and --image-size are kept")
    g.add_argument("--freeze-encoder", default=False, action="store_true",
                   help="train the decoder only; the encoder stays fixed")
    g.add_argument("--no-feature-cache", default=False, action="store_true",
                   help="with --freeze-encoder, run the encoder at every step instead of once per run (same results, "
                        "slower)")
    g.add_argument("--skips", default=False, action="store_true",
                   help="feed encoder stages into the decoder (U-Net style skip connections)")
    g.add_argument("--decoder-widths", type=int, nargs=5, default=list(DECODER_WIDTHS), metavar="C",
                   help="decoder channels at 1/16, 1/8, 1/4, 1/2 and full resolution")


def optimisation_flags(g):
    """train.py's optimisation flags: flags added to the argument group g."""
    g.add_argument("--loss", default="bce", choices=sorted(LOSSES), help="the training loss: one of losses.py's LOSSES")
    g.add_argument("--optimizer", default="adam", choices=["adam", "rmsprop"],
                   help="Adam or RMSprop (PyTorch defaults otherwise)")
    g.add_argument("--lr", type=float, default=1e-3,
                   help="learning rate (of the decoder when --encoder-lr-scale is set)")
    g.add_argument("--encoder-lr-scale", type=float, default=1.0,
                   help="encoder learning rate = lr x this, when fine-tuning")
    g.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty of the optimizer")
    g.add_argument("--schedule", default="constant", choices=["constant", "cosine"], help="learning rate over the run")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear learning-rate warm-up before the schedule")
    g.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate, save and test an exponential moving average of the weights with this decay per "
                        "step (e.g. 0.99); 0: the weights as trained")
    g.add_argument("--epochs", type=int, default=15, help="passes over the augmented training set")
    g.add_argument("--batch-size", type=int, default=32, help="images per optimizer step")
    g.add_argument("--seed", type=int, default=0, help="seeds the augmentation, initialisation and batch order")


def augmentation_flags(g):
    """train.py's augmentation flags: flags added to the argument group g."""
    g.add_argument("--aug-copies", type=int, nargs="+", default=[3], metavar="N",
                   help="flipped and turned copies added per training image (augment.FLIPS; 3: 4x data); with several "
                        "--data-dir one number for all, or one each (3 0: copies of the first folder's images only)")
    g.add_argument("--random-aug", default=False, action="store_true",
                   help="also rotate (any angle), zoom (0.8-1.25x) and colour-jitter every batch at random; turns the "
                        "feature cache off")
    g.add_argument("--shift-aug", type=float, default=0.0, metavar="SHARE",
                   help="with --random-aug: this share of the images (0..1) gets the robustness suite's kinds of "
                        "shift instead (augment.random_shift): zoom out to 0.55x in an edge-coloured border, stretch, "
                        "colour casts, gamma, blur, noise, hair")


def output_flags(g):
    """train.py's output flags: flags added to the argument group g."""
    g.add_argument("--out", default="runs/train", help="run folder for config, history, checkpoints, metrics and plots")
    g.add_argument("--viz-every", type=int, default=0, help="prediction panels every N epochs (0: about 4 per run)")
    g.add_argument("--config", metavar="CONFIG_JSON",
                   help="start from a saved run's flags (runs/<run>/config.json); flags given here override them")
    g.add_argument("--resume", default=False, action="store_true",
                   help="continue the run in --out from its last.pt (start it if it has none)")
    g.add_argument("--overwrite", default=False, action="store_true", help="replace an existing run in --out")
    g.add_argument("--no-test", default=False, action="store_true",
                   help="leave the test split unscored (still held out): make adapt's adapt.py scores it under its "
                        "own protocol")


def device_speed_flags(g):
    """train.py's device and speed flags: flags added to the argument group g."""
    g.add_argument("--no-amp", default=False, action="store_true",
                   help="no mixed precision on GPU (CPU always runs float32)")
    g.add_argument("--compile", default=False, action="store_true",
                   help="torch.compile the forward pass (opt-in; slow to start)")
    g.add_argument("--sync-bn", default=False, action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over the whole global batch (SyncBatchNorm), as "
                        "one process has them; without it each process normalises its own share")
    g.add_argument("--cudnn-benchmark", default=False, action="store_true",
                   help="let cuDNN time its kernels for each new input shape (a slower first epoch; see "
                        "docs/speed.md)")
    cli.add_device_flag(g)


FLAG_GROUPS = {"data": data_flags, "model": model_flags, "optimisation": optimisation_flags,
               "augmentation": augmentation_flags, "output": output_flags, "device and speed": device_speed_flags}


def parse_args(argv=None):
    """(flags, names of the flags given on the command line); refuses values that cannot train (exit 2)."""
    parser, given = build_parser(), given_flags(argv)
    if "config" in given:  # a saved run's flags become the defaults; flags on the command line still win
        saved = run_folder.saved_flags(given["config"])
        parser.set_defaults(**{k: v for k, v in saved.items() if k not in RECORDS})
    init_from = given.get("init_from", parser.get_default("init_from"))
    architecture = architecture_of(init_from) if init_from else {}
    parser.set_defaults(**architecture, **({"encoder_weights": "none"} if init_from else {}))
    args = parser.parse_args(argv)
    for key, value in architecture.items():
        if getattr(args, key) != value:
            flag = "--" + key.replace("_", "-")
            parser.error(f"{flag} {getattr(args, key)}: {init_from} was trained with {flag} {value}, and its weights "
                         f"only fit that model; leave {flag} out")
    args.random_aug = args.random_aug or args.shift_aug > 0
    given = set(given)
    checks = [(args.image_size % 32 == 0 and args.image_size > 0,
               f"--image-size {args.image_size} is not a positive multiple of 32 (the encoder downsamples 32x); "
               "try 128 or 160"),
              (0 <= args.val_fraction < 1, "--val-fraction must be at least 0 and below 1"),
              (0 <= args.ema < 1, "--ema must be at least 0 and below 1 (e.g. 0.99)"),
              (args.epochs >= 1, "--epochs must be at least 1"),
              (args.batch_size >= 1, "--batch-size must be at least 1"),
              (args.lr > 0 and math.isfinite(args.lr), "--lr must be a positive number (e.g. 1e-3)"),
              (args.encoder_lr_scale >= 0, "--encoder-lr-scale must be at least 0"),
              (args.weight_decay >= 0, "--weight-decay must be at least 0"),
              (args.warmup_epochs >= 0, "--warmup-epochs must be at least 0"),
              (min(args.aug_copies) >= 0, "--aug-copies must be at least 0"),
              (len(args.aug_copies) in (1, len(args.data_dir)), "--aug-copies: one number, or one per --data-dir"),
              (0 <= args.shift_aug <= 1, "--shift-aug is a share of the images, from 0 to 1 (e.g. 0.5)"),
              (args.workers >= 0, "--workers must be at least 0"),
              (not args.memory_map or (args.aug_copies == [0] and len(args.data_dir) == 1),
               "--memory-map keeps the images on disk: give it --aug-copies 0 (copies would fill memory; "
               "--random-aug augments each batch instead) and one --data-dir"),
              (args.viz_every >= 0, "--viz-every must be at least 0"),
              (args.encoder_weights in ("imagenet", "none") or Path(args.encoder_weights).is_file(),
               f"--encoder-weights {args.encoder_weights}: no such file (use 'imagenet', 'none' or a path)")]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args, given


def make_optimizer(model, args, device):
    if args.freeze_encoder:
        groups = [{"params": model.decoder_parameters(), "lr": args.lr}]
    else:
        groups = [{"params": model.encoder.parameters(), "lr": args.lr * args.encoder_lr_scale},
                  {"params": model.decoder_parameters(), "lr": args.lr}]
    if args.optimizer == "adam":  # fused: one kernel per step for all parameters on a GPU
        return torch.optim.Adam(groups, weight_decay=args.weight_decay, fused=device.type == "cuda")
    return torch.optim.RMSprop(groups, weight_decay=args.weight_decay)


def lr_factor(step, total_steps, warmup_steps, schedule):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return 1.0


def model_inputs(model, args, splits, device, amp):
    """(training inputs, validation inputs, forward_of): images, or with a frozen encoder (and no random
    augmentation) its features computed once; forward_of(net) maps a batch of those inputs to logits."""
    train_images, val_images = splits["train"][0], splits["val"][0]
    if args.freeze_encoder and not args.no_feature_cache and not args.random_aug and distributed.world_size() == 1:
        model.eval()
        train_inputs = encode_all(model, train_images, 2 * args.batch_size, device, amp)
        val_inputs = encode_all(model, val_images, 2 * args.batch_size, device, amp) if len(val_images) else None
        return train_inputs, val_inputs, lambda net: lambda rows: net.decode(rows.tensors)
    return train_images, val_images, lambda net: net


@dataclasses.dataclass
class Trainer:
    """What a training step uses and changes, kept together: the model and its forward pass, the optimizer with its
    schedule and loss scaler, the weight average (None without --ema), device and precision, and the loss at the
    start of the run, which the divergence check compares with."""
    model: torch.nn.Module
    forward: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    ema: object
    device: torch.device
    amp: bool
    loss: object  # the run's loss function, LOSSES[--loss]
    start_loss: float = None


def train_one_epoch(trainer, inputs, masks, args, epoch):
    """One pass over the training inputs in a seeded order. Returns (mean loss per image, seconds getting
    batches). The loss is read from the device every SYNC_EVERY steps, not at every step: each read makes the host
    wait for the GPU."""
    t, device = trainer, trainer.device
    t.model.train()
    rng = torch.Generator().manual_seed(args.seed + epoch)  # batch order and random augmentation
    order = torch.randperm(len(masks), generator=rng).to(masks.device)
    batches = [order[start:start + args.batch_size] for start in range(0, len(order), args.batch_size)]
    augment_batch = augment.for_epoch([len(idx) for idx in batches], rng, args.seed + epoch, args.image_size, device,
                                      args.random_aug, args.shift_aug)
    values, pending, data_seconds = [], [], 0.0
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, disable=None)
    for step, global_idx in enumerate(bar):
        t0 = time.perf_counter()
        first, ((lo, hi), share) = step * args.batch_size, distributed.my_share(len(global_idx))
        idx = global_idx[lo:hi]
        batch, target = inputs[idx].to(device, non_blocking=True), masks[idx].to(device, non_blocking=True)
        batch, target = augment_batch(batch, target, first + lo, first + hi)
        data_seconds += time.perf_counter() - t0
        with autocast(device, t.amp):
            loss = t.loss(t.forward(batch), target)
        loss, to_backward = distributed.global_mean_parts(loss, share)  # under torchrun: this process's part
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(to_backward).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.scheduler.step()
        if t.ema is not None:
            update_ema(t.ema, t.model, args.ema, epoch * len(batches) + step + 1)
        pending.append(loss.detach())
        if len(pending) == SYNC_EVERY or step == len(batches) - 1:
            values += run_folder.checked_losses(distributed.global_losses(pending, share), epoch, len(values), t)
            pending = []
            bar.set_postfix(loss=f"{values[-1]:.4f}")
    return sum(value * len(idx) for value, idx in zip(values, batches)) / len(masks), data_seconds


def test_best_checkpoint(model, out, tests, args, device, amp, loss):
    """Score best.pt (by validation IoU; the last epoch without validation) on each test split, through the whole
    model; writes <name>_metrics.json and <name>_per_image.csv per split. Returns the first split's summary."""
    best_file = out / "best.pt"
    if not best_file.exists():  # removed by hand after it was written: its weights are gone, last.pt's are not
        print(f"{best_file} is missing: scoring last.pt instead (the weights of the last epoch)")
        best_file = out / "last.pt"
    best = torch.load(best_file, map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    model.eval()
    summaries = []
    for name, test in tests.items():
        summary, per_image = score_model(model, test, loss, 2 * args.batch_size, device, amp)
        path = saving.write_results(out, name, summary, per_image, test["ids"])
        print(f"{name} (best epoch {best['epoch']}, {cli.plural(summary['n_images'], 'image')}): loss "
              f"{summary['loss']:.4f}  IoU {summary['iou']:.4f}  Dice {summary['dice']:.4f}  with flip TTA: IoU "
              f"{summary['tta_iou']:.4f}  at full resolution: IoU {summary['fullres_iou']:.4f} -> {path}")
        summaries.append(summary)
    if not tests:
        print(f"no test split in {', '.join(args.data_dir)}: score other data with evaluate.py --checkpoint "
              f"{out}/best.pt --data-dir ...")
    return summaries[0] if summaries else None


def make_trainer(model, ema, args, n_train, device, amp):
    """A new run's Trainer: the optimizer, its warm-up and schedule by step, the loss scaler (float16 only)."""
    optimizer = make_optimizer(model, args, device)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch, args.schedule))
    fp16 = amp and device.type != "cpu" and not (device.type == "cuda" and torch.cuda.is_bf16_supported())
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    return Trainer(model, None, optimizer, scheduler, scaler, ema, device, amp, LOSSES[args.loss])


def train_epochs(trainer, splits, history, best_iou, args, out, config):
    """The epochs after those in `history`: train, validate the kept weights (the average with --ema), save
    checkpoints, report."""
    t, device, amp = trainer, trainer.device, trainer.amp
    train_inputs, val_inputs, forward_of = model_inputs(t.model, args, splits, device, amp)
    compiled = torch.compile if args.compile else (lambda fn: fn)
    kept = t.model if t.ema is None else t.ema  # the weights that are validated, saved as "model" and tested
    trained = t.model if distributed.world_size() == 1 else DistributedDataParallel(t.model)  # syncs gradients
    t.forward, kept_forward = compiled(forward_of(trained)), compiled(forward_of(kept))
    (train_images, train_masks), (val_images, val_masks) = splits["train"], splits["val"]
    held_out, idx = len(val_masks) > 0, splits["panel_idx"]
    panel_from = (val_inputs, val_images, val_masks, "validation") if held_out else (
        train_inputs, train_images, train_masks, "training")
    panel = (kept_forward, *(x[idx] for x in panel_from[:3]), panel_from[3])
    for epoch in range(len(history), args.epochs):
        started = time.perf_counter()
        train_loss, data_seconds = train_one_epoch(t, train_inputs, train_masks, args, epoch)
        t.model.eval()
        val = (evaluate(kept_forward, val_inputs, val_masks, t.loss, 2 * args.batch_size, device, amp)[0]
               if held_out else dict.fromkeys(("loss", "iou", "dice"), math.nan))
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
                        "val_iou": val["iou"], "val_dice": val["dice"],
                        "lr": t.optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - started,
                        "data_seconds": data_seconds})
        is_best = val["iou"] > best_iou or not held_out
        best_iou = max(best_iou, val["iou"])
        if distributed.is_main():  # one process writes the run's files
            run_folder.save_checkpoints(out, t, history, best_iou, config, is_best)
            run_folder.report_epoch(out, args, history, is_best, panel, device, amp)


def main(argv=None):
    args, given = parse_args(argv)
    out = run_folder.check_run_dir(args.out, args.resume, args.overwrite)
    # the lock before the data: a second run on this folder is refused at once
    with distributed.main_only(run_folder.lock_run_dir(out, args.resume, args.overwrite)), \
            distributed.quiet_unless_main():
        args, last = run_folder.resumed_config(args, given, out, RESUMABLE)
        config, amp = vars(args), not args.no_amp
        device = distributed.start(pick_device(args.device))  # under torchrun: joins the other processes
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        torch.manual_seed(args.seed)
        splits = load_data(args, device)
        model = build_model(config, pretrained=not args.init_from).to(device)
        if args.init_from:
            model.load_state_dict(read_checkpoint(args.init_from)["model"])
        if args.sync_bn and distributed.world_size() > 1:
            if device.type != "cuda":
                raise UsageError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm has no CPU version; on CPUs leave it "
                                 "out (each process then normalises its own share of the batch)")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters, same checkpoint keys
        ema = copy.deepcopy(model).requires_grad_(False).eval() if args.ema else None
        # only now: bad flags, data or weights leave nothing behind
        with distributed.main_only(run_folder.run_log(out, args.resume, args.overwrite)):
            config["augmentations"] = augment.applied(copies_per_folder(args), args.random_aug, args.shift_aug)
            if distributed.is_main():
                config["code"] = run_folder.record_code(out)
                saving.write_json(out / "config.json", config)
            print(f"run {out}: {cli.plural(args.epochs, 'epoch')}, batch size {args.batch_size}, --lr {args.lr}, "
                  f"--seed {args.seed}, data {' '.join(args.data_dir)}, device {device}")  # a mistyped variable shows
            print(splits["sizes"] + "".join(f"\naugmentation, {line}" for line in config["augmentations"]))
            if config.get("code", {}).get("dirty"):
                print(f"the code differs from commit {config['code']['commit'][:7]}: the difference is in "
                      f"{out}/code.diff")
            trainer = make_trainer(model, ema, args, len(splits["train"][0]), device, amp)
            history, best_iou = run_folder.restore(last, out, trainer)
            with run_folder.stop_cleanly(out, history, device, args):
                train_epochs(trainer, splits, history, best_iou, args, out, config)
            distributed.stop()
            if args.no_test or not distributed.is_main():
                return None
            return test_best_checkpoint(model, out, splits["tests"], args, device, amp, trainer.loss)


if __name__ == "__main__":
    cli.run(main)
