// The released model's pipeline in the browser, step for step as predict.py runs it: the photo (EXIF orientation
// applied) resized to the model's input as PIL resizes it (bilinear, antialiased), flip TTA, the probabilities
// resized back to the photo's own size, the threshold, the largest region; then the mask's PNG and a zip of them.
// No step sends anything anywhere: the model runs in ONNX Runtime Web, here.

export const MAX_PIXELS = 100_000_000;  // as the command line's reader: larger images are refused before decoding

export async function loadModel(ort, base) {
  const meta = await (await fetch(base + "model.json")).json();  // image_size and threshold, read from the .onnx
  const session = await ort.InferenceSession.create(base + "model.onnx", {executionProviders: ["wasm"]});
  return {session, size: meta.image_size, threshold: meta.threshold, ort};
}

// The width and height a PNG, JPEG, GIF or BMP header declares (null for other formats): read before decoding.
export function declaredSize(bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length >= 24 && v.getUint32(0) === 0x89504e47) return [v.getUint32(16), v.getUint32(20)];
  if (bytes.length >= 10 && v.getUint32(0) === 0x47494638) return [v.getUint16(6, true), v.getUint16(8, true)];
  if (bytes.length >= 26 && v.getUint16(0) === 0x424d) return [Math.abs(v.getInt32(18, true)), Math.abs(v.getInt32(22, true))];
  if (bytes.length >= 4 && v.getUint16(0) === 0xffd8) {
    for (let i = 2; i + 9 < bytes.length;) {
      if (bytes[i] !== 0xff) { i++; continue; }
      const marker = bytes[i + 1];
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) return [v.getUint16(i + 7), v.getUint16(i + 5)];
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
    const lo = Math.max(Math.trunc(center - support + 0.5), 0), hi = Math.min(Math.trunc(center + support + 0.5), inSize);
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
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
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

// The 0/1 mask [h, w] of probabilities [S*S]: resized back (bilinear), thresholded, its largest region if asked.
export function maskAtSize(prob, s, w, h, threshold, largest) {
  const up = resize(prob, s, s, 1, w, h, false), mask = new Uint8Array(w * h);
  for (let p = 0; p < w * h; p++) mask[p] = up[p] > threshold ? 1 : 0;
  return largest ? keepLargestRegion(mask, w, h) : mask;
}

// Pixels of a mask's boundary (inside it, next to a pixel outside), grown to `width` pixels.
export function outline(mask, w, h, width) {
  const at = (m, x, y) => x >= 0 && y >= 0 && x < w && y < h && m[y * w + x];
  let edge = new Uint8Array(w * h);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++)
      edge[y * w + x] = at(mask, x, y) && !(at(mask, x - 1, y) && at(mask, x + 1, y) && at(mask, x, y - 1) && at(mask, x, y + 1)) ? 1 : 0;
  for (let k = 1; k < width; k++) {
    const grown = edge.slice();
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        if (at(edge, x - 1, y) || at(edge, x + 1, y) || at(edge, x, y - 1) || at(edge, x, y + 1)) grown[y * w + x] = 1;
    edge = grown;
  }
  return edge;
}

// A zip (stored, no compression: PNGs are compressed already) of [{name, bytes: Uint8Array}].
export function zip(files) {
  const table = new Uint32Array(256).map((_, n) => { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; return c; });
  const crc = b => { let c = 0xffffffff; for (const x of b) c = table[(c ^ x) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; };
  const parts = [], central = [], encoder = new TextEncoder();
  let offset = 0;
  const header = (size, fill) => { const b = new Uint8Array(size); fill(new DataView(b.buffer)); return b; };
  for (const f of files) {
    const name = encoder.encode(f.name), sum = crc(f.bytes), n = f.bytes.length;
    const common = (v, o) => { v.setUint16(o, 20, true); v.setUint32(o + 10, sum, true); v.setUint32(o + 14, n, true); v.setUint32(o + 18, n, true); v.setUint16(o + 22, name.length, true); };
    parts.push(header(30, v => { v.setUint32(0, 0x04034b50, true); common(v, 4); }), name, f.bytes);
    central.push(header(46, v => { v.setUint32(0, 0x02014b50, true); v.setUint16(4, 20, true); common(v, 6); v.setUint32(42, offset, true); }), name);
    offset += 30 + name.length + n;
  }
  const size = central.reduce((t, b) => t + b.length, 0);
  const end = header(22, v => { v.setUint32(0, 0x06054b50, true); v.setUint16(8, files.length, true); v.setUint16(10, files.length, true); v.setUint32(12, size, true); v.setUint32(16, offset, true); });
  return new Blob([...parts, ...central, end], {type: "application/zip"});
}
