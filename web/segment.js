// The released model's pipeline in the browser, step for step as predict.py runs it: the photo (EXIF orientation
// applied) resized to the model's input as PIL resizes it (bilinear, antialiased), flip TTA, the probabilities
// resized back to the photo's own size, the threshold, the largest region, the edge moved as calibrated; then the
// mask's PNG (8-bit grey, 0/255, as predict.py writes it) and a zip of them.
// No step sends anything anywhere: the model runs in ONNX Runtime Web, here.

export const MAX_PIXELS = 100_000_000;  // lib/images.py's MAX_PIXELS: larger images are refused before decoding

// The model as model.json describes it (image_size, threshold, edge_move: the .onnx's metadata; its sha256), its
// bytes checked against that sha256 before a session is made of them: a damaged copy is refused, never run
export async function loadModel(ort, base) {
  const meta = await (await fetch(base + "model.json")).json();
  const bytes = new Uint8Array(await (await fetch(base + "model.onnx")).arrayBuffer());
  if (await sha256(bytes) !== meta.sha256)
    throw new Error("model.onnx is damaged or was changed: its sha256 is not the one model.json records. Copy the " +
                    "site's files again (make site).");
  const session = await ort.InferenceSession.create(bytes, {executionProviders: ["wasm"]});
  return {session, size: meta.image_size, threshold: meta.threshold, edgeMove: meta.edge_move ?? 0, ort, meta};
}

// How unsure the model is of a photo's mask, from its probabilities at the model's size: 1 minus their soft IoU with
// their own mask (p > threshold); 1 when nothing is lesion. lib/masks.py's unsure, the same rule (a test holds them)
export function unsure(prob, threshold) {
  let inside = 0, insideSum = 0, outsideSum = 0;
  for (const p of prob) if (p > threshold) { inside++; insideSum += p; } else outsideSum += p;
  return inside ? 1 - insideSum / (inside + outsideSum) : 1;
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

// What an image's mask is named after (<stem>_segmentation.png, whatever the format); with clash (another image
// has that stem) its stem and format: lib/photos.py's output_stem, the same rule
export function outputStem(name, clash = false) {
  const base = name.split(/[\\/]/).pop(), dot = base.lastIndexOf(".");
  if (dot < base.match(/^\.*/)[0].length) return base;  // no extension: leading dots belong to the name
  return clash ? `${base.slice(0, dot)}_${base.slice(dot + 1).toLowerCase()}` : base.slice(0, dot);
}

// The refusal of an image over MAX_PIXELS, in lib/images.py's words (tests/test_page.py holds the two together)
export function tooLarge([w, h]) {
  return `the image is ${w}x${h}, over ${MAX_PIXELS / 1e6} megapixels, the largest read here`;
}

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

// PIL's separable resampling (Image.resize with BILINEAR): a triangle filter widened by the scale when reducing.
function weights(inSize, outSize) {
  const scale = inSize / outSize, filterScale = Math.max(scale, 1), support = filterScale, rows = [];
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    const w = [];
    let total = 0;
    for (let i = lo; i < hi; i++) {
      const x = Math.abs((i - center + 0.5) / filterScale);
      w.push(x < 1 ? 1 - x : 0);
      total += w[w.length - 1];
    }
    rows.push({lo, w: w.map(x => x / total)});
  }
  return rows;
}

// Resize interleaved channels [h, w, c] to [outH, outW, c]; round8: each pass rounded to 0..255, as PIL does for
// 8-bit images (float images are not).
export function resize(src, w, h, c, outW, outH, round8) {
  const horizontal = weights(w, outW), vertical = weights(h, outH), mid = new Float32Array(h * outW * c);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < outW; x++) {
      const {lo, w: k} = horizontal[x];
      for (let ch = 0; ch < c; ch++) {
        let s = 0;
        for (let j = 0; j < k.length; j++) s += k[j] * src[(y * w + lo + j) * c + ch];
        mid[(y * outW + x) * c + ch] = round8 ? Math.min(255, Math.max(0, Math.round(s))) : s;
      }
    }
  const out = new Float32Array(outH * outW * c);
  for (let y = 0; y < outH; y++) {
    const {lo, w: k} = vertical[y];
    for (let x = 0; x < outW * c; x++) {
      let s = 0;
      for (let j = 0; j < k.length; j++) s += k[j] * mid[(lo + j) * outW * c + x];
      out[y * outW * c + x] = round8 ? Math.min(255, Math.max(0, Math.round(s))) : s;
    }
  }
  return out;
}

