import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, train_args

import evaluate
import train
from lib import revision, saving
from lib.errors import TrainingError, UsageError
from model import update_ema

LEARNED = ("epoch", "train_loss", "val_loss", "val_iou", "val_dice", "lr")  # history columns that are not timings


def learned(history):
    return [{k: row[k] for k in LEARNED} for row in history]


def test_one_epoch_writes_every_run_file_and_evaluate_reproduces_the_test_metrics(synthetic, tmp_path):
    out = tmp_path / "run"
    summary = train.main(train_args(synthetic[0], out))
    for name in ("config.json", "history.csv", "last.pt", "best.pt", "test_metrics.json", "test_per_image.csv",
                 "curves.png", "panel_epoch001.png"):
        assert (out / name).stat().st_size > 0, name
    config = saving.read_json(out / "config.json")
    assert config["image_size"] == 64 and config["loss"] == "bce"
    history = saving.read_csv(out / "history.csv")
    assert len(history) == 1 and set(LEARNED) | {"seconds"} <= set(history[0])
    metrics = saving.read_json(out / "test_metrics.json")
    assert {"loss", "iou", "dice", "n_images"} <= set(metrics) and metrics["n_images"] == 12
    assert 0 <= metrics["iou"] <= metrics["dice"] <= 1 and metrics == pytest.approx(summary)
    assert len(saving.read_csv(out / "test_per_image.csv")) == 12

    # re-scoring never replaces the run's own results: without --tta it writes beside them
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--data-dir", str(synthetic[0]),
                   "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--workers", "0"])
    assert saving.read_json(out / "test_metrics.json") == metrics
    again = saving.read_json(out / "test_eval_metrics.json")
    assert "tta_iou" not in again and (out / "test_eval_per_image.csv").exists()
    dirty = bool(subprocess.run(["git", "diff", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout)
    assert again["code"]["dirty"] == dirty and len(again["code"]["commit"]) == 40  # the code that scored it
    assert (out / "test_eval_code.diff").exists() == dirty
    for key in ("loss", "iou", "dice", "n_images"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)

    # --split val re-scores the images training held out: the same IoU as the best epoch's validation IoU
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--data-dir", str(synthetic[0]), "--split", "val",
                   "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--workers", "0"])
    val = saving.read_json(out / "val_metrics.json")
    assert val["n_images"] == 4 and val["iou"] == pytest.approx(history[0]["val_iou"], abs=1e-5)


def test_seeds_share_the_validation_split_and_evaluate_scores_their_ensemble(synthetic, tmp_path):
    train.main(train_args(synthetic[0], tmp_path / "runs" / "a", "--seed", "1"))
    train.main(train_args(synthetic[0], tmp_path / "runs" / "b", "--seed", "2", "--split-seed", "3"))
    common = ["--data-dir", str(synthetic[0]), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
              "--workers", "0"]
    a, b = (str(tmp_path / "runs" / r / "best.pt") for r in "ab")
    # --seed 1 held out --split-seed 0's images: re-scoring them gives the run's own validation IoU
    evaluate.main(["--checkpoint", a, "--split", "val", *common])
    val = saving.read_json(tmp_path / "runs" / "a" / "val_metrics.json")
    assert val["iou"] == pytest.approx(saving.read_csv(tmp_path / "runs" / "a" / "history.csv")[0]["val_iou"],
                                       abs=1e-5)
    with pytest.raises(UsageError, match="held out different validation images"):
        evaluate.main(["--checkpoint", a, b, "--split", "val", *common])
    evaluate.main(["--checkpoint", a, b, *common])  # written to the folder that holds both runs
    ensemble = saving.read_json(tmp_path / "runs" / "test_metrics.json")
    assert ensemble["checkpoints"] == ["a/best.pt", "b/best.pt"]
    assert 0 <= ensemble["iou"] <= 1 and ensemble["n_images"] == 12


@pytest.mark.parametrize("frozen", [[], ["--freeze-encoder"]])
def test_val_fraction_zero_trains_on_every_image_and_keeps_the_last_epoch(synthetic, tmp_path, capsys, frozen):
    out = tmp_path / "run"
    train.main(train_args(synthetic[0], out, "--val-fraction", "0", "--epochs", "2", *frozen))
    printed = capsys.readouterr().out
    assert "40 training images, 0 validation" in printed
    assert "training on 80 images (40 originals)" in printed
    assert "augmentation, fixed_copies: 1 copy of each training image, made once, each unflipped or" in printed
    assert "augmentation, for_epoch: off (no --random-aug)" in printed
    history = saving.read_csv(out / "history.csv")
    assert len(history) == 2 and all(math.isnan(row["val_iou"]) for row in history)
    best, last = (torch.load(out / f, weights_only=True) for f in ("best.pt", "last.pt"))
    assert best["epoch"] == last["epoch"] == 2
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert (out / "panel_epoch002.png").stat().st_size > 0  # panels of training images instead
    with pytest.raises(UsageError, match="none was held out"):
        evaluate.main(["--checkpoint", str(out / "best.pt"), "--data-dir", str(synthetic[0]), "--split", "val",
                       "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--workers", "0"])


