"""Contract tests for the paper model zoo: parameter counts vs the papers, feature points, pretrained loading.

Parametrised over every builder in the zoo modules, so a new zoo model is tested for free. Everything runs on
CPU at 64x64 with random init; nothing is downloaded.
"""

from __future__ import annotations

import inspect
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from benchmark.models import pretrained as pretrained_module
from benchmark.models.authors_encoders import PaddedInputConv2d
from benchmark.models.base import check_feature_shapes, count_parameters
from benchmark.models.describe import describe_model
from benchmark.models.hooks import FeatureCapture
from benchmark.models.pretrained import PretrainedWeightsError
from benchmark.registry import MODELS

ZOO_MODULES = {"benchmark.models.zoo_xception", "benchmark.models.zoo_cirkd"}
ZOO = sorted(name for name, builder in MODELS.items() if builder.__module__ in ZOO_MODULES)

# name: (classes the paper counted with, parameters the paper reports in millions or None, source)
PAPER_PARAMS = {
    "deeplabv3plus_r101": (21, 59.3, "AttnFD (arXiv:2403.05451) Table 1, VOC"),
    "deeplabv3plus_r18": (21, 16.6, "AttnFD (arXiv:2403.05451) Table 1, VOC"),
    "deeplabv3plus_mbv2": (21, 5.9, "AttnFD (arXiv:2403.05451) Table 1, VOC"),
    "deeplabv3_r101": (19, 61.1, "CIRKD (CVPR 2022) Table 1, Cityscapes"),
    "deeplabv3_r18": (19, 13.6, "CIRKD (CVPR 2022) Table 1, Cityscapes"),
    "deeplabv3_mbv2": (19, 3.2, "CIRKD (CVPR 2022) Table 1, Cityscapes"),
    "pspnet_r18": (19, 12.9, "CIRKD (CVPR 2022) Table 1, Cityscapes"),
    "pspnet_r101": (19, None, "no paper states it; ours"),
    "pspnet_effb0": (19, None, "LGAD does not state it (in what we could reach); ours"),
    "pspnet_b0": (19, None, "alias of pspnet_effb0"),
}


def test_every_zoo_model_has_a_paper_row():
    assert set(ZOO) == set(PAPER_PARAMS)


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_matches_paper_and_docstring(name):
    num_classes, paper_millions, source = PAPER_PARAMS[name]
    builder = MODELS.get(name)
    millions = count_parameters(builder(num_classes)) / 1e6
    if paper_millions is not None:
        assert abs(millions - paper_millions) / paper_millions < 0.03, f"{name}: {millions:.2f}M vs {source}"
        assert f"{paper_millions}M" in builder.__doc__, "the docstring must quote the paper's number"
    # The docstring's own count ("Ours...: X.XXM") must be the built model's, so it never goes stale.
    stated = re.findall(r"[Oo]urs[^:]*: (\d+\.\d\d)M", builder.__doc__)
    assert stated == [f"{millions:.2f}"], f"{name}: docstring says {stated}, model has {millions:.2f}M"


@pytest.mark.parametrize("name", ZOO)
def test_builder_signature_is_keyword_only_with_defaults(name):
    parameters = inspect.signature(MODELS.get(name)).parameters
    assert next(iter(parameters)) == "num_classes"
    for option in ("pretrained", "output_stride"):
        assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[option].default is not inspect.Parameter.empty
    assert parameters["pretrained"].default is False


@pytest.mark.parametrize("name", ZOO)
def test_forward_gives_logits_and_declared_points(name):
    torch.manual_seed(0)
    model = MODELS.get(name)(5)
    images = torch.randn(2, 3, 64, 64)
    names = set(model.feature_points)
    assert {"backbone.1", "backbone.2", "backbone.3", "backbone.4", "encoder", "decoder", "logits"} <= names
    assert "decoder:pre_relu" in names
    with FeatureCapture(model, names) as capture:
        model.train()
        logits = model(images)
        features = capture.pop()
        assert logits.shape == (2, 5, 64, 64)
        assert set(features) == names  # aux_logits included: the aux head runs in training
        check_feature_shapes(model, images, features)
        model.eval()
        with torch.no_grad():
            model(images)
        assert "aux_logits" not in capture.pop()  # inference never runs the aux head
    assert (model.aux_weight == 0.4) == ("aux_logits" in names)


@pytest.mark.parametrize(("name", "output_stride"), [("deeplabv3plus_r18", 8), ("deeplabv3_r18", 16)])
def test_declared_strides_follow_output_stride(name, output_stride):
    model = MODELS.get(name)(3, output_stride=output_stride)
    images = torch.randn(1, 3, 64, 64)
    assert [model.point(f"backbone.{i}").stride for i in range(1, 5)] == [4, 8, min(16, output_stride), output_stride]
    assert model.point("encoder").stride == output_stride
    model.eval()
    with FeatureCapture(model, model.feature_points) as capture, torch.no_grad():
        model(images)
        check_feature_shapes(model, images, capture.pop())


