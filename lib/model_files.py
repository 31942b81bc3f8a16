"""Model files and the checks every load makes, so that a damaged or edited copy is refused rather than used:
- wherever a file lies and whatever its name, its own seal: a .pt's 'seal' of its weights and config
  (lib/checkpoints.py), an .onnx file's last metadata entry holding the sha256 of every byte before its value;
- for the model shipped in models/ (and a copy of that folder), also the sha256 its card (card.json) records."""
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
    """The file's bytes, read once: ModelFileError when path is a released file whose bytes are not those its card
    records, or an .onnx file whose seal does not match its bytes. Load what it returns: the bytes checked."""
    data = Path(path).read_bytes()
    expected = recorded_sha256(path)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ModelFileError(f"{path} is damaged or was changed: its sha256 is not the one the card.json beside it "
                             "records. Restore it with `git checkout models/` (or clone the repository again)")
    if Path(path).suffix.lower() == ".onnx":
        check_seal(path, data)
    return data


SEAL = "sealed_sha256"  # the metadata key of an .onnx file's seal


def varint(data, pos):
    """(value, position after it) of the protobuf varint at data[pos]."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("a number runs past the end")
        byte = data[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def top_level_fields(data):
    """[(field number, start of the field, start of its payload, end)] of a serialized protobuf message, such as
    an ONNX file (ModelProto: 7 the graph with its weights, 14 a metadata entry). ValueError when it is not one."""
    fields, pos = [], 0
    while pos < len(data):
        tag, payload = varint(data, pos)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            end = varint(data, payload)[1]
        elif kind == 2:
            size, payload = varint(data, payload)
            end = payload + size
        elif kind in (1, 5):
            end = payload + (8 if kind == 1 else 4)
        else:
            raise ValueError(f"field {number} has wire type {kind}")
        if number == 0 or end > len(data):
            raise ValueError("a field runs past the end")
        fields.append((number, pos, payload, end))
        pos = end
    return fields


def metadata_entry(key, value):
    """The bytes of one ONNX metadata entry (ModelProto field 14, a StringStringEntryProto)."""
    def string(number, text):
        raw = text.encode()
        return bytes([number << 3 | 2]) + encode_varint(len(raw)) + raw
    entry = string(1, key) + string(2, value)
    return bytes([14 << 3 | 2]) + encode_varint(len(entry)) + entry


def encode_varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def seal(path):
    """Append the seal to an .onnx file: a metadata entry holding the sha256 of every byte before its own value (its
    key included). Needs no onnx package; ONNX Runtime reads the entry as one more metadata key."""
    Path(path).write_bytes(sealed(Path(path).read_bytes()))


def sealed(data):
    """ONNX bytes with the seal appended (one there before is replaced: the bytes are sealed as they were then)."""
    if seal_of(data) is not None:
        data = data[:top_level_fields(data)[-1][1]]
    unsealed = data + metadata_entry(SEAL, "0" * 64)[:-64]  # the value is the last 64 bytes of the file
    return unsealed + hashlib.sha256(unsealed).hexdigest().encode()


def with_metadata(data, values):
    """ONNX bytes with the metadata entries {key: value} set (any entry of the same key dropped first), sealed
    anew: how make calibrate stores its edge move on the light install, without the onnx package."""
    kept = b"".join(data[start:end] for number, start, payload, end in top_level_fields(data)
                    if number != 14 or metadata_key(data[payload:end]) not in {*values, SEAL})
    return sealed(kept + b"".join(metadata_entry(k, str(v)) for k, v in values.items()))


def metadata_key(entry):
    """The key of one serialized metadata entry (StringStringEntryProto: 1 the key, 2 the value)."""
    return next((entry[p:e].decode() for n, _, p, e in top_level_fields(entry) if n == 1), None)


def seal_of(data):
    """(sha256 recorded, sha256 of the bytes it covers) of sealed ONNX bytes; None when unsealed. A last metadata
    entry whose value is 64 characters is a seal whatever its key says, so a changed byte in the key is caught;
    files sealed before 2026-12-05 covered the bytes before the entry, and are read so while their key is intact."""
    fields = top_level_fields(data)
    if not fields or fields[-1][0] != 14:
        return None
    number, start, payload, end = fields[-1]
    entry = {n: (p, e) for n, _, p, e in top_level_fields(data[payload:end])}
    if 2 not in entry or entry[2][1] - entry[2][0] != 64 or payload + entry[2][1] != len(data):
        return None
    value_start = payload + entry[2][0]
    recorded = data[value_start:].decode()
    covered = hashlib.sha256(data[:value_start]).hexdigest()
    key = data[payload + entry[1][0]:payload + entry[1][1]] if 1 in entry else b""
    if covered != recorded and key == SEAL.encode() and hashlib.sha256(data[:start]).hexdigest() == recorded:
        covered = recorded  # sealed before the key was covered: the seal of that time holds
    return recorded, covered


def check_seal(path, data=None):
    """ModelFileError when an .onnx file (its bytes: data, or read from path) is not a protobuf message, or its
    seal does not match its bytes."""
    try:
        sealed = seal_of(Path(path).read_bytes() if data is None else data)
    except (ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path} is damaged: it cannot be read as an ONNX file (a protobuf message); use "
                             "another copy or export it again") from None
    if sealed is not None and sealed[0] != sealed[1]:
        raise ModelFileError(f"{path} is damaged or was changed after it was written: its bytes do not match the "
                             "sha256 sealed inside it. Use another copy, or export it again (make export)")
