"""Annotator shifts: the same lesion outlined by another clinic's annotators, tighter, looser or coarser than
ISIC's, the same for every image or varying from image to image as a real clinic's do. Each takes a boolean mask
[H,W] (and a random generator for the varying ones) and returns the shifted mask; adapt_experiment.py measures how
well adaptation (make adapt) and calibration undo them."""
import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial import ConvexHull, QhullError

from lib.masks import moved_edges

SHARE = 0.08  # tighter and looser move the edge by this share of the lesion's equivalent radius


def tighter(mask, share=SHARE):
    """The mask eroded by share x its equivalent radius: an annotator who draws inside the visible edge."""
    return moved_edges(mask, [share])[0]


def looser(mask, share=SHARE):
    """The mask dilated by share x its equivalent radius: an annotator who leaves a margin around the lesion."""
    return moved_edges(mask, [-share])[0]


def coarse(mask):
    """The mask's convex hull: an annotator who draws a quick polygon around the lesion."""
    ys, xs = np.nonzero(mask)
    try:
        hull = ConvexHull(np.stack([xs, ys], 1))
    except (QhullError, ValueError):  # fewer than 3 pixels, or all on a line: nothing to round off
        return mask.copy()
    canvas = Image.new("1", mask.shape[::-1])
    ImageDraw.Draw(canvas).polygon([(float(xs[v]), float(ys[v])) for v in hull.vertices], fill=1, outline=1)
    return np.asarray(canvas) | mask


def varying(shift, top=2 * SHARE, untouched=0.2):
    """A shift whose strength an annotator varies from image to image: share drawn uniformly from 0 to top of the
    equivalent radius, and a share `untouched` of the images left as they are."""
    def shifted(mask, rng):
        strength, keep = rng.uniform(0, top), rng.uniform() < untouched
        return mask.copy() if keep else shift(mask, share=strength)
    return shifted


def clinic(mask, rng):
    """A real clinic's mix: a fifth of the masks untouched, the others either tighter by a share drawn from 0 to 16%
    of the equivalent radius or a coarse outline, image by image."""
    if rng.uniform() < 0.2:
        return mask.copy()
    return tighter(mask, share=rng.uniform(0, 2 * SHARE)) if rng.uniform() < 0.5 else coarse(mask)


# {name: shift(mask, rng)}: the uniform shifts ignore rng, the varying ones draw each image's strength from it
ANNOTATORS = {"tighter": lambda m, rng: tighter(m), "looser": lambda m, rng: looser(m),
              "coarse": lambda m, rng: coarse(m), "tighter-varying": varying(tighter),
              "looser-varying": varying(looser), "clinic": clinic}
