// make calibrate's rule in the browser, step for step as lib/calibration.py: each corrected image's IoU with the
// model's own mask (threshold 0.5, the largest region) moved in or out by each share of EDGE_MOVES, then the best
// move by mean IoU, adopted only when its paired gain over the model's own edge clears its standard error.
// tests/test_page.py feeds the same probabilities and masks to both and holds them equal.
import {maskAtSize, movedEdges} from "./segment.js";

export const EDGE_MOVES = Array.from({length: 33}, (_, i) => (i - 16) / 100);  // calibration.py's: -0.16 to 0.16

// IoU of two 0/1 masks of one size; 1 when both are empty (lib/compare.py's iou).
export function iou(a, b) {
  let both = 0, either = 0;
  for (let p = 0; p < a.length; p++) { both += a[p] & b[p]; either += a[p] | b[p]; }
  return either ? both / either : 1;
}

// IoU [N][M] of each image ({prob [S*S], size S, w, h, mask [h*w] 0/1}) at each move (calibration.edge_curves).
export function edgeCurves(images, moves = EDGE_MOVES) {
  return images.map(({prob, size, w, h, mask}) =>
    movedEdges(maskAtSize(prob, size, w, h, 0.5, true, 0), w, h, moves).map(moved => iou(moved, mask)));
}

// The mean and the paired standard error (NaN for one value) of numbers, as numpy's mean and std(ddof=1) / sqrt(n).
export function meanAndError(values) {
  const n = values.length, mean = values.reduce((s, v) => s + v, 0) / n;
  const spread = values.reduce((s, v) => s + (v - mean) ** 2, 0);
  return [mean, n > 1 ? Math.sqrt(spread / (n - 1)) / Math.sqrt(n) : NaN];
}

// The edge move to use from edgeCurves() (calibration.calibrate_edge): the best one if its gain over 0 clears its
// standard error, else 0.
export function calibrateEdge(curves, moves = EDGE_MOVES) {
  const n = curves.length, base = moves.indexOf(0);
  const means = moves.map((_, j) => curves.reduce((s, c) => s + c[j], 0) / n);
  const best = means.reduce((b, m, j) => (m > means[b] ? j : b), 0);  // the first of equal bests, as argmax
  const [gain, error] = meanAndError(curves.map(c => c[best] - c[base]));
  const clears = n > 1 && gain > error;
  return {edgeMove: clears ? moves[best] : 0, bestEdgeMove: moves[best], gain, standardError: n > 1 ? error : Infinity,
          images: n};
}

// What calibration found, in plain words: the move, the gain and what its ± means; and, on held-out images, how the
// move did there.
export function calibrationWords(c, heldOut) {
  const pct = m => `${Math.abs(m * 100).toFixed(0)}% of each lesion's radius`;
  let text = `On your ${c.images} corrected images `;
  if (c.bestEdgeMove === 0) text += "the model's own edge fits best, so the page keeps it.";
  else {
    text += `the model's edge fits best moved ${c.bestEdgeMove > 0 ? "in" : "out"} by ${pct(c.bestEdgeMove)}: IoU ` +
      `${c.gain >= 0 ? "+" : ""}${c.gain.toFixed(4)} over its own edge (± ${c.standardError.toFixed(4)}, the ` +
      "standard error: a gain larger than it is unlikely to be chance). ";
    text += c.edgeMove ? "The page suggests this move." : "That is within its standard error, so the page keeps " +
      "the model's own edge; correct more images to tell.";
  }
  if (heldOut && heldOut.n) {
    const [change, error] = heldOut.change;
    text += ` On the ${heldOut.n} images you held out it changes IoU by ${change >= 0 ? "+" : ""}${change.toFixed(4)}` +
      (heldOut.n > 1 ? ` ± ${error.toFixed(4)}.` : " (one image: no standard error).");
  }
  return text;
}

// The held-out images' IoU with the model's own edge and with the edge moved by move: {n, change: [mean, error]}.
export function heldOutChange(images, move) {
  const curves = edgeCurves(images, [0, move]);
  return {n: images.length, change: images.length ? meanAndError(curves.map(c => c[1] - c[0])) : [0, NaN]};
}
