"""A local page that segments the images you drop on it: the contour on the image, the mask, where the model is
unsure, the lesion's area, and the mask PNG to download (byte for byte what predict.py writes; several: one zip).

    python serve.py                                   # the released model (ONNX Runtime) on http://127.0.0.1:8000
    python serve.py --checkpoint runs/best/seed*/best.pt --port 8080      # an ensemble (PyTorch)

Python's standard library serves it: no package beyond requirements-predict.txt. Uploads stay in memory, and
nothing a browser sends becomes a file path.
"""
import argparse
import base64
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

import cli
import images
from errors import DataError, UsageError
from masks import checked_threshold, encoded, mask_at_size, mask_png, overlay, resize_probabilities
from segmenter import Segmenter

PAGE = Path(__file__).with_name("serve.html")
MAX_BYTES = 50 * 2 ** 20  # per uploaded file
MAX_PIXELS = 100_000_000  # per image: larger ones are refused before they are decoded
MAX_FILES = 50  # per drop, and per zip
DISPLAY = 768  # longest side of the pictures the page shows (the mask to download keeps the image's own size)


class UploadError(Exception):
    """An upload that cannot be segmented; the message is shown on the page."""


def png_base64(image):
    return base64.b64encode(encoded(image, "PNG")).decode()


def read_upload(raw):
    """The uploaded file's photo, RGB uint8 [H,W,3] as displayed (EXIF orientation applied); UploadError for an
    empty, oversized, truncated or non-image file."""
    if not raw:
        raise UploadError("the file is empty")
    if len(raw) > MAX_BYTES:
        raise UploadError(f"the file is over {MAX_BYTES // 2 ** 20} MB")
    try:
        with images.open_image(io.BytesIO(raw)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise UploadError(f"the image is {im.width}x{im.height}, over {MAX_PIXELS // 10 ** 6} megapixels")
        return images.read_full_image(io.BytesIO(raw))
    except DataError:
        raise UploadError("not an image this page reads (JPEG, PNG, BMP, TIFF, GIF or WebP)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # truncated or corrupt files
        raise UploadError(f"the image cannot be read: it is damaged or cut short ({e})") from None


def unsure_map(prob, threshold):
    """[H,W] in 0..1: how close each probability is to the decision threshold (1 at it, 0 at 0 or 1)."""
    return 1 - np.where(prob < threshold, (threshold - prob) / threshold, (prob - threshold) / (1 - threshold))


def segment_upload(segmenter, raw, options):
    """What the page shows of one uploaded file: {'width', 'height', 'area', 'share', 'mask' (the PNG predict.py
    writes, base64), 'overlay' (contour, base64 PNG), 'unsure' (base64 PNG)}. Raises UploadError."""
    photo = read_upload(raw)
    height, width = photo.shape[:2]
    prob = segmenter.probabilities(images.model_input(photo, segmenter.image_size)[None], options["tta"])[0]
    mask = mask_at_size(prob, width, height, options["threshold"], options["largest_component"])
    shown = Image.fromarray(photo)
    shown.thumbnail((DISPLAY, DISPLAY))
    small = np.asarray(mask_png(mask).resize(shown.size, Image.NEAREST)) > 0
    unsure = unsure_map(resize_probabilities(prob, *shown.size), options["threshold"])
    heat = (np.asarray(shown) * 0.4 + np.array([255, 200, 0]) * unsure[..., None] * 0.6).astype(np.uint8)
    return {"width": width, "height": height, "area": int(mask.sum()), "share": float(mask.mean()),
            "mask": png_base64(mask_png(mask)), "overlay": png_base64(overlay(np.asarray(shown), small)),
            "unsure": png_base64(Image.fromarray(heat))}


def safe_name(name):
    """A file name's stem with only letters, digits, '-', '_' and '.': never a path (for the zip's entries)."""
    stem = Path(str(name).replace("\\", "/")).stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip(".") or "image"


def zip_of_masks(files):
    """A zip (bytes) of [{'name', 'mask' (base64 PNG)}] as <name>_segmentation.png; UploadError for too many."""
    if not 0 < len(files) <= MAX_FILES:
        raise UploadError(f"a zip holds 1 to {MAX_FILES} masks")
    buf, used = io.BytesIO(), set()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            name, n = safe_name(f["name"]), 1
            while name in used:  # two uploads of one name get two entries
                n, name = n + 1, f"{safe_name(f['name'])}_{n + 1}"
            used.add(name)
            z.writestr(f"{name}_segmentation.png", base64.b64decode(f["mask"]))
    return buf.getvalue()


def options_of(query, threshold=0.5):
    """threshold (default: the model's), tta and largest_component from the page's query string; UploadError for a
    bad threshold."""
    q = parse_qs(query)
    try:
        threshold = checked_threshold(q.get("threshold", [threshold])[0], "the threshold")
    except UsageError as e:
        raise UploadError(str(e)) from None
    flag = lambda name: q.get(name, ["1"])[0] == "1"  # noqa: E731
    return {"threshold": threshold, "tta": flag("tta"), "largest_component": flag("largest_component")}


def make_handler(segmenter):
    """The request handler class of a server that segments with a Segmenter (its decision threshold: the page's
    default); one image is segmented at a time."""
    threshold = segmenter.threshold
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def send(self, status, body, content_type="application/json"):
            body = json.dumps(body).encode() if isinstance(body, dict) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if urlparse(self.path).path == "/":
                page = PAGE.read_text().replace("__THRESHOLD__", f"{threshold:g}")
                self.send(200, page.encode(), "text/html; charset=utf-8")
            else:
                self.send(404, {"error": "not found"})

        def do_POST(self):
            url, length = urlparse(self.path), int(self.headers.get("Content-Length") or 0)
            if length > MAX_BYTES:
                self.close_connection = True
                return self.send(413, {"error": f"the file is over {MAX_BYTES // 2 ** 20} MB"})
            raw = self.rfile.read(length)
            try:
                if url.path == "/segment":
                    options = options_of(url.query, threshold)
                    with lock:
                        return self.send(200, segment_upload(segmenter, raw, options))
                if url.path == "/zip":
                    return self.send(200, zip_of_masks(json.loads(raw)["files"]), "application/zip")
                self.send(404, {"error": "not found"})
            except UploadError as e:
                self.send(400, {"error": str(e)})
            except (KeyError, TypeError, ValueError) as e:
                self.send(400, {"error": f"a request this page does not send ({type(e).__name__})"})
    return Handler


def port_number(text):
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a whole number from 0 to 65535")
    return int(text)


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--checkpoint", nargs="+", action="extend", metavar="FILE",
                        help="an .onnx file, or train.py checkpoints (needs PyTorch; several: their ensemble) "
                        "(default: the released model)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=port_number, default=8000, help="port (default: 8000; 0: any free port)")
    cli.add_device_flag(parser)
    args = parser.parse_args(argv)
    handler = make_handler(Segmenter.load(args.checkpoint, args.device))
    try:
        server = ThreadingHTTPServer((args.host, args.port), handler)
    except OSError as e:  # the port in use, or an address this machine does not have
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); another server may hold it: "
                         "choose another port, e.g. make serve PORT=8080 (serve.py --port 8080)") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the page", flush=True)
    print(f"serving on http://{server.server_address[0]}:{server.server_address[1]}/ (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")


if __name__ == "__main__":
    cli.run(main)
