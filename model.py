"""MobileNetV2 encoder (torchvision, ImageNet weights) + a decoder of upsample and refinement blocks, and the
average of its weights (EMA). Reading and writing checkpoints: lib/checkpoints.py.

The model takes RGB images with values 0..255 (uint8 or float) and returns one logit per pixel;
ImageNet normalisation happens inside, so a checkpoint is all that prediction needs.
"""
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from lib.errors import ModelFileError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Indices into mobilenet_v2().features after which the resolution is 1/2, 1/4, 1/8, 1/16 and 1/32,
# with 16, 24, 32, 96 and 1280 channels.
TAPS = (1, 3, 6, 13, 18)
TAP_CHANNELS = (16, 24, 32, 96, 1280)
DECODER_WIDTHS = (128, 64, 32, 16, 8)  # outputs at 1/16, 1/8, 1/4, 1/2, 1/1


def load_encoder(weights):
    """torchvision MobileNetV2 `features`; weights: 'imagenet' (torchvision download), 'none' or a state_dict file."""
    if weights == "imagenet":
        try:
            net = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
        except Exception as e:  # no internet, proxy, ...
            raise ModelFileError(f"could not download torchvision's ImageNet MobileNetV2 weights ({e}). "
                                 "Offline, pass a local state_dict: --encoder-weights path/to/mobilenet_v2.pth "
                                 "(make ... ENCODER_WEIGHTS=...)") from None
        return net.features
    net = mobilenet_v2()
    if weights != "none":
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--encoder-weights {weights}: no such file (use 'imagenet', 'none' or a path)")
        try:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as e:  # not a torch file, a pickle of other objects, another architecture's weights
            raise ModelFileError(f"--encoder-weights {weights} is not a MobileNetV2 state_dict ({type(e).__name__}). "
                                 "Use torchvision's mobilenet_v2 ImageNet weights, 'imagenet' or 'none'.") from None
    return net.features


def conv_bn_relu(cin, cout, kernel=3):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UpBlock(nn.Module):
    """Upsample x2 with a transposed convolution, concatenate the encoder's skip (if any), refine."""

    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
                                nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.refine = conv_bn_relu(cout + cskip, cout)

    def forward(self, x, skip=None):
        x = self.up(x)
        return self.refine(x if skip is None else torch.cat([x, skip], 1))


class MobileNetSegmenter(nn.Module):
    """RGB images [N,3,H,W] (0..255, H and W multiples of 32) -> lesion logits [N,1,H,W]."""

    def __init__(self, encoder_weights="imagenet", skips=False, freeze_encoder=False, widths=DECODER_WIDTHS):
        super().__init__()
        self.skips, self.freeze_encoder = skips, freeze_encoder
        self.encoder = load_encoder(encoder_weights)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255, persistent=False)
        skip_channels = TAP_CHANNELS[-2::-1] if skips else (0,) * 4
        cins = (TAP_CHANNELS[-1],) + tuple(widths[:-1])
        self.blocks = nn.ModuleList(UpBlock(ci, cs, co) for ci, cs, co in zip(cins, skip_channels + (0,), widths))
        self.head = nn.Conv2d(widths[-1], 1, 1)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        # channels_last: CUDA's tensor cores and CPU's oneDNN convolutions both prefer it (on a CPU the decoder's
        # training step runs about 2x faster; its 1-channel head about 15x). Kept through .to(device) and loading.
        self.to(memory_format=torch.channels_last)

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_encoder:  # keep BatchNorm running statistics of a frozen encoder untouched
            self.encoder.eval()
        return self

    def encode(self, images):
        """The encoder's features of images [N,3,H,W] that the decoder needs, deepest last: at 1/2, 1/4, 1/8, 1/16
        and 1/32 of H and W with skips, else at 1/32 only."""
        x = (images.float() - self.mean) / self.std
        feats = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in TAPS and (self.skips or i == TAPS[-1]):
                feats.append(x)
        return feats

    def decode(self, feats):
        """Logits [N,1,H,W] from encode()'s features."""
        x, skips = feats[-1], feats[-2::-1] + [None] * 5
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return self.head(x)

    def forward(self, images):
        if not torch.jit.is_tracing() and (images.shape[-1] % 32 or images.shape[-2] % 32):
            raise ValueError(f"input size {tuple(images.shape[-2:])} must be divisible by 32")
        return self.decode(self.encode(images))

    def decoder_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]


def build_model(config, pretrained=False):
    """The model a run's config (a dict of train.py flags) describes: the one place a model is built. pretrained:
    the encoder starts from config['encoder_weights'] (training); else from random weights that a checkpoint
    will replace."""
    return MobileNetSegmenter(config["encoder_weights"] if pretrained else "none", skips=config["skips"],
                              freeze_encoder=config["freeze_encoder"], widths=tuple(config["decoder_widths"]))


@torch.no_grad()
def update_ema(ema, model, decay, updates):
    """ema = decay * ema + (1 - decay) * model, buffers included; a lower decay for the first updates lets the
    random initial weights fade quickly."""
    decay = min(decay, (1 + updates) / (10 + updates))
    pairs = list(zip(ema.state_dict().values(), model.state_dict().values()))
    floats = [pair for pair in pairs if pair[0].is_floating_point()]
    torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - decay)  # one call for all tensors
    for averaged, current in pairs:
        if not averaged.is_floating_point():  # counters, such as BatchNorm's num_batches_tracked
            averaged.copy_(current)
