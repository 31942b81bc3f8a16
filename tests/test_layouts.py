"""Every accepted data layout, built from a few real images under the official folder and file names (with the
stray files each archive holds): detected, trained on for one short epoch, and scored; downloads unpacked from
small zips with the real archive names."""
import http.server
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import download
import pytest

from conftest import HAM, REAL_DATA, train_args
from PIL import Image

import evaluate
import train
from lib import errors, layouts, model_files, readers, saving
from lib.synthetic import write_synthetic


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """16 (id, image, mask) of real ISIC images (synthetic ones where the real data is absent)."""
    if REAL_DATA.is_dir():
        return layouts.find_pairs(REAL_DATA, "train")[:16]
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, n_train=16, n_test=0)
    return layouts.find_pairs(root, "train")


def lay_out(root, layout, groups):
    """Write {group: pairs} under root in one of layouts.LAYOUTS, named as its official release names them."""
    for group, chosen in groups.items():
        image_folder, mask_folder = layouts.LAYOUTS[layout][group]
        for image_id, image_path, mask_path in chosen:
            if layout == "PH2":  # IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp, IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp
                case = root / "PH2 Dataset images" / image_id
                for folder, path, name in ((f"{image_id}_Dermoscopic_Image", image_path, image_id),
                                           (f"{image_id}_lesion", mask_path, f"{image_id}_lesion"),
                                           (f"{image_id}_roi", mask_path, f"{image_id}_R1_Label4")):
                    (case / folder).mkdir(parents=True, exist_ok=True)
                    Image.open(path).save(case / folder / f"{name}.bmp")
                continue
            images, masks = root / image_folder, root / mask_folder
            images.mkdir(parents=True, exist_ok=True)
            masks.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image_path, images / image_path.name)
            suffix = {"ISIC 2016 Part 1": "_Segmentation", "plain folders": "_mask"}.get(layout, "_segmentation")
            shutil.copyfile(mask_path, masks / f"{image_id}{suffix}.png")
            if layout == "ISIC 2017 Part 1":
                Image.open(mask_path).save(images / f"{image_id}_superpixels.png")
        for folder in layouts.LAYOUTS[layout][group]:  # the archives' stray files
            if layout == "ISIC 2018 Task 1":
                for name in ("LICENSE.txt", "ATTRIBUTION.txt"):
                    (root / folder / name).write_text("CC BY-NC 4.0")
            if layout == "ISIC 2017 Part 1":
                (root / folder / f"{folder}_metadata.csv").write_text("image_id,age_approximate,sex\n")
    if layout == "PH2":
        (root / "PH2_dataset.txt").write_text("|| Name || Histological Diagnosis ||\n")
    return root


def ph2_pairs(pairs):
    return [(f"IMD{n:03d}", image, mask) for n, (_, image, mask) in enumerate(pairs, 2)]


LAYOUT_CASES = {  # layout: ({group: slice of the 16 pairs}, what the first line of train.py must say)
    "ISIC 2016 Part 1": ({"train": slice(0, 12), "test": slice(12, 16)}, "11 training images, 1 validation, 4 test"),
    "ISIC 2017 Part 1": ({"train": slice(0, 8), "val": slice(8, 12), "test": slice(12, 16)},
                         "8 training images, 4 validation (official split), 4 test"),
    "ISIC 2018 Task 1": ({"train": slice(0, 8), "val": slice(8, 12), "test": slice(12, 16)},
                         "8 training images, 4 validation (official split), 4 test"),
    "PH2": ({"all": slice(0, 15)}, "11 training images, 1 validation, 3 test (no official split: 20% held out"),
    "plain folders": ({"train": slice(0, 12), "val": slice(12, 14)}, "12 training images, 2 validation "
                      "(official split), no test"),
}


