"""Checkpoints: the files train.py writes (a dict of 'config', 'model' weights and their 'seal'), read back
with every check, and the models they hold loaded for use (one, or several as an Ensemble) with the decision
rules stored beside the weights (threshold, edge move)."""
import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from lib import model_files
from lib.errors import ModelFileError
from lib.masks import checked_edge_move, checked_threshold
from model import build_model


# What a checkpoint may hold: a key outside these is a damaged name (a changed byte in 'seal' must not pass as a file
# written before seals were)
KEYS = {"config", "model", "seal", "checksum", "optimizer", "scheduler", "scaler", "epoch", "history", "best_iou",
        "trained_model"}


def weights_checksum(state):
    """sha256 of a state_dict's names and values: what files written before 2026-12-05 carry as 'checksum' (the
    weights alone; seal() covers the config too)."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def seal(state, config):
    """sha256 of the weights and of the config the model is built and run with (input size, threshold, edge move):
    every byte that changes what the checkpoint computes. Every writer stores it as 'seal', every load checks it."""
    config_bytes = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(weights_checksum(state).encode() + config_bytes).hexdigest()


def sealed(ckpt):
    """The checkpoint dict with its 'seal' (re)computed from its weights and config, older 'checksum' dropped."""
    kept = {k: v for k, v in ckpt.items() if k not in ("seal", "checksum")}
    return {**kept, "seal": seal(ckpt["model"], ckpt["config"])}


def read_checkpoint(path):
    """A train.py checkpoint's contents (dict with 'config' and 'model'); a clear error for a wrong, broken or
    damaged file (one whose weights or config no longer match the seal written with them; files from before
    seals: whose weights no longer match their checksum)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train one with train.py or a make target)")
    model_files.verify(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not {"config", "model"} <= ckpt.keys():
            raise KeyError("config")
    except Exception as e:  # not PyTorch's message: it suggests weights_only=False, which runs the file's code
        raise ModelFileError(f"checkpoint {path} is not a checkpoint written by train.py: it is damaged, or not "
                             f"PyTorch weights at all ({type(e).__name__})") from None
    damaged = (not ckpt.keys() <= KEYS or "seal" in ckpt and ckpt["seal"] != seal(ckpt["model"], ckpt["config"])
               or "seal" not in ckpt and "checksum" in ckpt and ckpt["checksum"] != weights_checksum(ckpt["model"]))
    if damaged:
        raise ModelFileError(f"checkpoint {path} is damaged: its weights or config do not match the seal train.py "
                             "wrote with them; use another copy (last.pt or best.pt) or train it again")
    return ckpt


def architecture_of(checkpoint):
    """The flags that decide the shape of a checkpoint's model (and so which weights fit it)."""
    config = read_checkpoint(checkpoint)["config"]
    return {key: config[key] for key in ("skips", "decoder_widths", "image_size")}


def load_checkpoint(path, device="cpu"):
    """(model in eval mode, config) from a train.py checkpoint; raises a clear error for a wrong or broken file."""
    ckpt = read_checkpoint(path)
    config = ckpt["config"]
    try:
        if config["image_size"] % 32:
            raise ValueError(f"image_size {config['image_size']} is not a multiple of 32")
        model = build_model(config)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError) as e:  # a config edited by hand, or written by another program
        raise ModelFileError(f"checkpoint {path} has a config this model cannot be built from "
                             f"({type(e).__name__}: {e}); use a checkpoint written by train.py") from None
    except RuntimeError as e:
        raise ModelFileError(f"checkpoint {path} does not match the model its config describes: "
                             f"{str(e).splitlines()[0][:300]}") from None
    return model.to(device).eval(), ckpt["config"]


def half_precision(checkpoint_path):
    """The {'config', 'model'} of a train.py checkpoint, floating-point weights in float16: no optimizer state, no
    history. Loading casts them back to float32. Seal it (sealed()) once its config is final."""
    ckpt = read_checkpoint(checkpoint_path)
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return {"config": ckpt["config"], "model": state}


def decision_threshold(configs):
    """The probability above which a pixel is lesion for these models: the threshold stored in a checkpoint's
    config (tools/adapt.py stores 0.5 beside its edge move; an ensemble: the mean of its members'), else 0.5.
    UsageError for a stored threshold outside (0, 1)."""
    return sum(checked_threshold(c.get("threshold", 0.5), "the threshold stored in the checkpoint")
               for c in configs) / len(configs)


def decision_edge_move(configs):
    """How far these models' masks move their edge (masks.move_edge): the edge move tools/adapt.py calibrated and
    stored in a checkpoint's config (an ensemble: the mean of its members'), else 0. UsageError for one out of
    range."""
    return sum(checked_edge_move(c.get("edge_move", 0.0), "the edge move stored in the checkpoint")
               for c in configs) / len(configs)


class Ensemble(nn.Module):
    """Several trained models as one: the logit of their mean lesion probability."""
    def __init__(self, models):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, images):
        probs = torch.stack([m(images).float().sigmoid() for m in self.members]).mean(0)
        return torch.logit(probs, eps=1e-6)  # keeps the sign: logit > 0 exactly where the mean probability > 0.5


def load_models(paths, device="cpu"):
    """(model, [config]) of one checkpoint, or (their Ensemble, [config of each]) of several of one input size."""
    models, configs = zip(*[load_checkpoint(path, device) for path in paths])
    sizes = sorted({config["image_size"] for config in configs})
    if len(sizes) > 1:
        raise ModelFileError(f"the checkpoints were trained at different --image-size {sizes}; "
                             "an ensemble needs one input size")
    return (models[0] if len(models) == 1 else Ensemble(models).eval()), list(configs)
