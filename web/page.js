// The page: loads the model, segments the dropped images one after another (in the order given), shows the
// contour, the mask, where the model is unsure and the lesion's area, and offers each mask as a PNG at the
// image's own size (several: one zip). Everything happens in this browser tab.
import * as ort from "./ort/ort.wasm.min.mjs";
import {MAX_PIXELS, declaredSize, loadModel, maskAtSize, outline, outputStem, probabilities, resize, rgbOf,
        tooLarge, zip} from "./segment.js";

const MAX_FILES = 50, DISPLAY = 768, SHOWN = 300;  // per drop; longest side of the pictures; their width on screen
const $ = id => document.getElementById(id);
const masks = [];  // {name, bytes} of every mask so far, for the zip
let model;


function canvasOf(w, h, fill) {  // fill(ImageData.data) draws the pixels
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d"), image = ctx.createImageData(w, h);
  fill(image.data);
  ctx.putImageData(image, 0, 0);
  return c;
}

function figure(canvas, caption) {
  const f = document.createElement("figure"), c = document.createElement("figcaption");
  canvas.setAttribute("role", "img"); canvas.setAttribute("aria-label", caption); c.textContent = caption;
  f.append(canvas, c);
  return f;
}

async function decode(file) {  // {rgba, w, h} of the photo as displayed (EXIF orientation applied, no colour conversion)
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (!bytes.length) throw new Error("the file is empty");
  const size = declaredSize(bytes);
  if (!size) throw new Error("not an image this page reads (JPEG, PNG, BMP, GIF or WebP), or a damaged one");
  if (size[0] * size[1] > MAX_PIXELS) throw new Error(tooLarge(size));
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]),
                                     {imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none"});
  } catch (e) { throw new Error("not an image this page reads (JPEG, PNG, BMP, GIF or WebP), or a damaged one"); }
  const w = bitmap.width, h = bitmap.height, c = new OffscreenCanvas(w, h), ctx = c.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  return {rgba: ctx.getImageData(0, 0, w, h).data, w, h};
}

function options() {
  const threshold = Number($("threshold").value);
  if (!(threshold > 0 && threshold < 1)) throw new Error("the threshold is a number strictly between 0 and 1");
  return {threshold, tta: $("tta").checked, largest: $("largest").checked};
}

// What the page shows of one photo: the contour on it, the mask, where the model is unsure (near the threshold).
function pictures(photo, prob, mask, o) {
  const scale = Math.min(1, DISPLAY / Math.max(photo.w, photo.h));
  const dw = Math.round(photo.w * scale), dh = Math.round(photo.h * scale);
  const shown = resize(rgbOf(photo.rgba), photo.w, photo.h, 3, dw, dh, true);
  const small = new Uint8Array(dw * dh);  // the mask at display size, nearest pixel
  for (let y = 0; y < dh; y++) {
    const row = Math.min(photo.h - 1, Math.floor((y + 0.5) / scale)) * photo.w;
    for (let x = 0; x < dw; x++) small[y * dw + x] = mask[row + Math.min(photo.w - 1, Math.floor((x + 0.5) / scale))];
  }
  const edge = outline(small, dw, dh, Math.max(2, Math.ceil(2 * dw / SHOWN)));  // about 2 screen pixels wide
  const p = resize(prob, model.size, model.size, 1, dw, dh, false), t = o.threshold;
  const contour = canvasOf(dw, dh, d => {
    for (let i = 0; i < dw * dh; i++)
      d.set(edge[i] ? [255, 0, 0, 255] : [shown[3 * i], shown[3 * i + 1], shown[3 * i + 2], 255], 4 * i);
  });
  const maskPicture = canvasOf(dw, dh, d => {
    for (let i = 0; i < dw * dh; i++) d.set([255 * small[i], 255 * small[i], 255 * small[i], 255], 4 * i);
  });
  const unsure = canvasOf(dw, dh, d => {
    for (let i = 0; i < dw * dh; i++) {
      const u = 1 - (p[i] < t ? (t - p[i]) / t : (p[i] - t) / (1 - t));  // 1 at the threshold, 0 at 0 or 1
      d.set([0.4 * shown[3 * i] + 153 * u, 0.4 * shown[3 * i + 1] + 120 * u, 0.4 * shown[3 * i + 2], 255], 4 * i);
    }
  });
  return [figure(contour, "contour"), figure(maskPicture, "mask"), figure(unsure, "unsure (yellow: near the threshold)")];
}

