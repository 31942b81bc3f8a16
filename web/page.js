// The page: loads the model, segments the dropped images one after another (in the order given), shows the
// contour, the mask, where the model is unsure and the lesion's area, and offers each mask as a PNG at the
// image's own size (several: one zip). Each mask can be corrected (editor.js), accepted, kept in this browser
// (store.js), exported as labelled data and used to calibrate the edge (clinic.js). Everything happens in this tab.
import * as ort from "./ort/ort.wasm.min.mjs";
import {HOLD_OUT_EVERY, calibrateOn, exportZip, showCount} from "./clinic.js";
import {openEditor} from "./editor.js";
import {declaredSize, png, sha256, zip} from "./formats.js";
import {MAX_PIXELS, displaySize, loadModel, maskAtSize, outline, outputStem, probabilities, resize, rgbOf, shownMask, tooLarge,
        unsure} from "./segment.js";
import {changes, clearAll, saveImage, saveSetting, savedImage, savedImages, setting} from "./store.js";

const SHOWN = 300;  // the pictures' width on screen
const CHECK_FIRST = 0.2;  // the most unsure fifth of the photos not yet accepted are marked "check first"
const $ = id => document.getElementById(id);
const items = [];  // every image segmented or restored here, in order
let model, calibration, serial = 0, cards = 0;


// A figure of w x h pixels, fill(data) setting their RGB (opaque), as an <img> of an encoded file: a card holds a
// JPEG or PNG of some kilobytes per picture, where a canvas would hold its pixels (500 photos: docs/page.md)
async function figure(w, h, caption, fill, type = "image/jpeg") {
  const c = new OffscreenCanvas(w, h), ctx = c.getContext("2d"), image = ctx.createImageData(w, h);
  image.data.fill(255);
  fill(image.data);
  ctx.putImageData(image, 0, 0);
  const f = document.createElement("figure"), img = document.createElement("img"), text = document.createElement("figcaption");
  img.src = URL.createObjectURL(await c.convertToBlob({type, quality: 0.92}));
  img.width = w; img.height = h; img.alt = text.textContent = caption;
  f.append(img, text);
  return f;
}

async function decode(blob) {  // {rgba, w, h} of the photo as displayed (EXIF orientation applied, no colour conversion)
  const bytes = new Uint8Array(await blob.arrayBuffer());
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
  return {rgba: ctx.getImageData(0, 0, w, h).data, w, h, bytes};
}

function options() {
  const threshold = Number($("threshold").value);
  if (!(threshold > 0 && threshold < 1)) throw new Error("the threshold is a number strictly between 0 and 1");
  return {threshold, tta: $("tta").checked, largest: $("largest").checked, edgeMove: model.edgeMove};
}

// What the page shows of one photo: the contour on it, the mask, where the model is unsure (near the threshold).
async function pictures(item) {
  const {photo, prob, mask, proposal} = item, {scale, dw, dh} = displaySize(photo.w, photo.h);
  // of the photo only its file's bytes are kept: its pixels are decoded again when they are needed
  const shown = resize(rgbOf(photo.rgba ?? await pixels(item)), photo.w, photo.h, 3, dw, dh, true);
  photo.rgba = null;
  await breathe();
  const small = shownMask(mask, photo.w, photo.h, dw, dh, scale);
  const edge = outline(small, dw, dh, Math.max(2, Math.ceil(2 * dw / SHOWN)));  // about 2 screen pixels wide
  const p = resize(prob, model.size, model.size, 1, dw, dh, false), t = proposal.threshold;
  await breathe();
  const contour = await figure(dw, dh, "contour", d => {
    for (let i = 0; i < dw * dh; i++)
      for (let k = 0; k < 3; k++) d[4 * i + k] = edge[i] ? (k ? 0 : 255) : shown[3 * i + k];
  });
  await breathe();
  const maskPicture = await figure(dw, dh, "mask", d => {
    for (let i = 0; i < dw * dh; i++) d[4 * i] = d[4 * i + 1] = d[4 * i + 2] = 255 * small[i];
  }, "image/png");
  await breathe();
  const unsure = await figure(dw, dh, "unsure (yellow: near the threshold)", d => {
    for (let i = 0; i < dw * dh; i++) {
      const u = 1 - (p[i] < t ? (t - p[i]) / t : (p[i] - t) / (1 - t));  // 1 at the threshold, 0 at 0 or 1
      d[4 * i] = 0.4 * shown[3 * i] + 153 * u; d[4 * i + 1] = 0.4 * shown[3 * i + 1] + 120 * u;
      d[4 * i + 2] = 0.4 * shown[3 * i + 2];
    }
  });
  return [contour, maskPicture, unsure];
}

