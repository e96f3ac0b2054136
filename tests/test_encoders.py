"""Encoders: shapes, unit norm, gradients to the first layer, configs, local weights, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from twinsight.data.transforms import Preprocessing
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


# -- timm backbones: every ResNet is a timm model --------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_is_a_timm_model_with_in_chans(channels):
    import timm

    enc = create_encoder("resnet18", embedding_dim=8, in_channels=channels, input_size=(32, 32))
    assert isinstance(enc.backbone, timm.models.ResNet)
    assert enc.backbone.conv1.in_channels == channels
    assert enc.eval()(torch.rand(2, channels, 32, 32)).shape == (2, 8)
    assert enc.config["in_channels"] == channels


def _timm_weights(tmp_path, name, seed=0, suffix=".safetensors"):
    """A randomly initialized timm model's weights in a local file (RGB, with its classifier)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False, num_classes=10)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_resnet_local_weights_load_exactly(tmp_path, suffix):
    path, state = _timm_weights(tmp_path, "resnet18", suffix=suffix)
    enc = create_encoder("resnet18", in_channels=3, input_size=(32, 32), weights=str(path))
    loaded = enc.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    grey = create_encoder("resnet18", in_channels=1, input_size=(32, 32), weights=str(path))
    # timm adapts the RGB filters to one channel by summing them
    torch.testing.assert_close(
        grey.backbone.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True)
    )
    assert "weights" not in enc.config and "pretrained" not in enc.config


def test_pretrained_preprocessing_comes_from_the_pretrained_config(tmp_path):
    import timm

    # test_resnet's pretrained config standardizes with 0.5 / 0.5, not ImageNet's statistics
    path, _ = _timm_weights(tmp_path, "test_resnet")
    for channels in (1, 3):
        enc = create_encoder(
            "timm:test_resnet", in_channels=channels, input_size=(32, 32), weights=str(path)
        )
        cfg = enc.backbone.pretrained_cfg
        prep = enc.default_preprocessing()
        assert prep.normalize == "standardize" and prep.channels == channels
        if channels == 3:
            assert prep.mean == tuple(cfg["mean"]) and prep.std == tuple(cfg["std"])
        else:  # grey: the average of the RGB statistics
            assert prep.mean == pytest.approx((sum(cfg["mean"]) / 3,))
            assert prep.std == pytest.approx((sum(cfg["std"]) / 3,))
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5)
    # the ResNets take their statistics from timm's config too
    path, _ = _timm_weights(tmp_path, "resnet18")
    enc = create_encoder("resnet18", in_channels=3, input_size=(32, 32), weights=str(path))
    expected = timm.create_model("resnet18", pretrained=False).pretrained_cfg["mean"]
    assert enc.default_preprocessing().mean == tuple(expected)


def test_no_hard_coded_imagenet_statistics():
    from pathlib import Path

    import twinsight

    for file in Path(twinsight.__file__).parent.rglob("*.py"):
        text = file.read_text()
        assert "0.485" not in text and "0.229" not in text, file


def test_pretrained_without_a_local_file_is_refused(tmp_path):
    with pytest.raises(TwinsightError, match="cannot be downloaded.*offline.*weights="):
        create_encoder("resnet18", pretrained=True)
    with pytest.raises(TwinsightError, match="cannot be downloaded"):
        create_encoder("timm:test_resnet", pretrained=True)
    with pytest.raises(TwinsightError, match="does not exist.*never downloads"):
        create_encoder("timm:test_resnet", pretrained=True, weights=str(tmp_path / "nope.pth"))


def test_bundle_saved_with_a_torchvision_resnet_still_loads(tmp_path):
    """Bundles written when the ResNets came from torchvision: same parameter names in timm."""
    import torchvision

    from twinsight.models.bundle import ModelBundle
    from twinsight.models.encoders import Encoder

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = torch.nn.Identity()
    prep = create_encoder("resnet18", input_size=(32, 32)).default_preprocessing()
    old = Encoder(net, torch.nn.Linear(512, 8), embedding_dim=8, preprocessing=prep)
    config = {"embedding_dim": 8, "in_channels": 1, "input_size": [32, 32], "normalize": True}
    bundle = ModelBundle(old, "resnet18", config, prep)
    loaded = ModelBundle.load(bundle.save(tmp_path / "old"))
    images = torch.rand(3, 1, 32, 32).numpy()
    np.testing.assert_allclose(loaded.embed(images), bundle.embed(images), atol=1e-5)