export function rgbOf(rgba) {
  const rgb = new Uint8Array(rgba.length / 4 * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) rgb.set(rgba.subarray(i, i + 3), j);
  return rgb;
}

// Lesion probabilities [S*S] of a photo's RGB pixels [h, w, 3]; with tta the mean over the image and its horizontal
// and vertical flips, each flipped back (one forward pass of three images).
export async function probabilities(model, rgb, w, h, tta) {
  const s = model.size, input = resize(rgb, w, h, 3, s, s, true), n = tta ? 3 : 1, x = new Float32Array(n * 3 * s * s);
  const source = [(r, c) => [r, c], (r, c) => [r, s - 1 - c], (r, c) => [s - 1 - r, c]];  // view k's pixel (r, c)
  for (let k = 0; k < n; k++)
    for (let r = 0; r < s; r++)
      for (let c = 0; c < s; c++) {
        const [sr, sc] = source[k](r, c);
        for (let ch = 0; ch < 3; ch++) x[((k * 3 + ch) * s + r) * s + c] = input[(sr * s + sc) * 3 + ch];
      }
  const images = new model.ort.Tensor("float32", x, [n, 3, s, s]);
  const logits = (await model.session.run({images})).logits.data, prob = new Float32Array(s * s);
  for (let k = 0; k < n; k++)
    for (let r = 0; r < s; r++)
      for (let c = 0; c < s; c++) {
        const [sr, sc] = source[k](r, c);  // flips are their own inverse
        prob[sr * s + sc] += 1 / (1 + Math.exp(-logits[(k * s + r) * s + c])) / n;
      }
  return prob;
}

// Only the largest 8-connected region of a 0/1 mask [h, w] (in place).
export function keepLargestRegion(mask, w, h) {
  const label = new Int32Array(w * h), stack = new Int32Array(w * h), sizes = [0];
  for (let start = 0; start < w * h; start++) {
    if (!mask[start] || label[start]) continue;
    const id = sizes.length;
    let top = 0, size = 0;
    stack[top++] = start; label[start] = id;
    while (top) {
      const p = stack[--top], y = (p / w) | 0, x = p - y * w;
      size++;
      for (let dy = -1; dy <= 1; dy++)
        for (let dx = -1; dx <= 1; dx++) {
          const yy = y + dy, xx = x + dx, q = yy * w + xx;
          if (yy >= 0 && yy < h && xx >= 0 && xx < w && mask[q] && !label[q]) { label[q] = id; stack[top++] = q; }
        }
    }
    sizes.push(size);
  }
  const keep = sizes.indexOf(Math.max(...sizes));
  for (let p = 0; p < w * h; p++) mask[p] = label[p] === keep && keep > 0 ? 1 : 0;
  return mask;
}

// The 0/1 mask [h, w] of probabilities [S*S]: resized back (bilinear), thresholded, its largest region if asked,
// its edge moved by edgeMove x its equivalent radius (masks.py's mask_at_size).
export function maskAtSize(prob, s, w, h, threshold, largest, edgeMove = 0) {
  const up = resize(prob, s, s, 1, w, h, false), mask = new Uint8Array(w * h);
  for (let p = 0; p < w * h; p++) mask[p] = up[p] > threshold ? 1 : 0;
  return moveEdge(largest ? keepLargestRegion(mask, w, h) : mask, w, h, edgeMove);
}

