// The clinic loop's panel: how many corrected images this browser keeps, the edge calibrated on the accepted ones
// (make calibrate's rule, calibrate.js), and their export as labelled data that make calibrate and make adapt read:
// train/images + train/masks, test/ for the ones held out, and labels.json on the model and settings that drew
// the proposals.
import {calibrateEdge, calibrationWords, edgeCurves, heldOutChange} from "./calibrate.js";
import {zip} from "./formats.js";

const READABLE = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];  // lib/layouts.py's IMAGE_EXTS: kept as they are
export const HOLD_OUT_EVERY = 5;  // by default every fifth accepted image is held out, as make adapt holds a fifth

const $ = id => document.getElementById(id);
const forRule = item => ({prob: item.prob, size: item.size, w: item.photo.w, h: item.photo.h, mask: item.mask});

// The panel's sentence and buttons for these items (every image of this page, corrected or not).
export function showCount(items) {
  const corrected = items.filter(i => i.corrected), accepted = items.filter(i => i.accepted);
  const held = accepted.filter(i => i.heldOut).length;
  $("kept").textContent = corrected.length ? `${corrected.length} corrected image${corrected.length > 1 ? "s" : ""} ` +
    `kept in this browser, ${accepted.length} accepted (${held} held out to score the calibration). They stay ` +
    "until you clear them." : "No corrected images yet: \"Correct\" under a result edits its mask, \"Accept\" keeps " +
    "it as labelled.";
  $("kept").dataset.count = corrected.length;
  $("calibrate").disabled = accepted.length - held < 2;
  $("export").disabled = !accepted.length;
  $("clear").disabled = !corrected.length;
}

// make calibrate's edge move from the accepted images that are not held out, scored on those that are:
// {edgeMove, words, ...} (calibrate.js).
export function calibrateOn(items) {
  const accepted = items.filter(i => i.accepted), used = accepted.filter(i => !i.heldOut);
  const result = calibrateEdge(edgeCurves(used.map(forRule)));
  const held = heldOutChange(accepted.filter(i => i.heldOut).map(forRule), result.edgeMove);
  const noTta = used.filter(i => !i.proposal.tta).length;
  result.words = calibrationWords(result, held) + (noTta ? ` (${noTta} of them were segmented without flip TTA, ` +
    "which make calibrate uses: segment them again with it for the same numbers.)" : "");
  result.heldOut = held;
  return result;
}

// The zip of the accepted images and their masks as labelled data; png.mask(item) and png.photo(item) give the
// PNG bytes of an item's mask and of its photo's pixels.
export async function exportZip(items, model, png, calibration) {
  const entries = [], listed = [];
  for (const item of items.filter(i => i.accepted)) {
    const split = item.heldOut ? "test" : "train", ext = item.name.split(".").pop().toLowerCase();
    const keep = item.name.includes(".") && READABLE.includes(ext);
    const image = keep ? item.bytes : await png.photo(item);  // WebP, GIF: their pixels as PNG
    const file = `${item.id}.${keep ? ext : "png"}`;
    entries.push({name: `${split}/images/${file}`, bytes: new Uint8Array(image)},
                 {name: `${split}/masks/${item.id}_segmentation.png`, bytes: await png.mask(item)});
    listed.push({id: item.id, file: item.name, split, proposal: item.proposal});
  }
  const labels = {written: new Date().toISOString(), model: model.meta, images: listed,
                  calibration: calibration ? {edge_move: calibration.edgeMove, best_edge_move: calibration.bestEdgeMove,
                                              gain: calibration.gain, standard_error: calibration.standardError} : null,
                  note: "Labelled by correcting the model's proposals on the page; make calibrate DATA_DIR=<this " +
                        "folder> fits the model's edge to them, make adapt fine-tunes it."};
  entries.push({name: "labels.json", bytes: new TextEncoder().encode(JSON.stringify(labels, null, 1))});
  return zip(entries);
}
