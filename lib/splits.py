"""Which images of a data folder a run holds out, without torch: the seeded random splits (training's validation
images, the test fifth of a folder without a split) and the labelled images adaptation calibrates on and scores
on. numpy only, so that make calibrate on the light install holds out the same images as make adapt."""
import numpy as np

from lib.layouts import find_pairs, present_groups

TEST_FRACTION = 0.2  # share of a folder without an official split (PH2, plain images/ + masks/) held out as test


def permutation(n, seed):
    """torch.randperm(n, generator=torch.Generator().manual_seed(seed)) without torch, element for element: its
    CPU algorithm (a Fisher-Yates shuffle, each swap drawn as one 32-bit Mersenne Twister output modulo what is
    left) on numpy's Mersenne Twister seeded the same way. tests/test_data.py holds the two together."""
    order = np.arange(n)
    draws = np.random.RandomState(seed % 2**32).randint(0, 2**32, size=max(n - 1, 0), dtype=np.uint32)
    for i, draw in enumerate(draws):
        j = i + int(draw) % (n - i)
        order[i], order[j] = order[j], order[i]
    return order


def split_indices(n, fraction, seed):
    """(kept, held out): sorted index arrays of a seeded random split of n items, round(n * fraction) held out."""
    order = permutation(n, seed)
    held = round(n * fraction)
    return np.sort(order[held:]), np.sort(order[:held])


def labelled_pairs(data_dir, split_seed=0):
    """([(id, image, mask)] to calibrate on, [(id, image, mask)] held out): the training and test images that
    data.load_splits gives with no validation split (make adapt's); a folder without a split holds TEST_FRACTION
    out by split_seed, one with a training split only holds none out. DataError lists any unpaired file."""
    groups = present_groups(data_dir)
    if "train" in groups:
        return find_pairs(data_dir, "train"), find_pairs(data_dir, "test") if "test" in groups else []
    everything = find_pairs(data_dir, "all")
    kept, held = split_indices(len(everything), TEST_FRACTION, split_seed)
    return [everything[i] for i in kept], [everything[i] for i in held]