def test_feature_cache_matches_running_the_frozen_encoder_and_runs_are_deterministic(synthetic, tmp_path):
    flags = ["--freeze-encoder", "--skips", "--epochs", "2"]
    train.main(train_args(synthetic[0], tmp_path / "a", *flags))
    train.main(train_args(synthetic[0], tmp_path / "b", *flags))
    train.main(train_args(synthetic[0], tmp_path / "c", *flags, "--no-feature-cache"))
    a, b, c = (learned(saving.read_csv(tmp_path / r / "history.csv")) for r in "abc")
    assert a == b  # same seed, same machine: identical
    for row_a, row_c in zip(a, c):
        for key in LEARNED:
            assert row_a[key] == pytest.approx(row_c[key], rel=1e-4, abs=1e-5), key


def test_an_existing_run_is_not_overwritten_silently(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(train_args(synthetic[0], out, "--resume"))  # nothing to resume yet: the run starts
    assert "starting the run" in capsys.readouterr().out and len(saving.read_csv(out / "history.csv")) == 1
    with pytest.raises(UsageError, match="--resume to continue it, --overwrite to replace it, or another --out"):
        train.main(train_args(synthetic[0], out))
    train.main(train_args(synthetic[0], out, "--overwrite"))
    assert len(saving.read_csv(out / "history.csv")) == 1


def test_random_augmentation_trains_without_the_feature_cache(synthetic, tmp_path):
    runs = {"a": ["--random-aug"], "b": ["--random-aug"], "plain": [], "shift": ["--shift-aug", "0.5"],
            "shift again": ["--shift-aug", "0.5"]}
    for name, extra in runs.items():
        train.main(train_args(synthetic[0], tmp_path / name, "--freeze-encoder", *extra))
    a, b, plain, shift, shift_again = (learned(saving.read_csv(tmp_path / name / "history.csv")) for name in runs)
    assert a == b and shift == shift_again  # seeded: both runs drew the same augmentation
    assert len({a[0]["train_loss"], plain[0]["train_loss"], shift[0]["train_loss"]}) == 3  # which changed the data
    assert saving.read_json(tmp_path / "shift" / "config.json")["random_aug"]  # --shift-aug implies --random-aug


def test_non_finite_loss_stops_with_advice(synthetic, tmp_path, monkeypatch):
    monkeypatch.setitem(train.LOSSES, "bce", lambda logits, masks: (logits * float("nan")).mean())
    with pytest.raises(TrainingError, match=r"epoch 1, step 1.*lower --lr.*--no-amp"):
        train.main(train_args(synthetic[0], tmp_path / "run"))


def test_out_of_memory_names_the_batch_size(synthetic, tmp_path, monkeypatch):
    def oom(logits, masks):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setitem(train.LOSSES, "bce", oom)
    with pytest.raises(TrainingError, match="memory at batch size 16.*--batch-size"):
        train.main(train_args(synthetic[0], tmp_path / "run"))


@pytest.mark.parametrize("flags, message", [(["--image-size", "100"], "multiple of 32"),
                                            (["--loss", "dice"], "invalid choice"),
                                            (["--optimizer", "sgd"], "invalid choice"),
                                            (["--val-fraction", "1"], "below 1"),
                                            (["--ema", "1"], "below 1"),
                                            (["--shift-aug", "1.5"], "share of the images")])
def test_bad_flags_are_refused(synthetic, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        train.main(train_args(synthetic[0], tmp_path / "run", *flags))
    assert message in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_result(synthetic, tmp_path):
    flags = ["--epochs", "3", "--aug-copies", "3"]
    train.main(train_args(synthetic[0], tmp_path / "whole", *flags))

    out = tmp_path / "interrupted"
    command = [sys.executable, "train.py", *train_args(synthetic[0], out, *flags)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # also in the background
    deadline = time.time() + 120
    while not (out / "history.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # during epoch 2
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "last.pt holds epoch 1" in err
    assert len(saving.read_csv(out / "history.csv")) == 1

    train.main(train_args(synthetic[0], out, *flags, "--resume"))
    whole, resumed = (saving.read_csv(tmp_path / r / "history.csv") for r in ("whole", "interrupted"))
    assert learned(resumed) == learned(whole)
    test_whole, test_resumed = (json.loads((tmp_path / r / "test_metrics.json").read_text())
                                for r in ("whole", "interrupted"))
    assert test_resumed == test_whole


def test_ema_weights_are_validated_saved_and_tested_and_resume_keeps_both(synthetic, tmp_path):
    flags = ["--epochs", "2"]
    train.main(train_args(synthetic[0], tmp_path / "plain", *flags))
    train.main(train_args(synthetic[0], tmp_path / "ema", *flags, "--ema", "0.9"))
    train.main(train_args(synthetic[0], tmp_path / "resumed", *flags, "--ema", "0.9", "--epochs", "1"))
    train.main(["--out", str(tmp_path / "resumed"), "--resume", "--epochs", "2"])
    plain, ema, resumed = (saving.read_csv(tmp_path / r / "history.csv") for r in ("plain", "ema", "resumed"))
    assert learned(resumed) == learned(ema)
    # the average does not change what is trained, only what is validated
    assert [row["train_loss"] for row in ema] == [row["train_loss"] for row in plain]
    assert [row["val_loss"] for row in ema] != [row["val_loss"] for row in plain]
    best = torch.load(tmp_path / "ema" / "best.pt", weights_only=True)
    assert any(not torch.equal(best["model"][k], best["trained_model"][k]) for k in best["model"])
    # evaluate.py scores the averaged weights: the validation loss and IoU of the run's best epoch
    evaluate.main(["--checkpoint", str(tmp_path / "ema" / "best.pt"), "--data-dir", str(synthetic[0]), "--split",
                   "val", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--workers", "0"])
    val, row = saving.read_json(tmp_path / "ema" / "val_metrics.json"), ema[best["epoch"] - 1]
    assert (val["loss"], val["iou"]) == pytest.approx((row["val_loss"], row["val_iou"]), abs=1e-5)


def test_ema_update_starts_fast_then_uses_the_decay():
    ema, model = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
    model.num_batches_tracked.fill_(7)
    update_ema(ema, model, 0.99, updates=1)  # decay 2/11 at the first update, not 0.99
    assert ema.weight.tolist() == pytest.approx([2 / 11 * 1 + 9 / 11 * 2] * 3)
    assert ema.num_batches_tracked.item() == 7  # counters are copied, not averaged
    before = ema.weight.clone()
    update_ema(ema, model, 0.99, updates=10_000)
    assert ema.weight.tolist() == pytest.approx((0.99 * before + 0.01 * 2.0).tolist())


def test_learning_rate_schedule():
    assert train.lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)  # warm-up starts low
    assert train.lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert train.lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)  # half-way through the decay
    assert train.lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert train.lr_factor(99, 100, 0, "constant") == 1.0


def test_fine_tuning_gives_the_encoder_a_scaled_learning_rate(synthetic, tmp_path):
    out = tmp_path / "run"
    train.main(train_args(synthetic[0], out, "--skips", "--loss", "bce+dice", "--schedule", "cosine",
                          "--warmup-epochs", "0.5", "--encoder-lr-scale", "0.1", "--epochs", "2"))
    groups = torch.load(out / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert groups[0]["initial_lr"] == pytest.approx(0.1 * groups[1]["initial_lr"])
    history = saving.read_csv(out / "history.csv")
    assert history[0]["lr"] > history[1]["lr"] and history[1]["lr"] == pytest.approx(0, abs=1e-9)


def test_command_line_reports_bad_data_as_a_message_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--data-dir", str(tmp_path / "nowhere"),
                             "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: Missing folder(s)") and "Traceback" not in result.stderr
    assert "make data" in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()  # nothing to --overwrite after fixing the path


def test_resume_takes_the_runs_own_flags_and_can_extend_it(synthetic, tmp_path):
    out = tmp_path / "run"
    train.main(train_args(synthetic[0], out))
    train.main(["--out", str(out), "--resume", "--epochs", "2"])  # data, size, weights... come from config.json
    history = saving.read_csv(out / "history.csv")
    config = saving.read_json(out / "config.json")
    assert [row["epoch"] for row in history] == [1, 2]
    assert config["image_size"] == 64 and config["epochs"] == 2 and config["data_dir"] == [str(synthetic[0])]


def test_config_reruns_a_saved_run_and_the_console_is_kept_in_train_log(synthetic, tmp_path):
    first = tmp_path / "first"
    train.main(train_args(synthetic[0], first, "--skips", "--lr", "2e-3"))
    train.main(["--config", str(first / "config.json"), "--out", str(tmp_path / "again")])
    assert learned(saving.read_csv(tmp_path / "again" / "history.csv")) == learned(
        saving.read_csv(first / "history.csv"))
    assert saving.read_json(tmp_path / "again" / "config.json")["lr"] == 2e-3
    log = (first / "train.log").read_text()
    assert "training images" in log and "epoch   1/1" in log and "test (best epoch 1" in log


def test_a_change_to_a_file_that_is_not_utf8_is_recorded_and_stops_no_run(tmp_path):
    """A run records `git diff HEAD` (code.diff); a tracked file in Latin-1 (or a model file git took for text) once
    made that diff undecodable and stopped train.py before its first epoch."""
    def git(*words):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *words], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    (tmp_path / "notes.txt").write_bytes(b"caf\xe9\n")
    git("add", "notes.txt")
    git("commit", "-q", "-m", "notes")
    (tmp_path / "notes.txt").write_bytes(b"caf\xe9 cr\xe8me\n")
    assert "+caf\ufffd cr\ufffdme" in revision.git("diff", "HEAD", cwd=tmp_path)
