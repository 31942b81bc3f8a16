// Correcting one mask: a brush that adds, an eraser that removes, their size, undo and redo, the whole edge grown
// or shrunk (the edge move, for this image), with mouse, pen or touch (pointer events). Drawn at display scale,
// applied to the mask at the image's own size.
import {DISPLAY, displaySize, moveEdge, outline, resize, rgbOf, shownMask} from "./segment.js";

const HISTORY = 30, EDGE_STEP = 0.02;  // undo steps kept; one grow/shrink click

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

// An editor over item ({photo: {w, h}, mask}) in container, the photo drawn from pixels (a promise of its RGBA);
// onChange(mask) after every change, onClose() when the user closes it; next: {label(), go()}, a button to the next
// photo to correct. Returns {set(mask): one more change through the editing path, close()}.
export function openEditor(container, item, pixels, onChange, onClose, next) {
  const {w, h} = item.photo, canvas = photoCanvas(w, h);
  const state = {w, h, mask: item.mask.slice(), tool: 1, undo: [], redo: [], draw: drawing(canvas, pixels, w, h)};
  state.change = mask => {  // one undoable step
    state.undo.push(state.mask); if (state.undo.length > HISTORY) state.undo.shift();
    state.redo.length = 0; state.show(mask);
  };
  state.show = mask => { state.mask = mask; state.draw(mask); onChange(mask); state.steps?.(); };
  const size = Object.assign(document.createElement("input"), {type: "range", min: 2, max: 80, value: 20,
                                                                className: "brush-size"});
  followPointer(canvas, state, () => Number(size.value) / 2 * w / canvas.getBoundingClientRect().width);
  const panel = document.createElement("div"), close = () => { panel.remove(); onClose(); };
  panel.className = "editor";
  panel.append(toolbar(state, size, close, next), hint(), canvas);
  container.append(panel);
  state.draw(state.mask); state.steps();
  return {set: mask => state.change(Uint8Array.from(mask)), close};
}

function photoCanvas(w, h) {  // the canvas at display size; a small photo's pixels enlarged to DISPLAY on screen
  const {scale, dw, dh} = displaySize(w, h), canvas = document.createElement("canvas");
  Object.assign(canvas, {width: dw, height: dh, className: "editor-canvas"});
  canvas.style.touchAction = "none";
  if (scale === 1 && Math.max(w, h) < DISPLAY)
    Object.assign(canvas.style, {width: `${Math.round(w * DISPLAY / Math.max(w, h))}px`, imageRendering: "pixelated"});
  return canvas;
}

// draw(mask): the photo, the mask tinted blue, its outline red; pixels: a promise of the photo's RGBA (the page keeps
// only its file), the mask drawn on it once they are decoded
function drawing(canvas, pixels, w, h) {
  const {scale, dw, dh} = displaySize(w, h);
  let shown = null, last = null;
  const paint = mask => {
    const small = shownMask(mask, w, h, dw, dh, scale);
    const edge = outline(small, dw, dh, 2), ctx = canvas.getContext("2d"), image = ctx.createImageData(dw, dh);
    for (let i = 0; i < dw * dh; i++) {
      const [r, g, b] = [shown[3 * i], shown[3 * i + 1], shown[3 * i + 2]];
      image.data.set(edge[i] ? [255, 0, 0, 255] : small[i] ? [0.6 * r, 0.6 * g, 0.6 * b + 100, 255] : [r, g, b, 255],
                     4 * i);
    }
    ctx.putImageData(image, 0, 0);
    canvas.dataset.drawn = "1";
  };
  pixels.then(rgba => { shown = resize(rgbOf(rgba), w, h, 3, dw, dh, true); if (last) paint(last); });
  return mask => { last = mask; if (shown) paint(mask); };
}

// Strokes of the pointer (mouse, pen, touch) painted at the image's own size, drawn once a frame, one undoable step
// each; radius(): the brush's radius in image pixels.
function followPointer(canvas, state, radius) {
  const {w, h} = state;
  let stroke = null, pending = false;
  const point = e => {  // the pointer in image pixels
    const r = canvas.getBoundingClientRect();
    return {x: (e.clientX - r.left) * w / r.width, y: (e.clientY - r.top) * h / r.height};
  };
  const redraw = () => {
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; state.draw(state.mask); }); }
  };
  canvas.addEventListener("pointerdown", e => {
    e.preventDefault();
    try { canvas.setPointerCapture(e.pointerId); } catch { /* a scripted pointer has nothing to capture */ }
    stroke = {points: [point(e)], before: state.mask, mask: state.mask.slice()};
    paintStroke(stroke.mask, w, h, stroke.points, radius(), state.tool);
    state.mask = stroke.mask; redraw();
  });
  canvas.addEventListener("pointermove", e => {
    if (!stroke) return;
    const p = point(e), last = stroke.points[stroke.points.length - 1];
    stroke.points.push(p);
    paintStroke(stroke.mask, w, h, [last, p], radius(), state.tool);
    redraw();
  });
  const end = () => {
    if (!stroke) return;
    const done = stroke; stroke = null;
    state.mask = done.before; state.change(done.mask);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

// Brush, eraser, size, undo and redo (each saying how many steps it can take; none left: greyed out), the whole
// edge shrunk or grown, close, and the step to the next photo.
function toolbar(state, size, close, next) {
  const {w, h} = state, tools = document.createElement("div");
  tools.className = "editor-tools";
  const brush = button("Brush", () => select(1)), eraser = button("Eraser", () => select(0));
  const select = value => {
    state.tool = value; brush.classList.toggle("on", value === 1); eraser.classList.toggle("on", value === 0);
  };
  const step = (from, to) => { if (from.length) { to.push(state.mask); state.show(from.pop()); } };
  const undo = button("Undo", () => step(state.undo, state.redo));
  const redo = button("Redo", () => step(state.redo, state.undo));
  state.steps = () => {
    const [u, r] = [state.undo.length, state.redo.length];
    undo.disabled = !u; redo.disabled = !r;
    undo.title = `${u} step${u === 1 ? "" : "s"} to undo (the last ${HISTORY} are kept)`;
    redo.title = `${r} step${r === 1 ? "" : "s"} to redo`;
  };
  const sizeLabel = document.createElement("label");
  sizeLabel.append("size ", size);
  tools.append(brush, eraser, sizeLabel, undo, redo,
               button("Shrink edge", () => state.change(moveEdge(state.mask, w, h, EDGE_STEP))),
               button("Grow edge", () => state.change(moveEdge(state.mask, w, h, -EDGE_STEP))), button("Close", close));
  if (next) {
    const onward = button(next.label(), () => next.go());
    onward.className = "next-unsure"; onward.disabled = next.label().includes("(0 left)");
    tools.append(onward);
  }
  select(1);
  return tools;
}

function hint() {
  const p = document.createElement("p");
  p.className = "editor-hint";
  p.textContent = `Draw on the photo: the brush adds to the lesion, the eraser removes; Undo takes back up to the ` +
    `last ${HISTORY} steps. The mask is kept as you go; Accept when it is right.`;
  return p;
}
