"""Encoders: shapes, unit norm, gradients to the first layer, configs, local weights, errors."""

from __future__ import annotations

import json

import pytest
import torch

from twinsight.errors import TwinsightError
from twinsight.models.encoders import create_encoder, list_encoders

torch.set_num_threads(1)

# (name, options, input size): small inputs keep the test fast.
CASES = [
    ("seed-cnn", {}, (64, 64)),
    ("seed-cnn", {"channels": [4, 8], "activation": "elu", "batch_norm": False}, (16, 16)),
    ("seed-cnn", {"activation": "leaky-relu", "dropout": 0.2, "he_init": False}, (32, 32)),
    ("small-cnn", {}, (28, 28)),
    ("small-cnn", {"seed_exact": True}, (28, 28)),
    ("resnet18", {}, (32, 32)),
    ("timm:test_resnet", {}, (32, 32)),
]


def _first_weight(encoder: torch.nn.Module) -> torch.Tensor:
    return next(p for p in encoder.parameters() if p.ndim == 4)


@pytest.mark.parametrize("name,options,size", CASES)
def test_shapes_norm_and_gradients(name, options, size):
    torch.manual_seed(0)
    enc = create_encoder(name, embedding_dim=16, input_size=size, **options)
    x = torch.rand(4, 1, *size)
    out = enc(x)
    assert out.shape == (4, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)
    # a pairwise loss on the batch sends gradient all the way to the first conv
    S = out @ out.T
    S.triu(1).sum().backward()
    grad = _first_weight(enc).grad
    assert grad is not None and grad.abs().sum() > 0
    assert enc.embedding_dim == 16 and enc.name == name
    prep = enc.default_preprocessing()
    assert tuple(prep.size) == size and prep.channels == 1 and prep.normalize == "minmax"


@pytest.mark.parametrize("name,options,size", CASES)
def test_config_rebuilds_the_same_architecture(name, options, size):
    enc = create_encoder(name, embedding_dim=8, input_size=size, **options)
    config = json.loads(json.dumps(enc.config))  # plain JSON values
    assert config["input_size"] == list(size) and config["in_channels"] == 1
    again = create_encoder(enc.name, **config)
    again.load_state_dict(enc.state_dict())  # same keys and shapes
    enc.eval(), again.eval()
    x = torch.rand(2, 1, *size)
    assert torch.allclose(enc(x), again(x), atol=1e-6)


def test_seed_cnn_defaults_match_seed_000():
    enc = create_encoder("seed-cnn")
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    # 64 -> 2 after five 2x2 poolings: 128 * 2 * 2 features -> 1024 -> 128
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(512, 1024), (1024, 128)]


def test_small_cnn_default_head_allows_negative_cosines():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    ours = create_encoder("small-cnn", input_size=(28, 28)).eval()(x)
    seed = create_encoder("small-cnn", input_size=(28, 28), seed_exact=True).eval()(x)
    assert (seed >= 0).all()  # seed 003's ReLU head: positive orthant only
    assert (ours < 0).any()


def test_three_channel_and_unnormalized_output():
    enc = create_encoder("seed-cnn", in_channels=3, input_size=(32, 32), normalize=False)
    out = enc(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 128)
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))
    assert enc.default_preprocessing().channels == 3


def test_resnet34_and_50_shapes():
    for name in ("resnet34", "resnet50"):
        enc = create_encoder(name, embedding_dim=8, input_size=(32, 32)).eval()
        assert enc(torch.rand(1, 1, 32, 32)).shape == (1, 8)


def test_resnet_local_rgb_weights_into_grey_conv(tmp_path):
    import torchvision

    torch.manual_seed(0)
    rgb = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(rgb.state_dict(), path)
    enc = create_encoder("resnet18", input_size=(32, 32), weights=str(path))
    w = rgb.conv1.weight.detach()
    assert torch.allclose(enc.backbone.conv1.weight, w.sum(dim=1, keepdim=True), atol=1e-6)
    assert torch.equal(enc.backbone.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)
    assert "weights" not in enc.config
    prep = enc.default_preprocessing()
    assert prep.normalize == "standardize" and len(prep.mean) == 1


def test_timm_local_weights(tmp_path):
    import timm

    net = timm.create_model("test_resnet", num_classes=5)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    enc = create_encoder("timm:test_resnet", input_size=(32, 32), weights=str(path))
    key = "layer1.0.conv1.weight"
    assert torch.equal(enc.backbone.state_dict()[key], net.state_dict()[key])


def test_missing_or_bad_weights_file(tmp_path):
    with pytest.raises(TwinsightError, match="does not exist.*never downloads"):
        create_encoder("resnet18", weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TwinsightError, match="cannot read weights file"):
        create_encoder("resnet18", weights=str(bad))
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(2)}, wrong)
    with pytest.raises(TwinsightError, match="does not fit resnet18"):
        create_encoder("resnet18", weights=str(wrong))


def test_list_and_unknown_names():
    names = list_encoders()
    assert {"seed-cnn", "small-cnn", "resnet18", "resnet34", "resnet50"} <= set(names)
    with pytest.raises(TwinsightError, match="unknown encoder 'vgg'.*seed-cnn.*small-cnn"):
        create_encoder("vgg")
    with pytest.raises(TwinsightError, match="unknown timm model 'timm:resnet10'.*resnet10t"):
        create_encoder("timm:resnet10")
    with pytest.raises(TwinsightError, match="needs a model name"):
        create_encoder("timm:")


def test_bad_options_are_named():
    with pytest.raises(TwinsightError, match=r"no option\(s\) \['chanels'\].*channels"):
        create_encoder("seed-cnn", chanels=[8])
    with pytest.raises(TwinsightError, match="unknown activation 'tanh'.*relu, elu, leaky-relu"):
        create_encoder("seed-cnn", activation="tanh")
    with pytest.raises(TwinsightError, match="dropout"):
        create_encoder("seed-cnn", dropout=1.5)
    with pytest.raises(TwinsightError, match="embedding_dim"):
        create_encoder("small-cnn", embedding_dim=0)
    with pytest.raises(TwinsightError, match="input_size"):
        create_encoder("small-cnn", input_size=(28,))
    with pytest.raises(TwinsightError, match="timm model 'test_resnet'"):
        create_encoder("timm:test_resnet", no_such_timm_kwarg=1)


def test_input_too_small_for_pooling():
    with pytest.raises(TwinsightError) as info:
        create_encoder("seed-cnn", input_size=(16, 16))
    msg = str(info.value)
    assert "16x16" in msg and "5 pooling layers" in msg and "minimum is 32x32" in msg
    with pytest.raises(TwinsightError, match="minimum is 4x4"):
        create_encoder("small-cnn", input_size=(3, 28))
    # without pooling 16x16 is fine
    assert create_encoder("seed-cnn", input_size=(16, 16), pool=False, channels=[4])


def test_own_encoder_weights_from_local_files(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    enc = create_encoder("seed-cnn", embedding_dim=8, input_size=(32, 32)).eval()
    torch.save(enc.state_dict(), tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, tmp_path / "w.safetensors")
    x = torch.rand(2, 1, 32, 32)
    for file in ("w.pt", "w.safetensors"):
        torch.manual_seed(1)  # a different initialization, replaced by the file's weights
        other = create_encoder(
            "seed-cnn", embedding_dim=8, input_size=(32, 32), weights=str(tmp_path / file)
        ).eval()
        torch.testing.assert_close(other(x), enc(x))
    with pytest.raises(TwinsightError, match="does not fit encoder 'small-cnn'"):
        create_encoder("small-cnn", input_size=(32, 32), weights=str(tmp_path / "w.pt"))
