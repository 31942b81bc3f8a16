import os
import shutil

import numpy as np
import pytest
import torch

from conftest import REAL_DATA
from PIL import Image

import data
from lib import decoding, errors, layouts, readers, saving, splits

TRAIN_IMAGES, TRAIN_MASKS = layouts.SPLITS["train"]


@pytest.fixture
def copy(synthetic, tmp_path):
    """A private copy of the synthetic data set that a test may damage."""
    shutil.copytree(synthetic[0], tmp_path / "isic")
    return tmp_path / "isic"


def test_find_pairs_reads_the_official_layout(synthetic):
    pairs = layouts.find_pairs(synthetic[0], "train")
    assert len(pairs) == 40 and len(layouts.find_pairs(synthetic[0], "test")) == 12
    image_id, image_path, mask_path = pairs[0]
    assert image_path.name == f"{image_id}.jpg" and mask_path.name == f"{image_id}_Segmentation.png"


def test_missing_folder_explains_the_layout(tmp_path):
    with pytest.raises(errors.DataError, match="make data") as e:
        layouts.find_pairs(tmp_path / "nowhere", "train")
    assert "ISBI2016_ISIC_Part1_Training_GroundTruth" in str(e.value)
    (tmp_path / TRAIN_IMAGES).mkdir()
    with pytest.raises(errors.DataError, match=TRAIN_MASKS) as e:
        layouts.find_pairs(tmp_path, "train")
    assert "Give each image its mask" in str(e.value) and "make data" not in str(e.value)  # images, no masks


def test_unpaired_files_are_all_listed(copy):
    (copy / TRAIN_MASKS / "ISIC_0000000_Segmentation.png").unlink()
    (copy / TRAIN_IMAGES / "ISIC_0000001.jpg").unlink()
    with pytest.raises(errors.DataError) as e:
        layouts.find_pairs(copy, "train")
    assert "2 problem(s)" in str(e.value)
    assert "image without a mask" in str(e.value) and "ISIC_0000000.jpg" in str(e.value)
    assert "mask without an image" in str(e.value) and "ISIC_0000001_Segmentation.png" in str(e.value)


def test_empty_split_is_an_error(tmp_path):
    for folder in layouts.SPLITS["test"]:
        (tmp_path / folder).mkdir()
    with pytest.raises(errors.DataError, match="split is empty"):
        layouts.find_pairs(tmp_path, "test")


def test_load_split_resizes_and_keeps_masks_binary_and_aligned(synthetic, tmp_path):
    split = decoding.load_split(synthetic[0], "train", 64, tmp_path)
    assert split["images"].shape == (40, 3, 64, 64) and split["images"].dtype == torch.uint8
    assert split["masks"].shape == (40, 1, 64, 64) and set(split["masks"].unique().tolist()) == {0, 1}
    # lesions are dark: pixels inside the mask are much darker than those outside
    gray = split["images"].float().mean(1, keepdim=True)
    inside = (gray * split["masks"]).sum() / split["masks"].sum()
    outside = (gray * (1 - split["masks"])).sum() / (1 - split["masks"]).sum()
    assert inside < outside - 50
    # the area fraction survives resizing from varied original sizes
    areas = torch.tensor([synthetic[1][i] for i in split["ids"]])
    assert torch.allclose(split["masks"].float().mean((1, 2, 3)), areas, atol=0.03)


@pytest.mark.parametrize("kind", ["0-255", "0-1", "16bit", "palette", "rgb", "jpeg-like"])
def test_mask_formats_read_as_binary(tmp_path, kind):
    binary = np.zeros((40, 60), bool)
    binary[10:30, 20:50] = True
    path = tmp_path / "m.png"
    if kind == "0-255":
        Image.fromarray(binary.astype(np.uint8) * 255).save(path)
    elif kind == "0-1":
        Image.fromarray(binary.astype(np.uint8)).save(path)
    elif kind == "16bit":
        Image.fromarray(binary.astype(np.uint16) * 65535).save(path)
    elif kind == "palette":
        Image.fromarray(binary.astype(np.uint8) * 255).convert("P").save(path)
    elif kind == "rgb":
        Image.fromarray(np.stack([binary.astype(np.uint8) * 255] * 3, -1)).save(path)
    else:  # lossy compression: values near 0 and near 255
        noisy = np.where(binary, 250, 4).astype(np.uint8) + np.random.default_rng(0).integers(0, 5, binary.shape)
        Image.fromarray(noisy.astype(np.uint8)).save(path)
    mask, size = readers.read_mask(path, 32)
    assert size == (60, 40) and set(np.unique(mask)) == {0, 1}
    assert abs(mask.mean() - binary.mean()) < 0.03


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_image_modes_become_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    rgb.convert(mode).save(path)
    image, size = readers.read_image(path, 32)
    assert image.shape == (32, 32, 3) and size == (70, 50)


