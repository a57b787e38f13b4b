"""Convert the authors' released checkpoints into our zoo's names, by naming rules, strictly.

Two source formats, each the file its code base saves:

``cirkd``
    winycg/CIRKD@2d8ad0f saves ``model.state_dict()`` as a bare dict (``train_kd.py:491-503``,
    ``save_checkpoint``) of ``models/deeplabv3.py``, ``pspnet.py``, ``deeplabv3_mobile.py`` (``pretrained.*``
    gluon-cv ResNet v1s or ``pretrained.net.features.*`` MobileNetV2, ``head.*``, ``auxlayer.*``). Its models take
    BGR 0-255 images minus the mean, no std: the converted weights are only right with ``dataset.normalization:
    bgr_mean``.
``deeplab_xception``
    the pytorch-deeplab-xception lineage (jfzhang95, clovaai/overhaul-distillation, AmirMansurian/AttnFD, AICSD)
    saves ``{'epoch', 'state_dict', 'best_pred'}``, with ``'optimizer'`` in some (AttnFD@f090bbe:utils/saver.py:19-22,
    ``train_kd.py:136-140``) around ``modeling/deeplab.py`` (``backbone.*`` torchvision-named ResNet or
    ``backbone.features.*`` MobileNetV2, ``aspp.*``, ``decoder.*``). Input: RGB, ImageNet mean and std.

Each source name is rewritten by the first rule of its format whose pattern matches (module-level rules such as
"``head.aspp.b{k}.block.{i}`` is ``context.branches.{k}.{i}``"; MobileNetV2's flat ``features.{n}`` index is placed
in timm's ``blocks.{stage}.{block}`` by the target model's stage depths). A source tensor is then either used once
or set aside with its role: AttnFD's CBAM attention modules (they belong to the ``attnfd`` method, which builds its
own) and, in AttnFD's MobileNetV2, the ``low_level_features`` / ``high_level_features`` views of ``features``, which
hold every backbone tensor a second time (recognised by name and by identical values). Every tensor of the target
model must be filled with its shape (a missing ``num_batches_tracked`` counter alone is filled with 0 and reported,
as files from older PyTorch lack it); anything else is a :class:`ConversionError` naming the file and keys.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.engine.checkpoint import CheckpointError, load_checkpoint, load_state_strict
from benchmark.store import atomic_write_bytes
from benchmark.suite import file_digest

FORMATS = ("cirkd", "deeplab_xception")
#: ``dataset.normalization`` each format's models were trained with (``ours`` brings none of its own).
FORMAT_NORMALIZATION = {"cirkd": "bgr_mean", "deeplab_xception": "imagenet"}

CBAM_ROLE = "AttnFD's CBAM attention module: part of the attnfd method (it builds its own), not of the model"
VIEW_ROLE = "second name of a backbone tensor (AttnFD's MobileNetV2 registers features[0:4] / features[4:] again)"
OPTIONAL_SUFFIX = "num_batches_tracked"


class ConversionError(CheckpointError):
    """A checkpoint that cannot be converted into the target model; the message names the file and keys."""


@dataclass
class Conversion:
    """The converted state dict and what happened to every source tensor."""

    source: str
    format: str
    sha256: str
    state: dict[str, torch.Tensor]
    set_aside: dict[str, str] = field(default_factory=dict)  # source key -> role
    filled: list[str] = field(default_factory=list)  # target keys absent from the source, filled with 0
    other_entries: list[str] = field(default_factory=list)  # non-weight entries of the file (optimizer, epoch)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what the log and a run's record say about the file."""
        roles: dict[str, list[str]] = {}
        for key, role in self.set_aside.items():
            roles.setdefault(role, []).append(key)
        return {
            "path": self.source,
            "format": self.format,
            "sha256": self.sha256,
            "tensors_loaded": len(self.state) - len(self.filled),
            "set_aside": [{"role": role, "tensors": len(keys), "modules": _modules(keys)}
                          for role, keys in sorted(roles.items())],
            "filled_with_zero": self.filled,
            "other_entries": self.other_entries,
            "normalization": FORMAT_NORMALIZATION.get(self.format),
        }


def _modules(keys: list[str]) -> list[str]:
    """The shortest distinct module prefixes of ``keys`` up to their third component (for a readable summary)."""
    return sorted({".".join(key.split(".")[:3]) for key in keys})


