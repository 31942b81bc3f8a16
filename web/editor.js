// Correcting one mask: a brush that adds, an eraser that removes, their size, undo and redo, the whole edge grown
// or shrunk (the edge move, for this image), with mouse, pen or touch (pointer events). Drawn at display scale,
// applied to the mask at the image's own size.
import {moveEdge, outline, resize, rgbOf, shownMask} from "./segment.js";

const DISPLAY = 768, HISTORY = 30, EDGE_STEP = 0.02;  // longest side shown; undo steps kept; one grow/shrink click

// Paint (value 1) or erase (0) on a 0/1 mask [h, w] every pixel whose centre lies within radius of the polyline
// through points ({x, y} in image pixels; one point: a dot). tests/test_page.py computes the same pixels in Python.
export function paintStroke(mask, w, h, points, radius, value) {
  const r2 = radius * radius;
  const segments = points.length > 1 ? points.slice(1).map((b, i) => [points[i], b]) : [[points[0], points[0]]];
  for (const [a, b] of segments) {
    const dx = b.x - a.x, dy = b.y - a.y, len2 = dx * dx + dy * dy;
    const x0 = Math.max(0, Math.floor(Math.min(a.x, b.x) - radius)), x1 = Math.min(w - 1, Math.ceil(Math.max(a.x, b.x) + radius));
    const y0 = Math.max(0, Math.floor(Math.min(a.y, b.y) - radius)), y1 = Math.min(h - 1, Math.ceil(Math.max(a.y, b.y) + radius));
    for (let y = y0; y <= y1; y++)
      for (let x = x0; x <= x1; x++) {
        const px = x + 0.5, py = y + 0.5;
        const t = len2 ? Math.min(1, Math.max(0, ((px - a.x) * dx + (py - a.y) * dy) / len2)) : 0;
        const ex = px - (a.x + t * dx), ey = py - (a.y + t * dy);
        if (ex * ex + ey * ey <= r2) mask[y * w + x] = value;
      }
  }
  return mask;
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = text; b.addEventListener("click", onClick);
  return b;
}

// An editor over item ({photo: {rgba, w, h}, mask}) in container; onChange(mask) after every change, onClose() when
// the user closes it; next: {label(), go()}, a button to the next photo to correct. Returns {set(mask): one more
// change through the editing path, close()}.
export function openEditor(container, item, onChange, onClose, next) {
  const {w, h} = item.photo, scale = Math.min(1, DISPLAY / Math.max(w, h));
  const dw = Math.round(w * scale), dh = Math.round(h * scale);
  const shown = resize(rgbOf(item.photo.rgba), w, h, 3, dw, dh, true);
  const canvas = document.createElement("canvas"), size = document.createElement("input");
  canvas.width = dw; canvas.height = dh; canvas.className = "editor-canvas"; canvas.style.touchAction = "none";
  if (scale === 1 && Math.max(w, h) < DISPLAY)  // a small photo shown at DISPLAY, its pixels enlarged
    Object.assign(canvas.style, {width: `${Math.round(w * DISPLAY / Math.max(w, h))}px`, imageRendering: "pixelated"});
  Object.assign(size, {type: "range", min: 2, max: 80, value: 20, className: "brush-size"});
  let mask = item.mask.slice(), tool = 1, stroke = null, pending = false;
  const undo = [], redo = [];

  function draw() {  // the photo, the mask tinted blue, its outline red
    pending = false;
    const small = shownMask(mask, w, h, dw, dh, scale);
    const edge = outline(small, dw, dh, 2), ctx = canvas.getContext("2d"), image = ctx.createImageData(dw, dh);
    for (let i = 0; i < dw * dh; i++) {
      const [r, g, b] = [shown[3 * i], shown[3 * i + 1], shown[3 * i + 2]];
      image.data.set(edge[i] ? [255, 0, 0, 255] : small[i] ? [0.6 * r, 0.6 * g, 0.6 * b + 100, 255] : [r, g, b, 255], 4 * i);
    }
    ctx.putImageData(image, 0, 0);
  }
  const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(draw); } };
  function change(next) {  // one undoable step
    undo.push(mask); if (undo.length > HISTORY) undo.shift();
    redo.length = 0; mask = next; draw(); onChange(mask); steps();
  }
  function point(e) {  // the pointer in image pixels
    const r = canvas.getBoundingClientRect();
    return {x: (e.clientX - r.left) * w / r.width, y: (e.clientY - r.top) * h / r.height};
  }
  const radius = () => Number(size.value) / 2 * w / canvas.getBoundingClientRect().width;
  canvas.addEventListener("pointerdown", e => {
    e.preventDefault();
    try { canvas.setPointerCapture(e.pointerId); } catch { /* a scripted pointer has nothing to capture */ }
    stroke = {points: [point(e)], before: mask, mask: mask.slice()};
    paintStroke(stroke.mask, w, h, stroke.points, radius(), tool);
    mask = stroke.mask; redraw();
  });
  canvas.addEventListener("pointermove", e => {
    if (!stroke) return;
    const p = point(e), last = stroke.points[stroke.points.length - 1];
    stroke.points.push(p);
    paintStroke(stroke.mask, w, h, [last, p], radius(), tool);
    redraw();
  });
  const end = () => {
    if (!stroke) return;
    const done = stroke; stroke = null;
    mask = done.before; change(done.mask);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  const tools = document.createElement("div");
  tools.className = "editor-tools";
  const brush = button("Brush", () => select(1)), eraser = button("Eraser", () => select(0));
  function select(value) { tool = value; brush.classList.toggle("on", value === 1); eraser.classList.toggle("on", value === 0); }
  const step = (from, to) => { if (from.length) { to.push(mask); mask = from.pop(); draw(); onChange(mask); steps(); } };
  const undoButton = button("Undo", () => step(undo, redo)), redoButton = button("Redo", () => step(redo, undo));
  function steps() {  // the buttons say how many steps they can take back or again; none left: disabled
    undoButton.disabled = !undo.length; redoButton.disabled = !redo.length;
    undoButton.title = `${undo.length} step${undo.length === 1 ? "" : "s"} to undo (the last ${HISTORY} are kept)`;
    redoButton.title = `${redo.length} step${redo.length === 1 ? "" : "s"} to redo`;
  }
  const sizeLabel = document.createElement("label"), hint = document.createElement("p");
  sizeLabel.append("size ", size);
  hint.className = "editor-hint";
  hint.textContent = `Draw on the photo: the brush adds to the lesion, the eraser removes; Undo takes back up to the ` +
    `last ${HISTORY} steps. The mask is kept as you go; Accept when it is right.`;
  tools.append(brush, eraser, sizeLabel, undoButton, redoButton,
               button("Shrink edge", () => change(moveEdge(mask, w, h, EDGE_STEP))),
               button("Grow edge", () => change(moveEdge(mask, w, h, -EDGE_STEP))), button("Close", () => close()));
  if (next) {
    const step = button(next.label(), () => next.go());
    step.className = "next-unsure"; step.disabled = next.label().includes("(0 left)");
    tools.append(step);
  }
  select(1);
  const panel = document.createElement("div");
  panel.className = "editor"; panel.append(tools, hint, canvas);
  container.append(panel);
  draw(); steps();
  function close() { panel.remove(); onClose(); }
  return {set: next => change(Uint8Array.from(next)), close};
}
