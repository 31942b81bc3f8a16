"""A frozen encoder's features, computed once per run instead of at every step (train.py with --freeze-encoder and
no random augmentation): the same logits, a fraction of the time."""
import torch
from tqdm import tqdm

from lib.device import autocast


class Rows:
    """Tensors with the same number of rows, sliced and moved together: a frozen encoder's cached features."""

    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, idx):
        return Rows([t[idx] for t in self.tensors])

    def to(self, device, non_blocking=False):
        return Rows([t.to(device, non_blocking=non_blocking) for t in self.tensors])


@torch.no_grad()
def encode_all(model, images, batch_size, device, amp):
    """The frozen encoder's features of every image, computed once (Rows: one tensor per tap, a row per image)."""
    feats = None
    for start in tqdm(range(0, len(images), batch_size), desc="encoding (frozen encoder, once)", leave=False,
                      disable=None):
        with autocast(device, amp):
            out = model.encode(images[start:start + batch_size].to(device))
        out = [f.float() for f in out]
        feats = [[f] for f in out] if feats is None else [acc + [f] for acc, f in zip(feats, out)]
    return Rows([torch.cat(f) for f in feats])