def describe_weights(loaded: dict[str, Any]) -> str:
    """One line for a person, from :meth:`Conversion.summary` or :func:`load_weights`: the file, its format and
    digest, what was set aside and why, the input preprocessing it expects."""
    text = (f"loaded {loaded['path']} (format {loaded['format']}, sha256 {loaded['sha256']}, "
            f"{loaded['tensors_loaded']} tensors)")
    for item in loaded["set_aside"]:
        text += f"; set aside {item['tensors']} tensors ({', '.join(item['modules'])}): {item['role']}"
    if loaded["filled_with_zero"]:
        text += f"; filled with 0: {', '.join(loaded['filled_with_zero'])}"
    if loaded["other_entries"]:
        text += f"; ignored non-weight entries: {', '.join(loaded['other_entries'])}"
    if loaded["normalization"]:
        text += f"; input preprocessing dataset.normalization: {loaded['normalization']}"
    return text


# --- naming rules -------------------------------------------------------------------------------------------------

Rename = str | Callable[[re.Match, nn.Module], str]


def _shift(group: int, by: int) -> Callable[[re.Match, nn.Module], str]:
    return lambda match, model: str(int(match.group(group)) + by)


def _mobilenet_block(match: re.Match, model: nn.Module) -> str:
    """``features.{n}.conv.{i}`` -> timm ``blocks.{stage}.{block}.{layer}``.

    Both code bases build MobileNetV2 as one flat ``features`` list (index 0 the stem) whose blocks are Sequentials of
    conv / BN / ReLU6; timm groups the same blocks by stage. The stage depths are read from the target model, and the
    Sequential position is named after timm's layer in the same place (the first block has no expansion).
    """
    index, position, rest = int(match.group("index")), int(match.group("position")), match.group("rest")
    stages = model.backbone.blocks
    offset = index - 1
    for stage_index, stage in enumerate(stages):
        if offset < len(stage):
            block = stage[offset]
            expanding = ("conv_pw", "bn1", None, "conv_dw", "bn2", None, "conv_pwl", "bn3")
            plain = ("conv_dw", "bn1", None, "conv_pw", "bn2")
            layers = expanding if hasattr(block, "conv_pwl") else plain
            layer = layers[position] if position < len(layers) else None
            if layer is None:
                raise KeyError(f"no parameterised layer at position {position} of a MobileNetV2 block")
            return f"backbone.blocks.{stage_index}.{offset}.{layer}.{rest}"
        offset -= len(stage)
    raise KeyError(f"MobileNetV2 block {index} is past the target's {sum(len(s) for s in stages)} blocks")


_DEEP_STEM = [  # gluon-cv ResNet v1s stem (three 3x3 convs) -> timm's deep stem Sequential
    (r"^pretrained\.conv1\.", "backbone.conv1.0."),
    (r"^pretrained\.bn1\.", "backbone.conv1.1."),
    (r"^pretrained\.conv2\.", "backbone.conv1.3."),
    (r"^pretrained\.bn2\.", "backbone.conv1.4."),
    (r"^pretrained\.conv3\.", "backbone.conv1.6."),
    (r"^pretrained\.bn3\.", "backbone.bn1."),
]
_MOBILENET = r"features\.(?P<index>[1-9]\d*)\.conv\.(?P<position>\d+)\.(?P<rest>.+)$"

