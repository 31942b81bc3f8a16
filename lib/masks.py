"""From a model's probabilities to what a user gets, without torch: the decision threshold's one rule, the mask at
the image's own size, its largest region, its edge moved as calibrated, its outline and the files written of it.
Both runtimes (segmenter.py) and every score at an image's own size (metrics.py, calibration.py) use these: what
is scored is what users get."""
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

from lib.errors import UsageError

OVERLAY_QUALITY = 90  # JPEG quality of the overlays: a picture to look at, 10x cheaper to write than a PNG of it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_EDGE_MOVE = 0.5  # an edge move is a share of the mask's equivalent radius: beyond a half it is another lesion


def checked_threshold(value, source="--threshold"):
    """The decision threshold as a float, if it is a finite number strictly between 0 and 1 (at 0 or 1, or NaN,
    every mask would be all lesion or empty); else UsageError naming where it came from."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0 < threshold < 1:  # False for NaN too
        raise UsageError(f"{source} is {value!r}: a threshold is a number strictly between 0 and 1 (0.5: the "
                         "model's own decision)")
    return threshold


def checked_edge_move(value, source="the edge move"):
    """The edge move (adapt.py's calibration: a share of each mask's equivalent radius, + inward, - outward) as a
    float, if it is a number from -MAX_EDGE_MOVE to MAX_EDGE_MOVE; else UsageError naming where it came from."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = float("nan")
    if not -MAX_EDGE_MOVE <= share <= MAX_EDGE_MOVE:  # False for NaN too
        raise UsageError(f"{source} is {value!r}: an edge move is a share of the mask's radius from "
                         f"{-MAX_EDGE_MOVE:g} to {MAX_EDGE_MOVE:g} (0: the model's own edge)")
    return share


def resize_probabilities(prob, width, height):
    """Probabilities [S,S] (float32) resized bilinearly to [height, width]: an enlargement as torch's
    interpolate(align_corners=False) makes it (within 1e-5), a reduction antialiased."""
    return np.asarray(Image.fromarray(np.asarray(prob, dtype=np.float32), mode="F").resize((width, height),
                                                                                          Image.BILINEAR))


def mask_at_size(prob, width, height, threshold=0.5, largest_component=False, edge_move=0.0):
    """Boolean mask [height, width] of one probability map [S,S]: resized back (bilinear), thresholded, with
    largest_component only its largest region kept, then its edge moved by edge_move. Every mask this project
    hands out is made here."""
    mask = resize_probabilities(prob, width, height) > threshold
    return move_edge(keep_largest_component(mask) if largest_component else mask, edge_move)


def moved_edges(mask, shares):
    """The mask with its edge moved by each signed share of its equivalent radius (the radius of the disc of its
    area): inward where share >= 0 (as a tighter annotator draws), outward where share < 0 (as a looser one)."""
    from scipy import ndimage  # here: only this step needs scipy
    radius = np.sqrt(mask.sum() / np.pi)
    inside = ndimage.distance_transform_edt(mask) if max(shares) >= 0 else None
    outside = ndimage.distance_transform_edt(~mask) if min(shares) < 0 else None  # each only where a share needs it
    return [inside > share * radius if share >= 0 else outside <= -share * radius for share in shares]


def has_edge(mask):
    """Whether the mask has an edge in the image to move: it is not empty and does not fill the image."""
    return bool(mask.any() and not mask.all())


def move_edge(mask, share):
    """moved_edges for one share; the mask itself when there is nothing to move (share 0, or not has_edge)."""
    return moved_edges(mask, [share])[0] if share and has_edge(mask) else mask


