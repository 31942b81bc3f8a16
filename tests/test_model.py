import pytest
import torch

from losses import bce_loss
from lib.checkpoints import load_checkpoint


from model import DECODER_WIDTHS, MobileNetSegmenter


@pytest.mark.parametrize("skips", [False, True])
@pytest.mark.parametrize("size", [(64, 64), (96, 160), (128, 128)])
def test_output_is_one_logit_per_pixel(skips, size):
    model = MobileNetSegmenter("none", skips=skips).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8))
    assert out.shape == (2, 1, *size)


def test_size_not_divisible_by_32_is_refused():
    with pytest.raises(ValueError, match="divisible by 32"):
        MobileNetSegmenter("none")(torch.zeros(1, 3, 100, 100))


def test_missing_weights_file_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="'imagenet', 'none' or a path"):
        MobileNetSegmenter(str(tmp_path / "absent.pth"))


def test_frozen_encoder_is_untouched_by_training_while_decoder_learns():
    torch.manual_seed(0)
    model = MobileNetSegmenter("none", skips=True, freeze_encoder=True).train()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.blocks.state_dict().items()}
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert not any(m.training for m in model.encoder.modules())  # BatchNorm keeps its running statistics
    optimizer = torch.optim.Adam(model.decoder_parameters(), lr=1e-2)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    loss = bce_loss(model(images), (torch.rand(4, 1, 64, 64) > 0.5).float())
    loss.backward()
    optimizer.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k  # weights and BatchNorm running stats alike
    changed = [k for k, v in model.blocks.state_dict().items() if not torch.equal(v, decoder_before[k])]
    assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)


def test_checkpoint_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="not a checkpoint written by train.py"):
        load_checkpoint(tmp_path / "broken.pt")
    config = {"skips": False, "freeze_encoder": False, "decoder_widths": list(DECODER_WIDTHS), "image_size": 64}
    state = MobileNetSegmenter("none", skips=True).state_dict()  # weights of another configuration
    torch.save({"config": config, "model": state}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="does not match the model its config describes"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"config": config, "model": MobileNetSegmenter("none").state_dict()}, tmp_path / "good.pt")
    model, loaded = load_checkpoint(tmp_path / "good.pt")
    assert loaded == config and not model.training


def test_a_config_without_its_held_out_split_is_refused_before_scoring(tmp_path):
    from data import split_to_score
    from lib.errors import ModelFileError
    config = {"image_size": 64, "data_dir": [str(tmp_path)], "val_fraction": 0.1}  # no split_seed: not train.py's
    for split in ("val", "test"):
        with pytest.raises(ModelFileError, match="lacks split_seed.*--split train"):
            split_to_score(tmp_path, split, [config])
