"""convert-checkpoint: every authors' layout we hold converts by naming rules, loads strictly, and reproduces the
authors' outputs; bad files fail with the file and the keys named, and nothing is written.

Layouts come from ``shared/reference`` (five) and ``tests/fixtures/authors_layouts.json`` (three more, made by
``tests/fixtures/make_authors_layouts.py`` with the authors' code). Each R101 forward runs once, at the probe's 128x128.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from benchmark.__main__ import main
from benchmark.convert import CBAM_ROLE, VIEW_ROLE, ConversionError, convert_file
from benchmark.models.hooks import FeatureCapture
from benchmark.registry import MODELS
from tests.conftest import SHARED
from tests.fixtures.make_authors_layouts import authors_state, layout_values

REFERENCE = Path(SHARED) / "reference"
FIXTURE = Path(__file__).parent / "fixtures" / "authors_layouts.json"
LV = layout_values()


def _load(layouts: Path, outputs: Path) -> tuple[dict, dict]:
    return json.loads(layouts.read_text())["layouts"], json.loads(outputs.read_text())["outputs"]


SHARED_LAYOUTS, SHARED_OUTPUTS = _load(REFERENCE / "checkpoint_layouts.json", REFERENCE / "reference_outputs.json")
EXTRA_LAYOUTS, EXTRA_OUTPUTS = _load(FIXTURE, FIXTURE)
LAYOUTS = {**SHARED_LAYOUTS, **EXTRA_LAYOUTS}
OUTPUTS = {**SHARED_OUTPUTS, **EXTRA_OUTPUTS}
FORMAT = {"cirkd": "cirkd", "attnfd": "deeplab_xception"}


def save_authors_file(path: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    """As each code base saves it: CIRKD a bare state dict, the deeplab-xception lineage a training checkpoint."""
    if FORMAT[name.split("/")[0]] == "cirkd":
        torch.save(state, path)
    else:
        torch.save({"epoch": 49, "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
                    "best_pred": 0.7}, path)
    return path


def our_output(model, name: str, subsampled: str | None) -> torch.Tensor:
    """The README's conventions: CIRKD entries are the logits before upsampling, AttnFD entries the model's output."""
    with torch.no_grad():
        if name.startswith("cirkd/"):
            with FeatureCapture(model, ["logits:pre_upsample"]) as capture:
                model(LV.probe())
                output = capture.pop()["logits:pre_upsample"]
        else:
            output = model(LV.probe())
    if subsampled:
        step_h, step_w = (int(s) for s in re.fullmatch(r"\[:, :, ::(\d+), ::(\d+)\]", subsampled).groups())
        output = output[:, :, ::step_h, ::step_w]
    return output


def test_every_shared_layout_is_tested_and_names_a_zoo_model():
    assert set(SHARED_LAYOUTS) == set(SHARED_OUTPUTS) and len(SHARED_LAYOUTS) == 5
    assert set(EXTRA_LAYOUTS) == {"cirkd/psp_resnet101", "cirkd/deeplabv3_mobilenetv2", "attnfd/deeplabv3plus_mobilenetv2"}
    for layout in LAYOUTS.values():
        assert layout["our_model"] in MODELS


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_authors_checkpoint_converts_loads_strictly_and_reproduces_their_outputs(name, tmp_path, capsys):
    layout, reference = LAYOUTS[name], OUTPUTS[name]
    state = authors_state(layout["state_dict"], LV.values)
    source = save_authors_file(tmp_path / "authors.pth", name, state)
    out = tmp_path / "ours.pt"
    fmt = FORMAT[name.split("/")[0]]
    argv = ["convert-checkpoint", str(source), "--format", fmt, "--model", layout["our_model"],
            "--num-classes", str(layout["num_classes"]), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"format {fmt}" in printed and str(out) in printed

    with torch.device("meta"):  # built without initialising 60M parameters; the file's tensors replace them
        model = MODELS.get(layout["our_model"])(layout["num_classes"])
    model.load_state_dict(torch.load(out, weights_only=True), strict=True, assign=True)
    model.eval()
    output = our_output(model, name, reference.get("subsampled"))
    expected = torch.tensor(reference["values"]).reshape(output.shape)
    largest = expected.abs().max()
    assert (output - expected).abs().max() <= 1e-4 * largest, f"{name}: largest difference vs {largest:.3g}"

    cbam = [k for k in state if ".cbam." in k or k.startswith("cbam.")]
    views = [k for k in state if "_level_features." in k]
    assert (len(cbam) > 0) == (fmt == "deeplab_xception")  # every AttnFD model carries its CBAM modules
    assert (len(views) > 0) == (name == "attnfd/deeplabv3plus_mobilenetv2")
    with torch.device("meta"):  # names and shapes suffice to see what was set aside
        target = MODELS.get(layout["our_model"])(layout["num_classes"])
    conversion = convert_file(source, fmt, target)
    assert sorted(k for k, role in conversion.set_aside.items() if role == CBAM_ROLE) == sorted(cbam)
    assert sorted(k for k, role in conversion.set_aside.items() if role == VIEW_ROLE) == sorted(views)
    assert len(state) == len(conversion.state) + len(conversion.set_aside)  # every source tensor used once
    if cbam:
        assert "set aside" in printed and "attnfd method" in printed


# ---- bad files ---------------------------------------------------------------------------------------------------

R18 = "cirkd/deeplabv3_resnet18"


def _convert(tmp_path: Path, state: dict, *, name: str = R18, fmt: str | None = None) -> tuple[int, str, Path]:
    layout = LAYOUTS[name]
    source = save_authors_file(tmp_path / "authors.pth", name, state)
    out = tmp_path / "ours.pt"
    out.write_bytes(b"kept")
    code = main(["convert-checkpoint", str(source), "--format", fmt or FORMAT[name.split("/")[0]],
                 "--model", layout["our_model"], "--num-classes", str(layout["num_classes"]), "--out", str(out)])
    return code, str(source), out


def test_unknown_missing_and_mis_shaped_tensors_are_named_and_nothing_is_written(tmp_path, capsys):
    state = LV.values(LAYOUTS[R18]["state_dict"])
    state["head.extra.weight"] = torch.zeros(3)
    del state["pretrained.layer2.1.conv1.weight"]
    state["head.block.1.weight"] = torch.zeros(7)
    code, source, out = _convert(tmp_path, state)
    message = capsys.readouterr().err
    assert code == 2 and source in message and "into deeplabv3_r18" in message, message
    assert "keys no rule of the format names: head.extra.weight" in message
    assert "does not fill: backbone.layer2.1.conv1.weight" in message
    assert "head.block.1.weight -> decoder.1.weight: file (7,), model (128,)" in message
    assert out.read_bytes() == b"kept"


def test_a_view_whose_values_differ_from_its_original_is_refused(tmp_path, capsys):
    name = "attnfd/deeplabv3plus_mobilenetv2"
    state = authors_state(LAYOUTS[name]["state_dict"], LV.values)
    state["backbone.high_level_features.8.conv.0.weight"] = state["backbone.high_level_features.8.conv.0.weight"] + 1
    code, source, out = _convert(tmp_path, state, name=name)
    message = capsys.readouterr().err
    assert code == 2 and source in message
    assert "backbone.high_level_features.8.conv.0.weight (named as a view of backbone.features.8.conv.0.weight, " \
           "but its values differ)" in message
    assert out.read_bytes() == b"kept"


def test_wrong_format_and_unsafe_files_are_refused(tmp_path, capsys):
    state = LV.values(LAYOUTS[R18]["state_dict"])
    code, source, _ = _convert(tmp_path, state, fmt="deeplab_xception")
    message = capsys.readouterr().err
    assert code == 2 and source in message and "{'state_dict'" in message
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state}, wrapped)
    assert main(["convert-checkpoint", str(wrapped), "--format", "cirkd", "--model", "deeplabv3_r18",
                 "--num-classes", "19", "--out", str(tmp_path / "x.pt")]) == 2
    assert "use --format deeplab_xception" in capsys.readouterr().err
    pickled = tmp_path / "pickled.pth"
    torch.save({"weights": state, "args": argparse.Namespace(lr=0.01)}, pickled)  # an object weights_only refuses
    assert main(["convert-checkpoint", str(pickled), "--format", "cirkd", "--model", "deeplabv3_r18",
                 "--num-classes", "19", "--out", str(tmp_path / "x.pt")]) == 2
    assert str(pickled) in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_missing_batch_counters_are_filled_and_reported(tmp_path, capsys):
    state = {k: v for k, v in LV.values(LAYOUTS[R18]["state_dict"]).items() if not k.endswith("num_batches_tracked")}
    code, _, out = _convert(tmp_path, state)
    assert code == 0
    assert "filled with 0: backbone.conv1.1.num_batches_tracked" in capsys.readouterr().out
    loaded = torch.load(out, weights_only=True)
    assert loaded["backbone.bn1.num_batches_tracked"].item() == 0


def test_conversion_raises_a_checkpoint_error_for_the_runner(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({}, path)
    with pytest.raises(ConversionError, match=r"empty\.pth.*does not fill"):
        convert_file(path, "cirkd", MODELS.get("pspnet_r18")(19))
