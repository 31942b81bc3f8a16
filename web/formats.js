// The file formats the page reads and writes, apart from the model's pipeline (segment.js): the size an image's
// header declares, PNG (the masks, as predict.py writes them), zip (the downloads), SHA-256 (the model's check).

// The width and height a PNG, JPEG, GIF, BMP or WebP header declares, read before decoding; null for any other
// format, which the page then refuses: no image reaches the decoder unmeasured.
export function declaredSize(bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length >= 30 && v.getUint32(0) === 0x52494646 && v.getUint32(8) === 0x57454250) {  // RIFF....WEBP
    const chunk = v.getUint32(12);
    const u24 = i => bytes[i] | bytes[i + 1] << 8 | bytes[i + 2] << 16;
    if (chunk === 0x56503858) return [1 + u24(24), 1 + u24(27)];  // VP8X: the canvas, 24 bits each
    if (chunk === 0x5650384c && bytes[20] === 0x2f) {  // VP8L: 14 bits each, after the signature byte
      const bits = v.getUint32(21, true);
      return [1 + (bits & 0x3fff), 1 + ((bits >>> 14) & 0x3fff)];
    }
    if (chunk === 0x56503820) return [v.getUint16(26, true) & 0x3fff, v.getUint16(28, true) & 0x3fff];  // VP8
    return null;
  }
  if (bytes.length >= 24 && v.getUint32(0) === 0x89504e47) return [v.getUint32(16), v.getUint32(20)];
  if (bytes.length >= 10 && v.getUint32(0) === 0x47494638) return [v.getUint16(6, true), v.getUint16(8, true)];
  if (bytes.length >= 26 && v.getUint16(0) === 0x424d)
    return [Math.abs(v.getInt32(18, true)), Math.abs(v.getInt32(22, true))];
  if (bytes.length >= 4 && v.getUint16(0) === 0xffd8) {
    for (let i = 2; i + 9 < bytes.length;) {
      if (bytes[i] !== 0xff) { i++; continue; }
      const marker = bytes[i + 1];
      const frame = marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker);  // SOFn: the size
      if (frame) return [v.getUint16(i + 7), v.getUint16(i + 5)];
      i += 2 + v.getUint16(i + 2);
    }
  }
  return null;
}

// A PNG of 8-bit pixels [h*w*channels] (1: grey, 3: RGB), rows unfiltered, deflated by the browser's own zlib:
// lib/masks.py's mask_png for any channel count. Not a canvas's toBlob: it waits for the page to be idle, up to a
// second a picture where the page is hidden or headless (20 masks exported in 20 s in headless Chromium).
export async function png(w, h, channels, pixels) {
  const row = w * channels, rows = new Uint8Array(h * (row + 1));  // each row after its filter byte, 0: none
  for (let y = 0; y < h; y++) rows.set(pixels.subarray(y * row, (y + 1) * row), y * (row + 1) + 1);
  const deflated = new Blob([rows]).stream().pipeThrough(new CompressionStream("deflate"));
  const header = new Uint8Array(13), view = new DataView(header.buffer);
  view.setUint32(0, w); view.setUint32(4, h); header.set([8, channels === 1 ? 0 : 2], 8);  // bit depth, colour type
  const chunks = [["IHDR", header], ["IDAT", new Uint8Array(await new Response(deflated).arrayBuffer())],
                  ["IEND", new Uint8Array()]].map(([kind, data]) => pngChunk(kind, data));
  return new Uint8Array(await new Blob([PNG_SIGNATURE, ...chunks]).arrayBuffer());
}

const PNG_SIGNATURE = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function pngChunk(kind, data) {  // length, kind, data, the CRC of kind and data
  const bytes = new Uint8Array(12 + data.length), view = new DataView(bytes.buffer);
  view.setUint32(0, data.length);
  bytes.set(new TextEncoder().encode(kind), 4);
  bytes.set(data, 8);
  view.setUint32(8 + data.length, crc32(bytes.subarray(4, 8 + data.length)));
  return bytes;
}

// A zip (stored, no compression: PNGs are compressed already) of [{name, bytes: Uint8Array}].
const CRC_TABLE = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function record(size, fields) {  // little-endian fields: [[offset, bits, value]]
  const bytes = new Uint8Array(size), view = new DataView(bytes.buffer);
  for (const [offset, bits, value] of fields) (bits === 32 ? view.setUint32 : view.setUint16).call(view, offset, value, true);
  return bytes;
}

export function zip(files) {
  const parts = [], directory = [];
  let offset = 0;
  for (const f of files) {
    const name = new TextEncoder().encode(f.name), crc = crc32(f.bytes), n = f.bytes.length;
    // version 2.0; flag bit 11: the name is UTF-8 (unzip and Python read "Müller" as it was written)
    const common = at => [[at, 16, 20], [at + 2, 16, 0x0800], [at + 10, 32, crc], [at + 14, 32, n], [at + 18, 32, n], [at + 22, 16, name.length]];
    parts.push(record(30, [[0, 32, 0x04034b50], ...common(4)]), name, f.bytes);  // local file header
    directory.push(record(46, [[0, 32, 0x02014b50], [4, 16, 20], ...common(6), [42, 32, offset]]), name);
    offset += 30 + name.length + n;
  }
  const size = directory.reduce((total, b) => total + b.length, 0);
  const end = record(22, [[0, 32, 0x06054b50], [8, 16, files.length], [10, 16, files.length], [12, 32, size], [16, 32, offset]]);
  return new Blob([...parts, ...directory, end], {type: "application/zip"});
}

// Hex sha256 of bytes: the browser's SubtleCrypto where the page is a secure context (https, localhost), else
// FIPS 180-4 here (a clinic's page served over plain http on its own network)
export async function sha256(bytes) {
  if (globalThis.crypto?.subtle) return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
  const k = [], h = [], prime = n => { for (let d = 2; d * d <= n; d++) if (n % d === 0) return false; return true; };
  for (let n = 2, i = 0; i < 64; n++) if (prime(n)) {
    if (i < 8) h[i] = Math.pow(n, 1 / 2) * 2 ** 32 | 0;
    k[i++] = Math.pow(n, 1 / 3) * 2 ** 32 | 0;
  }
  const padded = new Uint8Array(Math.ceil((bytes.length + 9) / 64) * 64), view = new DataView(padded.buffer);
  padded.set(bytes); padded[bytes.length] = 0x80;
  view.setUint32(padded.length - 8, Math.floor(bytes.length / 2 ** 29)); view.setUint32(padded.length - 4, bytes.length * 8);
  const w = new Int32Array(64), rotr = (x, n) => x >>> n | x << 32 - n;
  for (let at = 0; at < padded.length; at += 64) {
    for (let i = 0; i < 64; i++) w[i] = i < 16 ? view.getInt32(at + 4 * i) :
      (rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ w[i - 2] >>> 10) + w[i - 7] +
      (rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ w[i - 15] >>> 3) + w[i - 16] | 0;
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + (e & f ^ ~e & g) + k[i] + w[i] | 0;
      const t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + (a & b ^ a & c ^ b & c) | 0;
      [hh, g, f, e, d, c, b, a] = [g, f, e, d + t1 | 0, c, b, a, t1 + t2 | 0];
    }
    [a, b, c, d, e, f, g, hh].forEach((x, i) => { h[i] = h[i] + x | 0; });
  }
  return h.map(x => (x >>> 0).toString(16).padStart(8, "0")).join("");
}

const hex = bytes => [...bytes].map(b => b.toString(16).padStart(2, "0")).join("");