// Squared distances [h, w] from each pixel to the nearest pixel where isFeature(mask[p]) (exact: Felzenszwalb and
// Huttenlocher's lower envelope, columns then rows), as scipy's distance_transform_edt finds them.
function squaredDistances(mask, w, h, isFeature) {
  const far = 1e20, d = new Float64Array(w * h), n = Math.max(w, h);
  const f = new Float64Array(n), out = new Float64Array(n), v = new Int32Array(n), z = new Float64Array(n + 1);
  const line = (len) => {
    let k = 0;
    v[0] = 0; z[0] = -Infinity; z[1] = Infinity;
    for (let q = 1; q < len; q++) {
      let s;
      while ((s = (f[q] + q * q - f[v[k]] - v[k] * v[k]) / (2 * q - 2 * v[k])) <= z[k]) k--;
      k++; v[k] = q; z[k] = s; z[k + 1] = Infinity;
    }
    for (let q = 0, j = 0; q < len; q++) {
      while (z[j + 1] < q) j++;
      out[q] = (q - v[j]) ** 2 + f[v[j]];
    }
  };
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) f[y] = isFeature(mask[y * w + x]) ? 0 : far;
    line(h);
    for (let y = 0; y < h; y++) d[y * w + x] = out[y];
  }
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) f[x] = d[y * w + x];
    line(w);
    for (let x = 0; x < w; x++) d[y * w + x] = out[x];
  }
  return d;
}

// The 0/1 mask [h, w] with its edge moved by share x its equivalent radius: inward for share > 0, outward for < 0
// (masks.py's move_edge: unchanged for share 0, an empty mask, or one that fills the image).
export function moveEdge(mask, w, h, share) {
  return share ? movedEdges(mask, w, h, [share])[0] : mask;
}

// The mask with its edge moved by each share of shares (masks.py's moved_edges; each distance transform once).
export function movedEdges(mask, w, h, shares) {
  let area = 0;
  for (let p = 0; p < w * h; p++) area += mask[p];
  if (area === 0 || area === w * h) return shares.map(() => mask);
  const radius = Math.sqrt(area / Math.PI);
  const inside = shares.some(s => s >= 0) ? squaredDistances(mask, w, h, m => !m) : null;  // to the outside
  const outside = shares.some(s => s < 0) ? squaredDistances(mask, w, h, m => m) : null;  // to the lesion
  return shares.map(share => {
    const moved = new Uint8Array(w * h), reach = Math.abs(share) * radius;
    for (let p = 0; p < w * h; p++)
      moved[p] = share >= 0 ? (Math.sqrt(inside[p]) > reach ? 1 : 0) : (Math.sqrt(outside[p]) <= reach ? 1 : 0);
    return moved;
  });
}

// The 0/1 mask [h, w] shown at [dh, dw] (scale = dw / w), nearest pixel: what the page and its editor draw.
export function shownMask(mask, w, h, dw, dh, scale) {
  const small = new Uint8Array(dw * dh);
  for (let y = 0; y < dh; y++) {
    const row = Math.min(h - 1, Math.floor((y + 0.5) / scale)) * w;
    for (let x = 0; x < dw; x++) small[y * dw + x] = mask[row + Math.min(w - 1, Math.floor((x + 0.5) / scale))];
  }
  return small;
}

// Pixels of a mask's boundary (inside it, next to a pixel outside), grown to `width` pixels.
export function outline(mask, w, h, width) {
  const at = (m, x, y) => x >= 0 && y >= 0 && x < w && y < h && m[y * w + x];
  let edge = new Uint8Array(w * h);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const inside = at(mask, x - 1, y) && at(mask, x + 1, y) && at(mask, x, y - 1) && at(mask, x, y + 1);
      edge[y * w + x] = at(mask, x, y) && !inside ? 1 : 0;
    }
  for (let k = 1; k < width; k++) {
    const grown = edge.slice();
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        if (at(edge, x - 1, y) || at(edge, x + 1, y) || at(edge, x, y - 1) || at(edge, x, y + 1)) grown[y * w + x] = 1;
    edge = grown;
  }
  return edge;
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