# -- the registry ----------------------------------------------------------------------------------


@pytest.fixture
def toy_encoder():
    """A toy encoder registered from this file, removed again afterwards."""
    from twinsight.models.encoders import Encoder, register_encoder, unregister_encoder

    @register_encoder("toy-mlp", default_config={"width": 4, "activation": "relu"})
    def toy_mlp(*, embedding_dim, in_channels, input_size, normalize, width, activation):
        h, w = input_size
        backbone = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(in_channels * h * w, width), torch.nn.ReLU()
        )
        prep = Preprocessing(size=input_size, channels=in_channels, normalize="minmax")
        return Encoder(
            backbone,
            torch.nn.Linear(width, embedding_dim),
            embedding_dim=embedding_dim,
            preprocessing=prep,
            normalize=normalize,
        )

    yield "toy-mlp"
    unregister_encoder("toy-mlp")


def test_a_registered_toy_encoder_is_an_encoder_like_the_others(toy_encoder, tmp_path):
    from twinsight.models.bundle import ModelBundle
    from twinsight.models.encoders import encoder_defaults

    assert toy_encoder in list_encoders()
    assert encoder_defaults(toy_encoder) == {"width": 4, "activation": "relu"}
    enc = create_encoder(toy_encoder, embedding_dim=6, input_size=(8, 8), width=5)
    assert enc.name == toy_encoder and enc(torch.rand(2, 1, 8, 8)).shape == (2, 6)
    assert enc.config == {
        "embedding_dim": 6,
        "in_channels": 1,
        "input_size": [8, 8],
        "normalize": True,
        "width": 5,
        "activation": "relu",
    }
    # its config rebuilds it, so a bundle of it saves and loads
    bundle = ModelBundle.from_encoder(enc)
    loaded = ModelBundle.load(bundle.save(tmp_path / "toy"))
    images = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.embed(images), bundle.embed(images), atol=1e-6)
    # create_encoder loads a whole-encoder weights file for a builder without `weights`
    torch.save(enc.state_dict(), tmp_path / "toy.pt")
    again = create_encoder(toy_encoder, **enc.config, weights=str(tmp_path / "toy.pt"))
    torch.testing.assert_close(
        again.eval()(torch.ones(1, 1, 8, 8)), enc.eval()(torch.ones(1, 1, 8, 8))
    )
    with pytest.raises(TwinsightError, match=r"no option\(s\) \['depth'\].*width, activation"):
        create_encoder(toy_encoder, depth=3)


def test_registry_guards(toy_encoder):
    from twinsight.models.encoders import register_encoder, unregister_encoder

    with pytest.raises(TwinsightError, match="already registered.*replace=True"):
        register_encoder(toy_encoder)(lambda **kw: None)
    with pytest.raises(TwinsightError, match="reserved for timm"):
        register_encoder("timm:mine")
    with pytest.raises(TwinsightError, match=r"lacks the keyword argument\(s\) \['in_channels'"):

        @register_encoder("broken", default_config={"width": 2})
        def broken(*, embedding_dim, input_size, normalize, width):  # no in_channels
            raise AssertionError("never built")

    assert "broken" not in list_encoders()
    with pytest.raises(TwinsightError, match="options must be JSON values"):
        register_encoder("bad-defaults", default_config={"f": object()})
    with pytest.raises(TwinsightError, match="no encoder .* is registered"):
        unregister_encoder("no-such-encoder")


def test_registry_is_left_as_it_was():
    assert "toy-mlp" not in list_encoders()  # the fixture cleaned up after itself
    with pytest.raises(TwinsightError, match="unknown encoder 'toy-mlp'"):
        create_encoder("toy-mlp")