def test_bad_files_are_all_reported_before_training(copy, tmp_path):
    images, masks = copy / TRAIN_IMAGES, copy / TRAIN_MASKS
    jpeg = (images / "ISIC_0000000.jpg").read_bytes()
    (images / "ISIC_0000000.jpg").write_bytes(jpeg[:len(jpeg) // 3])  # truncated JPEG
    (images / "ISIC_0000001.jpg").write_text("this is not an image")
    Image.new("L", (17, 13)).save(masks / "ISIC_0000002_Segmentation.png")  # wrong size
    with pytest.raises(errors.DataError) as e:
        decoding.load_split(copy, "train", 64, tmp_path / "cache")
    message = str(e.value)
    assert "3 problem(s)" in message
    assert "ISIC_0000000.jpg" in message and "ISIC_0000001.jpg" in message
    assert "size mismatch" in message and "ISIC_0000002_Segmentation.png" in message


def test_masks_of_one_value_are_named_in_one_line(copy, tmp_path, capsys):
    for n, value in ((3, 0), (5, 255)):
        path = copy / TRAIN_MASKS / f"ISIC_000000{n}_Segmentation.png"
        Image.new("L", Image.open(path).size, value).save(path)
    decoding.load_split(copy, "train", 64, tmp_path / "cache")
    lines = [line for line in capsys.readouterr().out.splitlines() if "one value" in line]
    assert lines == ["2 of the 40 train masks are one value, kept as they are: ISIC_0000003 (all background), "
                     "ISIC_0000005 (all lesion)"]


def test_cache_is_reused_and_rebuilt_when_files_or_size_change(copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = decoding.load_split(copy, "train", 64, cache)
    assert len(list(cache.glob("train_64px_*.pt"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although the cache is current")
    monkeypatch.setattr(decoding, "decode_pair", no_decoding)
    again = decoding.load_split(copy, "train", 64, cache)
    assert torch.equal(first["images"], again["images"])
    monkeypatch.undo()

    decoding.load_split(copy, "train", 96, cache)  # another size: another cache file
    assert len(list(cache.glob("train_96px_*.pt"))) == 1
    path = copy / TRAIN_IMAGES / "ISIC_0000000.jpg"
    Image.new("RGB", Image.open(path).size, (0, 0, 255)).save(path)  # replace one image
    os.utime(path, ns=(0, 10**18))
    changed = decoding.load_split(copy, "train", 64, cache)
    assert len(list(cache.glob("train_64px_*.pt"))) == 2
    assert changed["images"][0, 2].float().mean() > 200 and not torch.equal(changed["images"], first["images"])


def test_split_is_disjoint_and_reproducible():
    train, val = data.split_indices(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert set(train.tolist()).isdisjoint(val.tolist()) and set(train.tolist()) | set(val.tolist()) == set(range(100))
    assert np.array_equal(val, data.split_indices(100, 0.1, seed=3)[1])
    assert not np.array_equal(val, data.split_indices(100, 0.1, seed=4)[1])


def test_splits_without_torch_are_torchs_own():
    """lib/splits.py draws the splits without torch (make calibrate on the light install) and must hold out the
    very images torch.randperm did, or runs trained before it would be scored on images they trained on."""
    for n in (0, 1, 2, 3, 10, 30, 159, 806, 5000):
        for seed in (0, 1, 7, 42, 2**31 + 5):
            torch_order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
            assert np.array_equal(splits.permutation(n, seed), torch_order), (n, seed)


def test_real_images_load(tmp_path):
    if not REAL_DATA.is_dir():
        pytest.skip(f"{REAL_DATA} not present: the real ISIC 2016 subset is only on development and CI machines")
    pairs = layouts.find_pairs(REAL_DATA, "test")
    assert len(pairs) > 300
    image, size = readers.read_image(pairs[0][1], 128)
    mask, mask_size = readers.read_mask(pairs[0][2], 128)
    assert image.shape == (128, 128, 3) and size == mask_size
    assert 0 < mask.mean() < 1


def test_plain_folders_train_and_score_exactly_like_the_isic_layout(synthetic, tmp_path, capsys):
    from conftest import train_args

    import train
    plain = tmp_path / "plain"
    for split, (image_folder, mask_folder) in layouts.SPLITS.items():
        shutil.copytree(synthetic[0] / image_folder, plain / split / "images")
        (plain / split / "masks").mkdir(parents=True)
        for i, mask in enumerate(sorted((synthetic[0] / mask_folder).iterdir())):  # every naming a user may have
            stem = mask.name[:-len(layouts.MASK_SUFFIX)] + ("_mask", "", "_segmentation")[i % 3]
            Image.open(mask).save(plain / split / "masks" / (stem + (".png", ".bmp", ".tif")[i % 3]))
    (plain / "train" / "images" / "._ISIC_0000000.jpg").write_bytes(b"macOS resource fork")
    assert layouts.detect_layout(plain) == "plain folders" and layouts.detect_layout(synthetic[0]) == "ISIC 2016 Part 1"
    train.main(train_args(synthetic[0], tmp_path / "isic"))
    train.main(train_args(plain, tmp_path / "plain-run"))
    assert "plain folders in" in capsys.readouterr().out
    assert saving.read_json(tmp_path / "plain-run" / "test_metrics.json") == saving.read_json(
        tmp_path / "isic" / "test_metrics.json")


def test_a_folder_of_no_known_layout_lists_the_accepted_ones(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(errors.DataError, match="holds none of the accepted layouts") as e:
        layouts.find_pairs(tmp_path, "train")
    assert "ISIC 2016 Part 1" in str(e.value) and "train/images" in str(e.value)
