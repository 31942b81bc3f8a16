"""The page that segments the images you drop on it in your browser: the model runs in the browser tab (ONNX Runtime
Web), so no image is ever sent anywhere. This script only serves the page's static files, or writes them to a
folder that any static host serves (make site).

    python tools/serve.py                                   # the released model on http://127.0.0.1:8000
    python tools/serve.py --model model.onnx --port 8080    # a model of yours (export.py writes .onnx from .pt)
    python tools/serve.py --write site/                     # the static files, for any web host

The page's runtime comes from the npm registry (web/package.json and its lock file: `make site` installs it).
The server answers GET and HEAD for those files alone, only under this machine's own name (never a page that
rebinds another name to 127.0.0.1), with the headers that let WebAssembly use several threads.
"""
import argparse
import errno
import ipaddress
import json
import re
import shutil
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from project_root import ROOT  # first: lib/ and the top-level modules import from the project's root

from lib import cli, model_files
from lib.errors import UsageError

WEB = ROOT / "web"
RUNTIME = WEB / "node_modules" / "onnxruntime-web" / "dist"
PAGE_FILES = ("index.html", "page.css", "page.js", "segment.js", "formats.js", "editor.js", "calibrate.js", "clinic.js",
              "store.js", "sw.js")
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]", socket.gethostname(), socket.getfqdn())
WILDCARDS = ("0.0.0.0", "::", "")  # --host values that listen on every address of this machine
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8",
         ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream"}
HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
           "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                                      "img-src 'self' data: blob:; connect-src 'self' blob:; worker-src 'self' blob:"}


def model_json(model):
    """The page's model.json of an .onnx file: its input size, decision threshold and edge move (its metadata),
    and its name and sha256 (the page's exports say which model drew the proposals)."""
    from lib.segmenter import OnnxRuntime  # here: onnxruntime reads the metadata
    runtime = OnnxRuntime(model, "cpu")
    return json.dumps({"image_size": runtime.image_size, "threshold": runtime.threshold,
                       "edge_move": runtime.edge_move, "file": Path(model).name,
                       "sha256": model_files.sha256(model)}).encode()


def site_files(model):
    """{URL path: a file's path, or bytes}: the page, ONNX Runtime Web and the model."""
    missing = [f for f in RUNTIME_FILES if not (RUNTIME / f).is_file()]
    if missing:
        raise UsageError(f"ONNX Runtime Web is not installed ({RUNTIME / missing[0]} is missing): run `make site` "
                         "(npm ci in web/, from its lock file)")
    if Path(model).suffix.lower() != ".onnx":
        raise UsageError(f"--model {model}: the page runs .onnx files; export a checkpoint first: make serve "
                         f"CHECKPOINT={model} (or python tools/export.py --checkpoint {model} --out model.onnx)")
    files = {f"/{f}": WEB / f for f in PAGE_FILES} | {f"/ort/{f}": RUNTIME / f for f in RUNTIME_FILES}
    return files | {"/": WEB / "index.html", "/model.onnx": Path(model), "/model.json": model_json(model)}


def write_site(files, folder):
    """The page's files in a folder of their own, for any static host; returns how many."""
    folder = Path(folder)
    for url, source in files.items():
        if url == "/":
            continue
        target = folder / url.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source) if isinstance(source, bytes) else shutil.copyfile(source, target)
    return len(files) - 1


def split_host(header):
    """(host, port or None) of a Host header ('a:8000', 'a', '[::1]:8000'); (None, None) for anything else."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]*\]|[^:\[\]]+)(?::(\d{1,5}))?", header or "")
    return (match[1], int(match[2]) if match[2] else None) if match else (None, None)


def allowed_host(header, names, port, local_address):
    """Whether a request's Host header names this server: one of `names`, or the address the request arrived at
    (what a browser sends for any address of a server listening on all of them), with the server's port, or
    without one when the port is HTTP's default (80). Any other name is a DNS-rebinding page's."""
    host, given_port = split_host(header)
    return host is not None and (given_port or 80) == port and (host in names or host.strip("[]") == local_address)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops connections in a burst: their clients retry after 1, 3, 7 s

    def handle_error(self, request, client_address):
        """A client that went away mid-answer is one line in the log; anything else, socketserver's traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            print(f"{client_address[0]} closed the connection before the answer was sent", file=sys.stderr)
        else:
            super().handle_error(request, client_address)


