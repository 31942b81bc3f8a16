import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import visualize
from lib import plots, saving


def fake_history(epochs, start=0.5):
    return [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_iou": start + e / 100,
             "val_dice": start + 0.1 + e / 100, "lr": 1e-3, "seconds": 60.0} for e in range(1, epochs + 1)]


def test_curves_png_has_the_expected_size(tmp_path):
    plots.plot_curves(fake_history(5), tmp_path / "curves.png", "exp")
    with Image.open(tmp_path / "curves.png") as im:
        assert im.size == (1000, 400)  # figsize (10, 4) at 100 dpi
        assert np.asarray(im.convert("L")).std() > 10  # something is drawn


def test_panel_has_a_row_per_image(tmp_path):
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    masks = torch.zeros(3, 1, 32, 32)
    masks[..., 8:24, 8:24] = 1
    plots.save_panel(images, masks, masks * 10 - 5, tmp_path / "one.png", "t")
    plots.save_panel(images, masks, {"a": masks - 1, "b": masks, "c": masks}, tmp_path / "three.png", "t")
    with Image.open(tmp_path / "one.png") as one, Image.open(tmp_path / "three.png") as three:
        assert one.size[1] == three.size[1] > 3 * 200  # three rows of 2.2 inches
        assert three.size[0] > one.size[0]  # one column per prediction


def write_fake_run(runs, name, loss, iou, dice, epochs):
    run = runs / name
    run.mkdir(parents=True)
    saving.write_json(run / "config.json",
                        {"loss": loss, "optimizer": "adam", "freeze_encoder": name.startswith("exp1")})
    saving.write_csv(run / "history.csv", fake_history(epochs))
    saving.write_json(run / "test_metrics.json",
                        {"loss": 0.25, "iou": iou, "dice": dice, "tta_iou": iou - 0.01, "n_images": 10})


def test_report_table_lists_runs_in_order_with_reference(tmp_path):
    write_fake_run(tmp_path, "exp2-finetune", "bce", 0.81, 0.88, 3)
    write_fake_run(tmp_path, "exp1-iou", "iou", 0.79, 0.86, 2)
    # an ensemble folder as `make best` leaves it: member runs inside, the ensemble's test metrics beside them
    write_fake_run(tmp_path / "best", "seed0", "bce", 0.85, 0.9, 4)
    write_fake_run(tmp_path / "best", "seed1", "bce", 0.86, 0.91, 4)
    saving.write_json(tmp_path / "best" / "test_metrics.json",
                        {"loss": 0.2, "iou": 0.87, "dice": 0.92, "fullres_lcc_tta_iou": 0.88,
                         "fullres_lcc_tta_dice": 0.93,
                         "checkpoints": ["seed0/best.pt", "seed1/best.pt"]})
    (tmp_path / "unfinished").mkdir()
    runs = [r for r in map(visualize.read_run, sorted(tmp_path.glob("*/"))) if r]
    lines = visualize.report_table(runs).splitlines()
    assert len(lines) == 5
    assert lines[2] == ("| best | bce | adam | fine-tuned | 2 | 4 | 0.2000 | 0.8700 | 0.9200 | - | - | - | "
                        "0.8800 / 0.9300 | - | - | 8.0 min |")
    assert lines[3] == ("| exp1-iou | iou | adam | frozen | 1 | 2 | 0.2500 | 0.7900 | 0.8600 | 0.7800 | - | - | "
                        "- / - | 0.7724 | 0.8154 | 2.0 min |")
    assert lines[4].startswith("| exp2-finetune | bce | adam | fine-tuned | 1 | 3 | 0.2500 | 0.8100 | 0.8800 |")
    visualize.plot_comparison(runs, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 10_000


def test_eda_numbers_match_the_synthetic_lesions(synthetic, tmp_path):
    data_dir, areas = synthetic
    summary = visualize.eda(data_dir, tmp_path)
    train_ids = sorted(areas)[:40]
    expected = np.mean([areas[i] for i in train_ids])
    assert summary["train"]["n_images"] == 40 and summary["test"]["n_images"] == 12
    assert summary["train"]["lesion_area_fraction"]["mean"] == pytest.approx(expected, rel=1e-9)
    assert summary["train"]["lesions_touching_border"] == 0  # synthetic lesions sit in the middle
    assert 0 < summary["train"]["foreground_pixel_fraction"] < 0.3
    assert (tmp_path / "eda.png").stat().st_size > 10_000 and (tmp_path / "eda.json").exists()


def test_report_after_real_runs_finds_their_data_and_draws_every_picture(synthetic, tmp_path, capsys):
    from conftest import train_args

    import train
    runs = tmp_path / "runs"
    for name in ("exp1-bce", "exp2-finetune"):
        train.main(train_args(synthetic[0], runs / name, *(["--freeze-encoder"] if name == "exp1-bce" else [])))
    visualize.report(runs, tmp_path / "no-such-data", tmp_path / "cache")  # the runs' config.json says where
    assert f"using {synthetic[0]}" in capsys.readouterr().out
    for name in ("comparison.png", "test_panel.png", "worst_best_panel.png"):
        assert (runs / name).stat().st_size > 10_000, name
    with Image.open(runs / "worst_best_panel.png") as panel:
        assert panel.size[1] > 12 * 150  # twelve rows: six worst, six best
    assert "worst_best_panel.png" in (runs / "report.md").read_text()


def test_paired_difference_matches_ids_pools_files_and_refuses_mismatches(tmp_path):
    def per_image(name, scores):  # rows in shuffled order: pairing is by id, not by line
        ids = list(scores)[::-1]
        saving.write_csv(tmp_path / name, [{"id": i, "fullres_lcc_tta_iou": scores[i], "iou": 0.0} for i in ids])
        return tmp_path / name
    base = [per_image("a1.csv", {"x": 0.8, "y": 0.6, "z": 0.7}), per_image("a2.csv", {"x": 0.5, "w": 0.9})]
    new = [per_image("b1.csv", {"z": 0.75, "x": 0.9, "y": 0.6}), per_image("b2.csv", {"x": 0.45, "w": 0.95})]
    d = evaluate.paired_comparison(base, new, "fullres_lcc_tta_iou")
    diffs = np.array([0.1, 0.0, 0.05, -0.05, 0.05])
    assert d["n"] == 5 and (d["new_better"], d["new_worse"]) == (3, 1)
    assert d["base"] == pytest.approx(3.5 / 5) and d["new"] == pytest.approx(3.65 / 5)
    assert d["difference"] == pytest.approx(diffs.mean())
    assert d["standard_error"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(5))
    with pytest.raises(visualize.UsageError, match="different images"):
        evaluate.paired_comparison(base[:1], new[1:], "fullres_lcc_tta_iou")
    with pytest.raises(visualize.UsageError, match="in pairs"):
        evaluate.paired_comparison(base, new[:1], "fullres_lcc_tta_iou")
    with pytest.raises(visualize.UsageError, match="no column"):
        evaluate.paired_comparison(base, new, "dice")