def test_output_stride_is_validated():
    with pytest.raises(ValueError, match="output_stride"):
        MODELS.get("deeplabv3_r18")(3, output_stride=32)


def test_xception_r101_has_multi_grid_last_stage():
    layer4 = MODELS.get("deeplabv3plus_r101")(3).backbone.layer4
    assert [block.conv2.dilation for block in layer4] == [(2, 2), (4, 4), (8, 8)]


@pytest.mark.parametrize(("output_stride", "expected"), [(16, {"layer3": (1, 1), "layer4": (2, 2)}),
                                                          (8, {"layer3": (2, 2), "layer4": (4, 4)})])
def test_xception_resnet18_dilates_both_convs_of_a_dilated_stages_first_block(output_stride, expected):
    backbone = MODELS.get("deeplabv3plus_r18")(3, output_stride=output_stride).backbone
    for stage, rate in expected.items():
        for block in getattr(backbone, stage):
            assert block.conv1.dilation == block.conv1.padding == block.conv2.dilation == rate
    # The CIRKD family keeps gluon-cv's convention (as timm): block 0 has the previous stage's dilation.
    cirkd = MODELS.get("deeplabv3_r18")(3).backbone
    assert cirkd.layer4[0].conv1.dilation == (2, 2) and cirkd.layer4[1].conv1.dilation == (4, 4)


@pytest.mark.parametrize(("output_stride", "rates"), [(16, [1, 1, 1, 1, 1, 1, 2]), (8, [1, 1, 1, 1, 2, 2, 4])])
def test_xception_mobilenet_v2_dilates_whole_stages_and_pads_before_the_expansion(output_stride, rates):
    blocks = MODELS.get("deeplabv3plus_mbv2")(3, output_stride=output_stride).backbone.blocks
    assert [{b.conv_dw.dilation for b in stage} for stage in blocks] == [{(r, r)} for r in rates]
    for stage, rate in zip(blocks[1:], rates[1:], strict=True):
        for block in stage:
            assert isinstance(block.conv_pw, PaddedInputConv2d) and block.conv_pw.input_padding == rate
            assert block.conv_dw.padding == (0, 0)
    cirkd = MODELS.get("deeplabv3_mbv2")(3).backbone.blocks  # CIRKD's MobileNetV2Dilated is timm's own dilation
    assert [b.conv_dw.dilation[0] for b in cirkd[3]] == [1, 2, 2, 2] and not isinstance(cirkd[3][0].conv_pw,
                                                                                       PaddedInputConv2d)


@pytest.mark.parametrize("name", ["deeplabv3plus_mbv2", "deeplabv3_mbv2"])
def test_mobilenet_v2_pre_relu_points_are_the_next_blocks_expansion_before_relu6(name):
    torch.manual_seed(0)
    model = MODELS.get(name)(3).eval()
    for module in model.modules():  # non-trivial BN statistics, so the border of the padded map differs from 0
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.running_mean)
            torch.nn.init.normal_(module.bias)
    points = [f"backbone.{k}{suffix}" for k in range(1, 5) for suffix in ("", ":pre_relu")]
    assert [model.point(f"backbone.{k}:pre_relu").channels for k in range(1, 5)] == [144, 192, 576, 320]
    with FeatureCapture(model, points) as capture, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        features = capture.pop()
    check_feature_shapes(model, torch.randn(1, 3, 64, 64), features)
    blocks = model.backbone.blocks
    for k, following in ((1, blocks[2][0]), (2, blocks[3][0]), (3, blocks[5][0])):
        bn = following.bn1
        expanded = F.conv2d(features[f"backbone.{k}"], following.conv_pw.weight)  # on the unpadded stage output
        expected = F.batch_norm(expanded, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        torch.testing.assert_close(features[f"backbone.{k}:pre_relu"], expected)
        assert features[f"backbone.{k}:pre_relu"].min() < 0  # before the ReLU6
    assert torch.equal(features["backbone.4:pre_relu"], features["backbone.4"])  # linear: no ReLU follows


def test_pre_relu_point_is_the_input_of_the_stage_relu():
    torch.manual_seed(0)
    model = MODELS.get("deeplabv3_r18")(3).eval()
    for module in model.modules():  # timm zero-inits each block's last BN, which would hide every negative
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.weight)
    points = ["backbone.4", "backbone.4:pre_relu", "encoder:pre_relu", "decoder", "decoder:pre_relu"]
    with FeatureCapture(model, points) as capture, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        features = capture.pop()
    assert features["backbone.4:pre_relu"].min() < 0 <= features["backbone.4"].min()
    assert torch.equal(F.relu(features["backbone.4:pre_relu"]), features["backbone.4"])
    assert torch.equal(F.relu(features["decoder:pre_relu"]), features["decoder"])  # dropout is identity in eval
    assert features["encoder:pre_relu"].min() < 0