def keep_largest_component(mask):
    """A boolean [H,W] numpy mask with only its largest 8-connected region: the lesion, without stray specks. The
    regions are found as runs of each row joined to the runs they touch in the next row: the regions of labelling
    every pixel (scipy.ndimage.label) in less time, without scipy; of two equally large, the first in reading order
    is kept, as there."""
    height, width = mask.shape
    stride = width + 1
    flat = np.zeros(height * stride + 1, np.uint8)  # each row after a 0: no run goes on into the next row
    flat[1:].reshape(height, stride)[:, :width] = mask
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts, ends = change[0::2], change[1::2]  # each run of 1s: [start, end) in flat
    first = np.searchsorted(ends, starts + stride)  # the next row's first run that ends at or after this one starts
    count = np.maximum(np.searchsorted(starts, ends + stride, "right") - first, 0)  # ...and those up to its end
    touching = np.arange(count.sum()) + np.repeat(first - np.cumsum(count) + count, count)
    region = joined(len(starts), np.repeat(np.arange(len(starts)), count), touching)
    sizes = np.bincount(region, weights=ends - starts)
    if np.count_nonzero(sizes) <= 1:
        return mask
    drop = region != np.argmax(sizes)  # the first of two equal: the region of the earlier first run
    lengths, at = ends[drop] - starts[drop], starts[drop] - 1 - starts[drop] // stride  # at: index in mask.ravel()
    kept = mask.copy()
    kept.ravel()[np.repeat(at - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())] = False
    return kept


def joined(n, a, b):
    """For each of n nodes, the smallest node joined to it by the edges a[k]-b[k]: each round hooks every root
    under the smallest root it touches, then flattens the trees, until no edge joins two roots."""
    root = np.arange(n)
    while True:
        ra, rb = root[a], root[b]
        apart = ra != rb
        if not apart.any():
            return root
        np.minimum.at(root, np.maximum(ra[apart], rb[apart]), np.minimum(ra[apart], rb[apart]))
        while not np.array_equal(up := root[root], root):
            root = up


def outline(mask, width=1):
    """Pixels on the boundary of a boolean mask (inside it, next to a pixel outside it), grown to `width` pixels."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = mask & ~interior
    for _ in range(width - 1):  # grow by one pixel each way
        p = np.pad(edge, 1)
        edge = edge | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return edge


def contour_width(height, width):
    """Pixels of contour that stay visible on an image of this size shown at a few hundred pixels."""
    return 1 + min(height, width) // 300


def mask_png(mask):
    """A boolean mask [H,W] as the bytes of an 8-bit greyscale PNG of 0 and 255: what predict.py writes, read as
    such by PIL, OpenCV and the ISIC scorer. Rows unfiltered and zlib's run-length strategy: a mask needs no more,
    and PIL's search for the best filter of each row costs two to three times this."""
    height, width = mask.shape
    rows = np.zeros((height, width + 1), np.uint8)  # each row starts with its filter byte, 0: none
    np.multiply(mask, 255, out=rows[:, 1:], casting="unsafe")
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    pixels = deflate.compress(rows) + deflate.flush()
    return PNG_SIGNATURE + b"".join(png_chunk(kind, data) for kind, data in (
        (b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)), (b"IDAT", pixels), (b"IEND", b"")))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def overlay(photo, mask):
    """The photo (an RGB PIL image) with the mask's contour drawn in red, thicker on large photos so it stays
    visible: a new PIL image."""
    drawn = photo.copy()
    drawn.paste((255, 0, 0), mask=Image.fromarray(outline(mask, contour_width(*mask.shape))))
    return drawn


def overlay_jpeg(photo, mask):
    """overlay()'s bytes as a JPEG: quality OVERLAY_QUALITY, full chroma, so the red contour stays sharp."""
    with memory_file() as f:
        overlay(photo, mask).save(f, format="JPEG", quality=OVERLAY_QUALITY, subsampling=0)
        f.seek(0)
        return f.read()


def memory_file():
    """A file in memory: on Linux one with a file descriptor (memfd), into which PIL encodes a JPEG with the GIL
    released, so that make predict's threads encode their overlays side by side (into a BytesIO only one at a
    time); a BytesIO elsewhere."""
    try:
        return open(os.memfd_create("overlay"), "w+b")
    except (AttributeError, OSError):  # not Linux, or a sandbox that forbids memfd
        return io.BytesIO()


def unsure(prob, threshold=0.5):
    """How unsure the model is of one photo's mask, from its probabilities [S,S] at the model's size: 1 minus the
    soft IoU of the probabilities with their own mask (prob > threshold), so 0 when every pixel is 0 or 1, higher
    as more of the lesion and its surround sit near the threshold; 1 when no pixel is lesion. The page ranks
    photos by it (web/segment.js unsure; tests/test_page.py holds the two together); predict.py writes it."""
    p = np.asarray(prob, dtype=np.float64)
    inside = p > threshold
    union = inside.sum() + p[~inside].sum()
    return 1.0 - (p[inside].sum() / union if inside.any() else 0.0)