@pytest.mark.parametrize("layout", LAYOUT_CASES)
def test_each_layout_is_detected_trained_on_and_scored(layout, pairs, checkpoint, tmp_path, capsys):
    groups, expected = LAYOUT_CASES[layout]
    chosen = ph2_pairs(pairs) if layout == "PH2" else pairs
    root = lay_out(tmp_path / "data", layout, {g: chosen[s] for g, s in groups.items()})
    assert layouts.detect_layout(root) == layout and layouts.present_groups(root) == list(groups)
    for group, s in groups.items():  # the stray files are no images and no masks
        assert [p[0] for p in layouts.find_pairs(root, group)] == sorted(p[0] for p in chosen[s])
    train.main(train_args(root, tmp_path / "run"))
    assert f"{layout} in {root}: {expected}" in capsys.readouterr().out
    tested = (tmp_path / "run" / "test_metrics.json").exists()
    assert tested == (layout != "plain folders")  # plain folders without test/ have nothing to test
    if tested:  # the test split of its own, or the part held out from training (PH2)
        assert saving.read_json(tmp_path / "run" / "test_metrics.json")["n_images"] == (3 if layout == "PH2" else 4)
    # a model that never saw the folder is scored on its test split, or on every image where it has none
    evaluate.main(["--checkpoint", str(checkpoint), "--data-dir", str(root), "--device", "cpu",
                   "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "scores")])
    scored = saving.read_json(tmp_path / "scores" / "test_metrics.json")["n_images"]
    assert scored == {"PH2": 15, "plain folders": 14}.get(layout, 4)


def test_a_folder_holding_two_layouts_is_refused(pairs, tmp_path):
    lay_out(tmp_path, "ISIC 2016 Part 1", {"train": pairs[:2]})
    lay_out(tmp_path, "plain folders", {"train": pairs[2:4]})
    with pytest.raises(errors.DataError, match="several layouts .ISIC 2016 Part 1, plain folders"):
        layouts.find_pairs(tmp_path, "train")


def test_several_data_dirs_train_on_the_union_and_test_each_apart(synthetic, pairs, tmp_path, capsys):
    other = lay_out(tmp_path / "isic2017", "ISIC 2017 Part 1",
                    {"train": pairs[:8], "val": pairs[8:12], "test": pairs[12:16]})
    train.main(train_args(synthetic[0], tmp_path / "run", "--data-dir", str(synthetic[0]), str(other)))
    printed = capsys.readouterr().out
    # 36 of the synthetic 40 (a tenth validates) + 8
    assert "training on 88 images (44 originals)" in printed
    assert saving.read_json(tmp_path / "run" / "test_metrics.json")["n_images"] == 12
    assert saving.read_json(tmp_path / "run" / "test_isic2017_metrics.json")["n_images"] == 4
    history = saving.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) == 1 and history[0]["val_iou"] >= 0  # validated on 4 + 4 images


def test_aug_copies_may_name_one_number_per_data_dir(synthetic, pairs, tmp_path, capsys):
    """--aug-copies 1 0: the first folder's images copied once, the second's as they are; the originals first."""
    other = lay_out(tmp_path / "isic2017", "ISIC 2017 Part 1",
                    {"train": pairs[:8], "val": pairs[8:12], "test": pairs[12:16]})
    train.main(train_args(synthetic[0], tmp_path / "run", "--data-dir", str(synthetic[0]), str(other),
                          "--aug-copies", "1", "0"))
    printed = capsys.readouterr().out
    assert "training on 80 images (44 originals)" in printed  # 36 + 36 copies of the synthetic, 8 of the other
    assert "fixed_copies: 1, 0 copies of each training image of the --data-dir folders in turn" in printed
    with pytest.raises(SystemExit):
        train.main(train_args(synthetic[0], tmp_path / "run2", "--data-dir", str(synthetic[0]), str(other),
                              "--aug-copies", "1", "0", "2"))
    assert "--aug-copies: one number, or one per --data-dir" in capsys.readouterr().err


@pytest.mark.skipif(not (REAL_DATA.is_dir() and HAM.is_dir()), reason="needs ../shared/isic2016 and ham10000")
def test_two_real_sources_train_together_as_make_two_source_does(tmp_path, capsys):
    """A few real photos of each source, laid out as each comes (ISIC 2016's official folders; HAM10000's plain
    train/val/test with some of its palette masks): one run trains on both, validates on both validation splits,
    and scores each test split apart, with every HAM mask read as lesion on background."""
    isic = tmp_path / "isic2016"
    for split in ("train", "test"):
        for folder, pairs in zip(layouts.SPLITS[split], [layouts.find_pairs(REAL_DATA, split)[:10]] * 2):
            (isic / folder).mkdir(parents=True)
            for _, image, mask in pairs:
                source = image if "Data" in folder else mask
                (isic / folder / source.name).symlink_to(source)
    ham = tmp_path / "ham10000"
    for split, n in (("train", 10), ("val", 4), ("test", 4)):
        for _, image, mask in sorted(layouts.find_pairs(HAM, split))[:n]:  # ids from ISIC_0024306: palette masks
            for sub, source in (("images", image), ("masks", mask)):
                (ham / split / sub).mkdir(parents=True, exist_ok=True)
                (ham / split / sub / source.name).symlink_to(source)
    palette = [m for m in (ham / "train" / "masks").iterdir() if Image.open(m).mode == "P"]
    assert palette and all(readers.read_binary_mask(m).mean() < 0.5 for m in palette)
    train.main(train_args(isic, tmp_path / "run", "--data-dir", str(isic), str(ham), "--aug-copies", "3", "0"))
    printed = capsys.readouterr().out
    assert "training on 46 images (19 originals)" in printed  # 9 of ISIC's 10 (a tenth validates) x 4 + HAM's 10
    assert "plain folders in" in printed and "4 validation (official split)" in printed
    assert saving.read_json(tmp_path / "run" / "test_metrics.json")["n_images"] == 10
    assert saving.read_json(tmp_path / "run" / "test_ham10000_metrics.json")["n_images"] == 4
    assert saving.read_csv(tmp_path / "run" / "history.csv")[0]["val_iou"] >= 0  # 1 + 4 validation photos


def test_a_plain_folder_copy_of_the_real_test_split_scores_exactly_the_same(tmp_path):
    if not REAL_DATA.is_dir():
        pytest.skip(f"{REAL_DATA} not present: the real ISIC 2016 subset is only on development and CI machines")
    checkpoint = model_files.PT  # a model that finds lesions
    isic = tmp_path / "isic"
    image_folder, mask_folder = (isic / folder for folder in layouts.SPLITS["test"])
    image_folder.mkdir(parents=True)
    mask_folder.mkdir()
    for _, image, mask in layouts.find_pairs(REAL_DATA, "test")[:40]:  # 40 of the 339: the same check, in less time
        (image_folder / image.name).symlink_to(image)
        (mask_folder / mask.name).symlink_to(mask)
    assert layouts.copy_as_plain_folders(isic, tmp_path / "plain") == {"test": 40}
    scores = {}
    for name in ("isic", "plain"):
        evaluate.main(["--checkpoint", str(checkpoint), "--data-dir", str(tmp_path / name), "--device", "cpu",
                       "--cache-dir", str(tmp_path / f"cache-{name}"), "--out", str(tmp_path / f"scores-{name}"),
                       "--full-res"])
        scores[name] = saving.read_json(tmp_path / f"scores-{name}" / "test_metrics.json")
        scores[name].pop("checkpoints")
        scores[name]["per_image"] = saving.read_csv(tmp_path / f"scores-{name}" / "test_per_image.csv")
    assert scores["isic"] == scores["plain"] and scores["isic"]["n_images"] == 40
    assert 0.2 < scores["isic"]["fullres_iou"] < 1


def make_archives(source, server_root, dataset):
    """The official zips of a layout under server_root/<year>/, each holding its folder and a __MACOSX entry."""
    folder_url, layout = download.DATASETS[dataset]
    (server_root / folder_url).mkdir(parents=True)
    for folder in (f for pair in layouts.LAYOUTS[layout].values() for f in pair):
        with zipfile.ZipFile(server_root / folder_url / f"{folder}.zip", "w") as z:
            for path in sorted((source / folder).iterdir()):
                z.write(path, f"{folder}/{path.name}")
            z.writestr(f"__MACOSX/{folder}/._{folder}", b"resource fork")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that honours 'Range: bytes=N-', as the ISIC server does; it counts bytes sent."""
    sent = 0

    def do_GET(self):
        body = Path(self.translate_path(self.path)).read_bytes()
        start = int(self.headers.get("Range", "bytes=0-")[6:-1] or 0)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])
        RangeHandler.sent += len(body) - start

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("dataset", ["isic2016", "isic2017", "isic2018"])
def test_make_data_downloads_resumes_checks_and_unpacks_each_dataset(dataset, pairs, tmp_path):
    layout = download.DATASETS[dataset][1]
    groups = {"train": pairs[:6], "test": pairs[6:9]}
    groups |= {"val": pairs[9:11]} if "val" in layouts.LAYOUTS[layout] else {}
    source = lay_out(tmp_path / "source", layout, groups)
    make_archives(source, tmp_path / "server", dataset)
    first = layouts.LAYOUTS[layout]["train"][0]
    archive = tmp_path / "server" / download.DATASETS[dataset][0] / f"{first}.zip"
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / f"{first}.zip.part").write_bytes(archive.read_bytes()[:100])  # an interrupted download
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: RangeHandler(*a, directory=str(tmp_path / "server")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        RangeHandler.sent = 0
        assert download.download(dataset, dest, f"http://127.0.0.1:{server.server_port}/") == layout
    finally:
        server.shutdown()
    total = sum(p.stat().st_size for p in (tmp_path / "server").rglob("*.zip"))
    assert RangeHandler.sent == total - 100  # the first archive resumed after its 100 bytes
    for group, chosen in groups.items():
        assert [p[0] for p in layouts.find_pairs(dest, group)] == sorted(p[0] for p in chosen)
    assert not list(dest.glob("*.zip*")) and not (dest / "__MACOSX").exists()


def test_a_damaged_archive_is_removed_with_a_sentence(pairs, tmp_path):
    source = lay_out(tmp_path / "source", "ISIC 2016 Part 1", {"train": pairs[:2], "test": pairs[2:4]})
    make_archives(source, tmp_path / "server", "isic2016")
    archive = tmp_path / "server" / "2016" / f"{layouts.SPLITS['train'][0]}.zip"
    archive.write_bytes(archive.read_bytes()[:-200])  # cut short: the central directory is gone
    with pytest.raises(errors.DataError, match="is damaged"):
        download.download("isic2016", tmp_path / "data", (tmp_path / "server").as_uri() + "/")
    assert not list((tmp_path / "data").glob("*.zip*"))
    with pytest.raises(errors.DataError, match="PH2 is not downloadable by script"):
        download.download("ph2", tmp_path / "empty")


def test_no_network_names_data_dir_for_a_local_copy(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on: the download fails as without internet
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(errors.DataError) as e:
        download.download("isic2016", tmp_path / "data", f"http://127.0.0.1:{port}/")
    assert len(str(e.value).splitlines()) == 1 and "could not download http://127.0.0.1" in str(e.value)
    assert "with a local copy, name it (make ... DATA_DIR=path/to/it)" in str(e.value)