def test_describe_model_reports_params_points_and_flops():
    model = MODELS.get("pspnet_r18")(19)
    small, large = describe_model(model, [(64, 64), (128, 128)])["gflops"].values()
    description = describe_model(model, [(64, 128)])
    assert description["params"] == count_parameters(model)
    assert description["params"] - description["params_inference"] == count_parameters(model.aux_head)
    assert description["feature_points"]["backbone.4"] == {
        "channels": 512,
        "stride": 8,
        "module": "backbone.layer4",
        "capture": "output",
    }
    assert 0 < small and 3.5 < large / small < 4.5  # convolutions scale with the pixel count
    assert model.training  # describing a model leaves its mode alone


# ---- pretrained weights ----------------------------------------------------------------------------------------


def _classification_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """A full ImageNet-style state dict (classifier included) of a random timm model, as a user's file holds."""
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, **kwargs).state_dict()


def test_loads_a_local_torchvision_style_file(tmp_path):
    state = _classification_state("resnet18")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # old torchvision files
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(state, path)
    model = MODELS.get("deeplabv3plus_r18")(21, pretrained=str(path))
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(model.backbone.bn1.running_var, state["bn1.running_var"])


def test_loads_cirkd_gluon_layout_deep_stem_file(tmp_path):
    timm_state = _classification_state("resnet18", stem_type="deep", stem_width=64)
    renames = {"conv1.0.": "conv1.", "conv1.1.": "bn1.", "conv1.3.": "conv2.", "conv1.4.": "bn2.",
               "conv1.6.": "conv3.", "bn1.": "bn3."}  # fmt: skip
    gluon_state = {}
    for key, value in timm_state.items():
        new = next((n + key[len(o) :] for o, n in renames.items() if key.startswith(o)), key)
        gluon_state[new] = value
    assert "conv2.weight" in gluon_state and "conv1.0.weight" not in gluon_state
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in gluon_state.items()}}, path)  # DDP-wrapped checkpoint
    model = MODELS.get("deeplabv3_r18")(19, pretrained=str(path))
    assert torch.equal(model.backbone.conv1[3].weight, timm_state["conv1.3.weight"])
    assert torch.equal(model.backbone.bn1.weight, timm_state["bn1.weight"])


def test_loads_from_a_hugging_face_cache_directory(tmp_path):
    state = _classification_state("mobilenetv2_100")
    snapshot = tmp_path / "hub" / "models--timm--mobilenetv2_100.ra_in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    model = MODELS.get("deeplabv3plus_mbv2")(21, pretrained=str(tmp_path))
    assert torch.equal(model.backbone.blocks[6][0].conv_pwl.weight, state["blocks.6.0.conv_pwl.weight"])
    # The deeplab-xception padding swaps the expansion conv for a padding one: it keeps the loaded weights.
    assert isinstance(model.backbone.blocks[2][0].conv_pw, PaddedInputConv2d)
    assert torch.equal(model.backbone.blocks[2][0].conv_pw.weight, state["blocks.2.0.conv_pw.weight"])


def test_cache_directory_without_the_weights_says_what_it_looked_for(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r"mobilenetv2_100\.ra_in1k.*looked for") as info:
        MODELS.get("deeplabv3_mbv2")(19, pretrained=str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere" / "resnet101.pth"
    with pytest.raises(PretrainedWeightsError, match="does not exist") as info:
        MODELS.get("deeplabv3plus_r18")(21, pretrained=str(path))
    assert str(path) in str(info.value)


def test_mismatched_file_names_file_and_keys(tmp_path):
    state = _classification_state("resnet18")
    del state["layer3.0.conv1.weight"]
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    state["layer4.0.bn1.weight"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError) as info:
        MODELS.get("deeplabv3plus_r18")(21, pretrained=str(path))
    message = str(info.value)
    assert str(path) in message
    assert "missing keys: layer3.0.conv1.weight" in message
    assert "unexpected keys: layer9.0.conv1.weight" in message
    assert "layer4.0.bn1.weight: file (7,) vs encoder (512,)" in message


def test_a_different_architecture_is_rejected(tmp_path):
    path = tmp_path / "resnet18d.pth"
    torch.save(_classification_state("resnet18d"), path)  # 32-wide deep stem, avg-pool shortcuts
    with pytest.raises(PretrainedWeightsError, match="resnet18d.pth"):
        MODELS.get("deeplabv3_r18")(19, pretrained=str(path))


def test_hub_failure_is_a_clear_error(monkeypatch):
    def offline(build, hub_name):
        raise OSError(f"cannot reach huggingface.co for {hub_name}")

    monkeypatch.setattr(pretrained_module, "_hub_create", offline)
    with pytest.raises(PretrainedWeightsError, match=r"resnet18\.tv_in1k.*pretrained: /path/to/file.pth.*false"):
        MODELS.get("deeplabv3plus_r18")(21, pretrained=True)


def test_encoder_without_hub_weights_says_which_file_to_pass():
    with pytest.raises(PretrainedWeightsError, match="resnet18-imagenet.pth"):
        MODELS.get("pspnet_r18")(19, pretrained=True)