RULES: dict[str, list[tuple[str, Rename]]] = {
    "cirkd": [
        *_DEEP_STEM,
        (r"^pretrained\.(layer[1-4]\.)", r"backbone.\1"),  # block names agree (conv1..3, bn1..3, downsample)
        (r"^pretrained\.net\.features\.0\.0\.", "backbone.conv_stem."),
        (r"^pretrained\.net\.features\.0\.1\.", "backbone.bn1."),
        (r"^pretrained\.net\." + _MOBILENET, _mobilenet_block),
        (r"^head\.aspp\.b0\.(\d)\.", r"context.branches.0.\1."),
        (r"^head\.aspp\.b([1-3])\.block\.(\d)\.", r"context.branches.\1.\2."),
        (r"^head\.aspp\.b4\.gap\.([12])\.", lambda m, _: f"context.branches.4.gap.1.{int(m.group(1)) - 1}."),
        (r"^head\.aspp\.project\.", "context.project."),
        (r"^head\.psp\.conv([1-4])\.", lambda m, _: f"context.stages.{int(m.group(1)) - 1}.1."),
        (r"^head\.block\.4\.", "classifier."),  # DeepLabV3's classifier closes its block; PSPNet's is separate
        (r"^head\.block\.", "decoder."),
        (r"^head\.classifier\.", "classifier."),
        (r"^auxlayer\.block\.", "aux_head."),
    ],
    "deeplab_xception": [
        (r"^backbone\.(conv1|bn1|layer[1-4])\.", r"backbone.\1."),  # torchvision names, as timm's
        (r"^backbone\.features\.0\.0\.", "backbone.conv_stem."),
        (r"^backbone\.features\.0\.1\.", "backbone.bn1."),
        (r"^backbone\." + _MOBILENET, _mobilenet_block),
        (r"^aspp\.aspp([1-4])\.atrous_conv\.", lambda m, _: f"context.branches.{int(m.group(1)) - 1}.0."),
        (r"^aspp\.aspp([1-4])\.bn\.", lambda m, _: f"context.branches.{int(m.group(1)) - 1}.1."),
        (r"^aspp\.global_avg_pool\.([12])\.", lambda m, _: f"context.branches.4.gap.1.{int(m.group(1)) - 1}."),
        (r"^aspp\.conv1\.", "context.project.0."),
        (r"^aspp\.bn1\.", "context.project.1."),
        (r"^decoder\.conv1\.", "decoder.reduce.0."),
        (r"^decoder\.bn1\.", "decoder.reduce.1."),
        (r"^decoder\.last_conv\.8\.", "classifier."),
        (r"^decoder\.last_conv\.([0-7])\.", r"decoder.fuse.\1."),
    ],
}
_CBAM = re.compile(r"(^|\.)cbam\.")
_VIEWS = re.compile(r"^backbone\.(?P<view>low_level_features|high_level_features)\.(?P<index>\d+)\.(?P<rest>.+)$")


def _rename(key: str, rules: list[tuple[str, Rename]], model: nn.Module) -> str | None:
    for pattern, replacement in rules:
        match = re.match(pattern, key)
        if match is None:
            continue
        head = replacement(match, model) if callable(replacement) else match.expand(replacement)
        return head + key[match.end():]
    return None


def _view_targets(keys: list[str]) -> dict[str, str]:
    """AttnFD's MobileNetV2 registers ``low_level_features = features[0:4]`` and ``high_level_features = features[4:]``
    (AttnFD@f090bbe:modeling/backbone/mobilenet.py:117-118); slicing an ``nn.Sequential`` keeps its keys, so the view
    ``{view}.{n}.*`` is ``features.{n}.*``."""
    return {key: f"backbone.features.{m.group('index')}.{m.group('rest')}" for key in keys if (m := _VIEWS.match(key))}


# --- conversion ---------------------------------------------------------------------------------------------------