// 0/255 at the image's own size, as predict.py writes it
const maskPng = item => png(item.photo.w, item.photo.h, 1, item.mask.map(v => 255 * v));

function uniqueId(name) {  // the mask's stem (outputStem); a stem taken: with the format, then _2, and so on
  const used = new Set(items.map(i => i.id)), stem = outputStem(name, used.has(outputStem(name)));
  let id = stem, n = 1;
  while (used.has(id)) id = `${stem}_${++n}`;
  return id;
}

function record(item) {  // what store.js keeps of an item
  const {key, id, name, bytes, prob, size, mask, proposal, accepted, heldOut, corrected, order} = item;
  return {key, id, name, bytes, prob, size, mask, proposal, accepted, heldOut, corrected, order};
}

async function keep(item) {  // written before the page goes on: a crash after this loses nothing
  item.corrected = true;
  try { await saveImage(record(item)); } catch (e) { $("message").textContent = e.message; }
  showCount(items);
}

// The card's pictures, numbers, download link and correction controls, from the item as it is now.
async function show(item) {
  const {photo, mask, card, body} = item, area = mask.reduce((a, b) => a + b, 0);
  const link = document.createElement("a"), text = document.createElement("p"), row = document.createElement("div");
  link.className = "download"; link.textContent = "Download mask"; link.download = `${item.id}_segmentation.png`;
  link.href = URL.createObjectURL(new Blob([await maskPng(item)], {type: "image/png"}));
  text.className = "area";
  text.textContent = `${photo.w}x${photo.h} px; lesion ${area.toLocaleString("en")} px, ` +
    `${(100 * area / (photo.w * photo.h)).toFixed(1)}% of the image; unsure ${item.unsure.toFixed(2)}` +
    `${item.seconds ? `; ${item.seconds.toFixed(2)} s` : ""}. `;
  text.append(link);
  row.className = "pictures"; row.append(...(await pictures(item)));
  for (const old of body.querySelectorAll("img, a.download")) URL.revokeObjectURL(old.src || old.href);
  body.textContent = ""; body.append(row, text, controls(item));
  card.classList.add("done"); card.classList.toggle("accepted", !!item.accepted);
  card.dataset.id = item.id; card.dataset.unsure = item.unsure;
}

// The editor on one photo, with a step to the next photo of the queue after it (how many are left)
function correct(item) {
  const next = () => { const order = inQueue(); return order.slice(order.indexOf(item) + 1); };
  item.editor = openEditor(item.body, item, pixels(item), async mask => { item.mask = mask; await keep(item); },
                           () => { item.editor = null; show(item); },
                           {label: () => `Next most unsure (${next().length} left)`, go: () => {
                             const to = next()[0];
                             item.editor.close();
                             if (to) { to.card.scrollIntoView(); correct(to); }
                           }});
}

function controls(item) {
  const bar = document.createElement("div"), state = document.createElement("span");
  const held = document.createElement("label"), box = document.createElement("input");
  const edit = document.createElement("button"), accept = document.createElement("button");
  bar.className = "correction";
  edit.type = accept.type = "button"; edit.className = "correct"; accept.className = "accept";
  edit.textContent = "Correct"; accept.textContent = item.accepted ? "Accepted ✓" : "Accept";
  state.className = "state"; state.textContent = item.accepted ? "labelled" : item.corrected ? "corrected, not accepted" : "";
  box.type = "checkbox"; box.className = "held-out"; box.checked = !!item.heldOut; box.disabled = !item.accepted;
  held.append(box, " held out (scores the calibration, not used to fit it)");
  edit.addEventListener("click", () => { edit.disabled = true; correct(item); });
  accept.addEventListener("click", async () => {
    if (!item.accepted) item.heldOut = items.filter(i => i.accepted).length % HOLD_OUT_EVERY === HOLD_OUT_EVERY - 1;
    item.accepted = true; item.editor?.close(); await keep(item); show(item); queue();
  });
  box.addEventListener("change", async () => { item.heldOut = box.checked; await keep(item); });
  bar.append(edit, accept, held, state);
  return bar;
}

function newCard(name) {
  const [card, title, body] = ["div", "h2", "div"].map(tag => document.createElement(tag));
  card.className = "result"; title.textContent = name; body.textContent = "waiting…";
  card.dataset.order = cards++;  // the order given, whatever order the queue shows them in
  card.append(title, body); $("results").append(card);
  return {card, body};
}

// Ends the main thread's task, so that the page answers input between the steps of a photo (docs/page.md measures
// the longest task); the model itself runs in ONNX Runtime's worker (ort.env.wasm.proxy)
const breathe = () => new Promise(go => setTimeout(go, 0));