async function maskPng(mask, w, h) {  // 0/255 at the image's own size, as predict.py writes it
  const c = canvasOf(w, h, d => { for (let i = 0; i < w * h; i++) { const v = 255 * mask[i]; d.set([v, v, v, 255], 4 * i); } });
  return new Uint8Array(await (await new Promise(done => c.toBlob(done, "image/png"))).arrayBuffer());
}

async function segment(file, card, body) {
  const start = performance.now(), o = options(), photo = await decode(file);
  const prob = await probabilities(model, rgbOf(photo.rgba), photo.w, photo.h, o.tta);
  const mask = maskAtSize(prob, model.size, photo.w, photo.h, o.threshold, o.largest, model.edgeMove);
  const figures = pictures(photo, prob, mask, o), png = await maskPng(mask, photo.w, photo.h);
  const area = mask.reduce((a, b) => a + b, 0), seconds = (performance.now() - start) / 1000;
  const name = `${outputStem(file.name)}_segmentation.png`;
  const link = document.createElement("a"), text = document.createElement("p");
  link.className = "download"; link.textContent = "Download mask"; link.download = name;
  link.href = URL.createObjectURL(new Blob([png], {type: "image/png"}));
  text.className = "area";
  const share = (100 * area / (photo.w * photo.h)).toFixed(1);
  text.textContent = `${photo.w}x${photo.h} px; lesion ${area.toLocaleString("en")} px, ${share}% of the image; ` +
                     `${seconds.toFixed(2)} s. `;
  text.append(link);
  const row = document.createElement("div");
  row.className = "pictures"; row.append(...figures);
  body.textContent = ""; body.append(row, text);
  card.classList.add("done"); card.dataset.seconds = seconds;
  masks.push({name, bytes: png});
  $("zip").disabled = false;
}

async function handle(files) {
  $("message").textContent = "";
  if (files.length > MAX_FILES) {
    $("message").textContent = `${files.length} files: at most ${MAX_FILES} at once, please drop fewer.`;
    return;
  }
  const cards = files.map(file => {  // in the order given, each filled in as it is done
    const [card, title, body] = ["div", "h2", "div"].map(tag => document.createElement(tag));
    card.className = "result"; title.textContent = file.name; body.textContent = "waiting…";
    card.append(title, body); $("results").append(card);
    return {file, card, body};
  });
  for (const {file, card, body} of cards) {
    body.textContent = "segmenting…";
    try { await segment(file, card, body); } catch (e) {
      card.classList.add("failed");
      body.textContent = "";
      const p = document.createElement("p"); p.className = "error"; p.textContent = `${file.name}: ${e.message}`;
      body.append(p);
    }
  }
}

function unique(entries) {  // two masks of one name get two entries
  const used = new Set();
  return entries.map(({name, bytes}) => {
    let n = 1, candidate = name;
    while (used.has(candidate)) candidate = name.replace(/_segmentation\.png$/, `_${++n}_segmentation.png`);
    used.add(candidate);
    return {name: candidate, bytes};
  });
}

async function start() {
  const begin = performance.now();
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  ort.env.wasm.numThreads = crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1;
  try { model = await loadModel(ort, "./"); } catch (e) { $("status").textContent = `The model did not load: ${e.message}`; return; }
  $("threshold").value = model.threshold;
  const moved = model.edgeMove ? ` Its edge moves ${model.edgeMove > 0 ? "in" : "out"} by ` +
    `${Math.abs(model.edgeMove * 100).toFixed(0)}% of each lesion's radius (calibrated).` : "";
  $("status").textContent = `The model runs in this browser; images never leave this computer. Model loaded in ` +
    `${((performance.now() - begin) / 1000).toFixed(1)} s; WebAssembly, ${ort.env.wasm.numThreads} thread(s).${moved}`;
  document.body.dataset.ready = "1";
  const drop = $("drop");
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); handle([...e.dataTransfer.files]); });
  $("files").addEventListener("change", e => { handle([...e.target.files]); e.target.value = ""; });
  $("zip").addEventListener("click", () => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(zip(unique(masks.slice(-MAX_FILES)))); a.download = "masks.zip"; a.click();
  });
}

start();
