// The released model's pipeline in the browser, step for step as predict.py runs it: the photo (EXIF orientation
// applied) resized to the model's input as PIL resizes it (bilinear, antialiased), flip TTA, the probabilities
// resized back to the photo's own size, the threshold, the largest region, the edge moved as calibrated, the
// unsure score; the files it reads and writes are formats.js's.
// No step sends anything anywhere: the model runs in ONNX Runtime Web, here.
import {sha256} from "./formats.js";

export const MAX_PIXELS = 100_000_000;  // lib/readers.py's MAX_PIXELS: larger images are refused before decoding
export const DISPLAY = 768;  // the longest side of a photo as the page and its editor show it

// {scale, dw, dh}: a photo of w x h drawn at most DISPLAY pixels on its longest side (never enlarged: scale <= 1)
export function displaySize(w, h) {
  const scale = Math.min(1, DISPLAY / Math.max(w, h));
  return {scale, dw: Math.round(w * scale), dh: Math.round(h * scale)};
}

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

// What an image's mask is named after (<stem>_segmentation.png, whatever the format); with clash (another image
// has that stem) its stem and format: lib/photos.py's output_stem, the same rule
export function outputStem(name, clash = false) {
  const base = name.split(/[\\/]/).pop(), dot = base.lastIndexOf(".");
  if (dot < base.match(/^\.*/)[0].length) return base;  // no extension: leading dots belong to the name
  return clash ? `${base.slice(0, dot)}_${base.slice(dot + 1).toLowerCase()}` : base.slice(0, dot);
}

// The refusal of an image over MAX_PIXELS, in lib/readers.py's words (tests/test_page.py holds the two together)
export function tooLarge([w, h]) {
  return `the image is ${w}x${h}, over ${MAX_PIXELS / 1e6} megapixels, the largest read here`;
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