async function segment(file, card, body) {
  const start = performance.now(), proposal = options(), photo = await decode(file);
  await breathe();
  const prob = await probabilities(model, rgbOf(photo.rgba), photo.w, photo.h, proposal.tta);
  await breathe();
  const mask = maskAtSize(prob, model.size, photo.w, photo.h, proposal.threshold, proposal.largest, proposal.edgeMove);
  await breathe();
  const item = {key: await sha256(photo.bytes), id: uniqueId(file.name), name: file.name, bytes: photo.bytes, photo,
                prob, size: model.size, mask, proposal, card, body, order: Date.now() * 1000 + serial++,
                seconds: (performance.now() - start) / 1000};
  item.unsure = unsure(prob, proposal.threshold);
  items.push(item);
  await show(item);
  card.dataset.seconds = item.seconds;
  queue();
  $("zip").disabled = false;
}

// Any number of photos, a folder's too, one after another: a card each as its turn comes, a progress line, and of
// each photo only its file's bytes and what its card shows kept (its full pixels are decoded again when needed)
async function handle(files) {
  $("message").textContent = "";
  files = files.filter(f => !f.name.startsWith("."));  // a folder's hidden files (macOS's ._name.jpg)
  for (const [n, file] of files.entries()) {
    $("progress").textContent = `segmenting ${n + 1} of ${files.length}: ${file.webkitRelativePath || file.name}`;
    const {card, body} = newCard(file.webkitRelativePath || file.name);
    body.textContent = "segmenting…";
    try { await segment(file, card, body); } catch (e) {
      card.classList.add("failed");
      body.textContent = "";
      const p = document.createElement("p"); p.className = "error"; p.textContent = `${file.name}: ${e.message}`;
      body.append(p);
    }
  }
  $("progress").textContent = files.length ? `${files.length} photo${files.length > 1 ? "s" : ""} done` : "";
  showCount(items);
}

