"""The model shipped in models/: its files, its card (models/card.json) and the check, on every load, that a file
is byte for byte the one the card describes, so a damaged or edited copy is refused rather than used."""
import hashlib
import json
from pathlib import Path

from lib.errors import ModelFileError

FOLDER = Path(__file__).resolve().parents[1] / "models"
PT = FOLDER / "lesion_segmenter.pt"  # PyTorch: training from it (make adapt), torch.hub
ONNX = FOLDER / "lesion_segmenter.onnx"  # ONNX Runtime: make predict, the page


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recorded_sha256(path):
    """The sha256 that the card.json beside a file records for it (models/, or a copy of that folder), or None
    for a file no card describes (the user's own models)."""
    card_path = Path(path).resolve().parent / "card.json"
    if not card_path.is_file():
        return None
    card = json.loads(card_path.read_text())
    onnx = card.get("onnx", {})
    return {card.get("file"): card.get("sha256"), onnx.get("file"): onnx.get("sha256")}.get(Path(path).name)


def verify(path):
    """Raise ModelFileError when path is a released file whose bytes are not those its card records."""
    expected = recorded_sha256(path)
    if expected is not None and sha256(path) != expected:
        raise ModelFileError(f"{path} is damaged or was changed: its sha256 is not the one the card.json beside it "
                             "records. Restore it with `git checkout models/` (or clone the repository again)")
