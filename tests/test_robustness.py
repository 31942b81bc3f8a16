"""The robustness suite: every shift keeps image and mask aligned, and a seeded run repeats exactly."""
import numpy as np
import pytest
import robustness

import visualize
from lib import perturbations, saving
from lib.errors import UsageError
from lib.perturbations import PERTURBATIONS

GEOMETRIC = ("aspect 4:3", "aspect 3:4", "zoom out 0.6", "zoom in 1.4", "rotate 45")


def lesion_image(h=120, w=120):
    """A square skin-coloured image with one dark ellipse that touches nothing, and its mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((xx - 0.55 * w) / (0.25 * w)) ** 2 + ((yy - 0.45 * h) / (0.3 * h)) ** 2 <= 1
    image = np.where(mask[..., None], [60, 40, 30], [220, 170, 140]).astype(np.uint8)
    return image, mask


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_shifts_move_the_mask_with_the_image(name):
    image, mask = lesion_image()
    shifted, shifted_mask = PERTURBATIONS[name](image, mask, np.random.default_rng(0))
    assert shifted.shape[:2] == shifted_mask.shape and shifted_mask.dtype == bool
    dark = shifted.mean(2) < 128  # the lesion as the image shows it
    assert iou(dark, shifted_mask) > 0.95
    assert shifted_mask.sum() != mask.sum() or name.startswith("rotate")  # the lesion changed size


def test_zoom_out_fills_the_new_border_with_the_edge_colour_not_a_mirror():
    image, mask = lesion_image()
    shifted, shifted_mask = PERTURBATIONS["zoom out 0.6"](image, mask, np.random.default_rng(0))
    assert (shifted[0, 0] == [220, 170, 140]).all() and not shifted_mask[:10].any()
    assert abs(shifted_mask.sum() / mask.sum() - 0.36) < 0.03  # 0.6 x 0.6 of the area


@pytest.mark.parametrize("name", [n for n in PERTURBATIONS if n not in GEOMETRIC])
def test_other_shifts_change_pixels_but_never_the_mask(name):
    image, mask = lesion_image()
    shifted, shifted_mask = PERTURBATIONS[name](image, mask, np.random.default_rng(0))
    assert shifted.shape == image.shape and shifted.dtype == np.uint8 and (shifted_mask == mask).all()
    assert (shifted != image).any() == (name != "clean")


def test_random_shifts_repeat_with_a_seed_and_differ_without(tmp_path):
    image, mask = lesion_image()
    path, mask_path = tmp_path / "x.png", tmp_path / "x_mask.png"
    from PIL import Image
    Image.fromarray(image).save(path)
    Image.fromarray(mask).save(mask_path)
    for name in ("noise", "hair"):
        a, b = (perturbations.shift(path, mask_path, name, seed=0, n=3)[0] for _ in range(2))
        other = perturbations.shift(path, mask_path, name, seed=1, n=3)[0]
        assert (a == b).all() and (a != other).any()
    assert perturbations.HAIRS > 0


def test_a_suite_run_writes_its_table_and_repeats_exactly(synthetic, checkpoint, tmp_path, capsys):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        robustness.main(["--checkpoint", str(checkpoint), "--data-dir", str(synthetic[0]), "--device", "cpu",
                         "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--tta", "--largest-component",
                         "--perturbations", "noise", "zoom out 0.6", "hair"])
    first, second = (saving.read_json(out / "robustness.json") for out in outs)
    assert first["rows"] == second["rows"] and first["n_images"] == 12
    assert [r["perturbation"] for r in first["rows"]] == ["clean", "noise", "zoom out 0.6", "hair"]
    assert first["rows"][0]["iou_drop"] == 0 and all(0 <= r["iou"] <= 1 for r in first["rows"])
    assert len(saving.read_csv(outs[0] / "robustness.csv")) == 4
    assert (outs[0] / "robustness.png").stat().st_size > 0 and (outs[0] / "examples.png").stat().st_size > 0
    assert "mean IoU drop" in capsys.readouterr().out
    # side by side (visualize.py robustness): one table row per shift plus the mean drop, and a plot
    table = visualize.compare_robustness(outs, tmp_path / "compare.png").splitlines()
    assert table[0] == "| shift | a: IoU (drop) | b: IoU (drop) |" and len(table) == 2 + 4 + 1
    hair = first["rows"][3]
    cell = f"{hair['iou']:.4f} ({-hair['iou_drop']:+.4f})"
    assert table[5] == f"| hair | {cell} | {cell} |"
    assert table[6].endswith(f"| {first['mean_iou_drop']:.4f} | {first['mean_iou_drop']:.4f} |")
    assert (tmp_path / "compare.png").stat().st_size > 0
    robustness.main(["--checkpoint", str(checkpoint), "--data-dir", str(synthetic[0]), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "other"),
                     "--perturbations", "blur"])
    with pytest.raises(UsageError, match="different shifts"):
        visualize.compare_robustness([outs[0], tmp_path / "other"], tmp_path / "x.png")