// The files of a drop, folders searched through (the browser's file system entries)
async function dropped(transfer) {
  const entries = [...transfer.items].map(i => i.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return [...transfer.files];
  const files = [];
  async function walk(entry) {
    if (entry.isFile) return files.push(await new Promise((ok, fail) => entry.file(ok, fail)));
    const reader = entry.createReader();
    for (let batch; (batch = await new Promise((ok, fail) => reader.readEntries(ok, fail))).length;)
      for (const child of batch) await walk(child);
  }
  for (const entry of entries) await walk(entry);
  return files;
}

const pixels = async item => (await decode(new Blob([item.photo.bytes]))).rgba;  // the photo's, decoded again

async function restore() {  // the corrections an earlier visit (or another tab) kept, as they were
  for (const r of (await savedImages()).sort((a, b) => a.order - b.order)) await restoreOne(r);
  const move = await setting(edgeMoveKey());
  if (move !== undefined) model.edgeMove = move;
  showCount(items);
}

async function restoreOne(r) {  // a kept photo shown, or the one shown here brought up to what was kept
  const here = items.find(i => i.key === r.key);
  if (here) {
    Object.assign(here, {mask: r.mask, accepted: r.accepted, heldOut: r.heldOut, corrected: r.corrected});
    if (!here.editor) await show(here);
    return;
  }
  const {card, body} = newCard(r.name);
  items.push({...r, id: uniqueId(r.name), photo: await decode(new Blob([r.bytes])), card, body,
              unsure: unsure(r.prob, r.proposal.threshold)});
  await show(items[items.length - 1]);
  $("zip").disabled = false;
  queue();
}

// The photos to correct first: not yet accepted, the most unsure first (accepted ones after them)
const inQueue = () => items.filter(i => !i.accepted).sort((a, b) => b.unsure - a.unsure);

function queue() {  // the cards in the queue's order, the most unsure fifth of it marked
  const waiting = inQueue(), marked = new Set(waiting.slice(0, Math.ceil(CHECK_FIRST * waiting.length)));
  for (const item of [...waiting, ...items.filter(i => i.accepted)]) {
    item.card.classList.toggle("check-first", marked.has(item));
    $("results").append(item.card);
  }
}

// A stored edge move belongs to the model it was fitted on
const edgeMoveKey = () => `edgeMove ${model.meta.sha256}`;

function followOtherTabs() {  // another tab kept a photo: shown here too; cleared them: none is kept here either
  changes(async change => {
    if (change.saved) await restoreOne(await savedImage(change.saved));
    for (const item of change.cleared ? items : []) {
      Object.assign(item, {corrected: false, accepted: false, heldOut: false});
      if (!item.editor) await show(item);
    }
    showCount(items);
  });
}

function describeModel(begin) {
  const moved = model.edgeMove ? ` Its edge moves ${model.edgeMove > 0 ? "in" : "out"} by ` +
    `${Math.abs(model.edgeMove * 100).toFixed(0)}% of each lesion's radius (calibrated).` : "";
  $("status").textContent = `The model runs in this browser; images never leave this computer. Model loaded in ` +
    `${((performance.now() - begin) / 1000).toFixed(1)} s; WebAssembly, ${ort.env.wasm.numThreads} thread(s).${moved}`;
}

function wireClinic(begin) {
  $("calibrate").addEventListener("click", () => {
    calibration = calibrateOn(items);
    $("calibration").textContent = calibration.words;
    $("calibration").dataset.edgeMove = calibration.edgeMove;
    $("calibration").dataset.heldOut = JSON.stringify(calibration.heldOut);
    $("use-move").hidden = !calibration.edgeMove;
  });
  $("use-move").addEventListener("click", async () => {
    model.edgeMove = calibration.edgeMove; $("threshold").value = 0.5;  // the move was calibrated at 0.5
    await saveSetting(edgeMoveKey(), model.edgeMove);
    describeModel(begin); $("use-move").hidden = true; $("redo-before").hidden = false;
  });
  $("redo-before").addEventListener("click", async () => {
    for (const item of items.filter(i => !i.corrected)) {
      item.proposal = {...item.proposal, threshold: 0.5, edgeMove: model.edgeMove};
      item.mask = maskAtSize(item.prob, item.size, item.photo.w, item.photo.h, 0.5, item.proposal.largest, model.edgeMove);
      await show(item);
    }
    $("redo-before").hidden = true;
  });
  $("export").addEventListener("click", async () => {
    const a = document.createElement("a");
    const pngs = {mask: maskPng, photo: async i => png(i.photo.w, i.photo.h, 3, rgbOf(await pixels(i)))};
    a.href = URL.createObjectURL(await exportZip(items, model, pngs, calibration)); a.download = "labelled.zip"; a.click();
  });
  $("clear").addEventListener("click", async () => {
    if (!confirm("Remove every corrected image and the chosen edge move from this browser?")) return;
    await clearAll();
    location.reload();
  });
}

// The service worker (sw.js) keeps the page for visits with no network and adds the isolation headers that threads
// need. Once it controls a page that is not isolated (a static host without those headers): one reload, never two.
// Returns whether the page reloads.
async function keepOffline() {
  if (!navigator.serviceWorker) return false;  // no secure context (plain http to another machine): 1 thread
  try {
    await navigator.serviceWorker.register("sw.js");
    await Promise.race([navigator.serviceWorker.ready, new Promise(r => setTimeout(r, 3000))]);
  } catch (e) {
    console.warn(`no service worker, so no offline visits: ${e.message}`);
    return false;
  }
  const worker = navigator.serviceWorker.controller ?? await new Promise(r => {
    navigator.serviceWorker.addEventListener("controllerchange", () => r(navigator.serviceWorker.controller));
    setTimeout(r, 3000);
  });
  if (crossOriginIsolated || !worker || sessionStorage.getItem("reloaded-for-threads")) return false;
  sessionStorage.setItem("reloaded-for-threads", "1");
  location.reload();
  return true;
}

async function start() {
  const begin = performance.now();
  if (await keepOffline()) return;
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  ort.env.wasm.numThreads = crossOriginIsolated ? navigator.hardwareConcurrency || 1 : 1;
  ort.env.wasm.proxy = true;  // the model runs in a worker: the page answers input while it runs
  try { model = await loadModel(ort, "./"); } catch (e) { $("status").textContent = `The model did not load: ${e.message}`; return; }
  $("threshold").value = model.threshold;
  try { await restore(); } catch (e) { $("message").textContent = `Earlier corrections could not be read: ${e.message}`; }
  followOtherTabs();
  describeModel(begin);
  wireClinic(begin);
  document.body.dataset.ready = "1";
  const drop = $("drop");
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async e => {
    e.preventDefault(); drop.classList.remove("over"); handle(await dropped(e.dataTransfer));
  });
  for (const input of ["files", "folder"])
    $(input).addEventListener("change", e => { handle([...e.target.files]); e.target.value = ""; });
  $("zip").addEventListener("click", async () => {
    const a = document.createElement("a");  // every result on the page
    const entries = await Promise.all(items.map(async i => ({name: `${i.id}_segmentation.png`, bytes: await maskPng(i)})));
    a.href = URL.createObjectURL(zip(entries)); a.download = "masks.zip"; a.click();
  });
  window.lesionPage = {items, edit: (id, mask) => items.find(i => i.id === id).editor.set(mask)};  // tests' handle
}

start();