class Server6(Server):
    address_family = socket.AF_INET6  # --host :: (every IPv6 address), ::1


def is_loopback(host):
    """Whether host is one of this machine's loopback addresses (127.0.0.0/8, ::1) or localhost."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_handler(files, names, port, seconds):
    """The request handler class that serves `files` (site_files()) to requests whose Host names this server
    (allowed_host), each sent whole within `seconds`, and nothing else."""

    class Handler(BaseHTTPRequestHandler):
        timeout = seconds

        def handle_one_request(self):
            # the whole request within `seconds`, not only each read: a client trickling a byte a second is dropped
            self.deadline = threading.Timer(seconds, self.drop)
            self.deadline.start()
            try:
                super().handle_one_request()
            finally:
                self.deadline.cancel()

        def parse_request(self):
            parsed = super().parse_request()  # reads the headers: the request has arrived
            self.deadline.cancel()
            return parsed

        def drop(self):
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def answer(self, status, body, content_type="text/plain; charset=utf-8", head=False):
            self.send_response(status)
            for name, value in {**HEADERS, "Content-Type": content_type, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_GET(self, head=False):
            if not allowed_host(self.headers.get("Host"), names, port, self.connection.getsockname()[0]):
                return self.answer(403, b"this server answers only to the address it listens on\n", head=head)
            path = urlparse(self.path).path
            if path not in files:
                return self.answer(404, b"not found\n", head=head)
            body = files[path] if isinstance(files[path], bytes) else files[path].read_bytes()
            self.answer(200, body, TYPES.get(Path(path).suffix, TYPES[".html"]), head)

        def do_HEAD(self):
            self.do_GET(head=True)
    return Handler


def port_number(text):
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a whole number from 0 to 65535")
    return int(text)


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--model", default=str(model_files.ONNX),
                        help="the .onnx file the page runs (export.py writes one from train.py checkpoints)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=port_number, default=8000, help="port (0: any free port)")
    parser.add_argument("--timeout", type=float, default=20, metavar="SECONDS",
                        help="a client that has not sent its whole request by then is dropped, so stalled or "
                        "trickling clients never hold the server")
    parser.add_argument("--write", metavar="FOLDER", help="write the page's static files to FOLDER and stop")
    args = parser.parse_args(argv)
    files = site_files(args.model)  # model_json() loads, and so verifies, the model
    if args.write:
        return print(f"wrote {write_site(files, args.write)} files to {args.write}/: serve that folder from any "
                     "static host (with the headers of docs/page.md for threads)")
    try:
        server = (Server6 if ":" in args.host else Server)((args.host.strip("[]"), args.port), None)
    except OSError as e:  # the port in use, or an address this machine does not have
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); another server holds it: "
                             "choose another port, e.g. make serve PORT=8080 (serve.py --port 8080)") from None
        raise UsageError(f"cannot listen on {args.host} ({e.strerror}): give an address of this machine, e.g. "
                         "127.0.0.1 (this machine only), 0.0.0.0 or :: (every address)") from None
    port = server.server_address[1]
    server.RequestHandlerClass = make_handler(files, {*LOCAL_NAMES, args.host}, port, args.timeout)
    if not is_loopback(args.host):  # 0.0.0.0: every address of this machine
        print(f"warning: listening on {args.host}: anyone who can reach this machine can load the page", flush=True)
    shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    print(f"serving on http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")


if __name__ == "__main__":
    cli.run(main)