def read_source(path: Path, fmt: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside an authors' file (``weights_only``), and the names of its other entries."""
    if fmt not in FORMATS:
        raise ConversionError(f"{path}: unknown checkpoint format {fmt!r} (known: {', '.join(FORMATS)})")
    data = load_checkpoint(path)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a dict, got {type(data).__name__}")
    other: list[str] = []
    if fmt == "deeplab_xception":
        if not isinstance(data.get("state_dict"), dict):
            raise ConversionError(f"{path}: a deeplab_xception checkpoint is {{'state_dict': ..., 'optimizer': ..., "
                                  f"'epoch': ...}}; this file has keys {sorted(data)[:8]}")
        other = sorted(k for k in data if k != "state_dict")
        data = data["state_dict"]
    elif "state_dict" in data and isinstance(data["state_dict"], dict):
        raise ConversionError(f"{path}: CIRKD saves a bare state dict, this file wraps one in 'state_dict' "
                              "(a pytorch-deeplab-xception-lineage file? use --format deeplab_xception)")
    not_tensors = sorted(k for k, v in data.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"{path}: entries that are not tensors in the state dict: {_shown(not_tensors)}")
    return {key.removeprefix("module."): value for key, value in data.items()}, other


def convert_state(state: dict[str, torch.Tensor], fmt: str, model: nn.Module, source: str,
                  model_name: str | None = None) -> dict:
    """Rename ``state`` into ``model``'s names. Returns ``{"state", "set_aside", "filled"}``; raises on any gap."""
    rules = RULES[fmt]
    own = model.state_dict()
    views = _view_targets(list(state)) if fmt == "deeplab_xception" else {}
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    set_aside: dict[str, str] = {}
    unmatched, clashes, mis_shaped, unknown = [], [], [], []
    for key, value in state.items():
        if fmt == "deeplab_xception" and _CBAM.search(key):
            set_aside[key] = CBAM_ROLE
            continue
        if key in views:
            original = views[key]
            if original not in state:
                unmatched.append(f"{key} (a view of {original}, which the file lacks)")
            elif state[original].shape != value.shape or not torch.equal(state[original], value):
                unmatched.append(f"{key} (named as a view of {original}, but its values differ)")
            else:
                set_aside[key] = VIEW_ROLE
            continue
        try:
            target = _rename(key, rules, model)
        except KeyError as error:
            unmatched.append(f"{key} ({error.args[0]})")
            continue
        if target is None:
            unknown.append(key)
        elif target in origin:
            clashes.append(f"{key} and {origin[target]} both name {target}")
        elif target not in own:
            unmatched.append(f"{key} -> {target}")
        elif own[target].shape != value.shape:
            mis_shaped.append(f"{key} -> {target}: file {tuple(value.shape)}, model {tuple(own[target].shape)}")
        else:
            converted[target], origin[target] = value, key
    missing = [k for k in own if k not in converted]
    filled = [k for k in missing if k.endswith(OPTIONAL_SUFFIX)]
    missing = [k for k in missing if not k.endswith(OPTIONAL_SUFFIX)]
    problems = []
    for label, keys in (("keys no rule of the format names", unknown), ("keys with no place in the model", unmatched),
                        ("keys renamed onto the same tensor", clashes), ("shape mismatches", mis_shaped),
                        ("model tensors the file does not fill", missing)):
        if keys:
            problems.append(f"{label}: {_shown(keys)}")
    if problems:
        raise ConversionError(f"{source}: cannot convert this {fmt} checkpoint into {model_name or type(model).__name__} "
                              f"({len(state)} tensors in the file, {len(own)} in the model): " + "; ".join(problems))
    for key in filled:
        converted[key] = torch.zeros(own[key].shape, dtype=own[key].dtype)  # `own` may live on the meta device
    return {"state": {k: converted[k] for k in own}, "set_aside": set_aside, "filled": filled}


def _shown(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_file(path: str | Path, fmt: str, model: nn.Module, model_name: str | None = None) -> Conversion:
    """Read an authors' checkpoint and convert it into ``model``'s names (the model is not modified)."""
    path = Path(path)
    state, other = read_source(path, fmt)
    result = convert_state(state, fmt, model, str(path), model_name)
    return Conversion(source=str(path), format=fmt, sha256=file_digest(str(path)), state=result["state"],
                      set_aside=result["set_aside"], filled=result["filled"], other_entries=other)


def load_weights(model: nn.Module, path: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """Load a checkpoint of format ``ours`` (a state dict, or a run's file with ``model``) or an authors' format
    into ``model`` strictly; returns what the log and the record say about it."""
    path = Path(path)
    if fmt == "ours":
        state = load_checkpoint(path)
        state = state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state
        load_state_strict(model, state, path, what)
        return {"path": str(path), "format": "ours", "sha256": file_digest(str(path)), "tensors_loaded": len(state),
                "set_aside": [], "filled_with_zero": [], "other_entries": [], "normalization": None}
    conversion = convert_file(path, fmt, model, what)
    load_state_strict(model, conversion.state, path, what)
    return conversion.summary()


def convert_checkpoint(source: str | Path, fmt: str, model_name: str, num_classes: int, out: str | Path,
                       model_options: dict[str, Any] | None = None) -> Conversion:
    """``convert-checkpoint``: convert, check that a fresh model loads the result strictly, write it atomically."""
    from benchmark.registry import MODELS

    options = {"pretrained": False, **(model_options or {})}
    with torch.device("meta"):  # names and shapes are all the conversion and the check need: no memory, no init
        target, fresh = MODELS.get(model_name)(num_classes, **options), MODELS.get(model_name)(num_classes, **options)
    conversion = convert_file(source, fmt, target, model_name)
    try:  # the promise of the output: a fresh model loads it strictly (assign: meta tensors take the values)
        fresh.load_state_dict(conversion.state, strict=True, assign=True)
    except RuntimeError as error:
        raise ConversionError(f"{source}: the converted state dict does not load into {model_name}: {error}") from None
    buffer = io.BytesIO()
    torch.save(conversion.state, buffer)
    atomic_write_bytes(Path(out), buffer.getvalue())
    return conversion
