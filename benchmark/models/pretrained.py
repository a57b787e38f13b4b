"""ImageNet weights for the zoo's encoders: from the timm hub when online, from a local file or cache otherwise.

``pretrained`` is ``False`` (random init), ``True`` (timm/Hugging Face hub download) or a path: a state-dict
file (``.pth``/``.pt``/``.bin``/``.safetensors``) or a cache directory holding the hub file. Nothing here
ever falls back to a random init silently: every failure is a :class:`PretrainedWeightsError` that names the
file, the keys and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

# Keys that a classification checkpoint may lack without harm: old torchvision files predate BatchNorm's counter.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights were asked for and could not be provided."""


@dataclass(frozen=True)
class EncoderSpec:
    """A timm encoder and where its ImageNet weights come from.

    ``hub_tag`` is the timm pretrained tag whose weights match this exact architecture, or ``None`` when no
    hub file does (then ``hub_note`` says which file the papers' code used, to pass as a local path).
    """

    timm_name: str
    kwargs: dict = field(default_factory=dict)
    hub_tag: str | None = None
    hub_note: str = ""

    @property
    def hub_name(self) -> str | None:
        return f"{self.timm_name}.{self.hub_tag}" if self.hub_tag else None


def create_encoder(spec: EncoderSpec, pretrained: bool | str | Path, **create_kwargs) -> nn.Module:
    """Build ``spec`` as a timm ``features_only`` encoder, with weights as ``pretrained`` says."""

    def build(name: str, hub: bool) -> nn.Module:
        return timm.create_model(name, pretrained=hub, features_only=True, **spec.kwargs, **create_kwargs)

    if pretrained is False or pretrained is None:
        return build(spec.timm_name, hub=False)
    if pretrained is True:
        if spec.hub_name is None:
            raise PretrainedWeightsError(
                f"no hub ImageNet weights match encoder {spec.timm_name} {spec.kwargs}: {spec.hub_note} "
                "Pass `pretrained: /path/to/file.pth` or set `pretrained: false`."
            )
        try:
            return _hub_create(build, spec.hub_name)
        except Exception as error:  # network, DNS, proxy, missing cache: all mean "not here"
            raise PretrainedWeightsError(
                f"could not download ImageNet weights {spec.hub_name!r} for the encoder ({type(error).__name__}: "
                f"{error}). Without network access, pass `pretrained: /path/to/file.pth` (a state dict of "
                f"{spec.hub_name}) or a cache directory holding it, or set `pretrained: false`."
            ) from error
    encoder = build(spec.timm_name, hub=False)
    load_encoder_weights(encoder, Path(pretrained), spec)
    return encoder


def _hub_create(build: Callable[[str, bool], nn.Module], hub_name: str) -> nn.Module:
    """The one place that touches the network (tests replace it)."""
    return build(hub_name, True)


def resolve_weights_file(path: Path, spec: EncoderSpec) -> Path:
    """A file as given, or the hub file for ``spec`` inside a timm / Hugging Face / torch cache directory."""
    if path.is_file():
        return path
    if not path.exists():
        raise PretrainedWeightsError(f"pretrained weights path {str(path)!r} does not exist")
    if spec.hub_name is None:
        raise PretrainedWeightsError(
            f"{str(path)!r} is a directory, but no hub file matches encoder {spec.timm_name} {spec.kwargs} "
            f"to look for in it: {spec.hub_note} Pass the weights file itself."
        )
    looked_for = []
    repo_dir = f"models--timm--{spec.hub_name}"
    for root in (path, path / "hub", path / "huggingface" / "hub"):
        for snapshot in sorted((root / repo_dir / "snapshots").glob("*")):
            for filename in ("model.safetensors", "pytorch_model.bin"):
                looked_for.append(snapshot / filename)
        looked_for.append(root / repo_dir / "snapshots/<revision>/model.safetensors")
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        looked_for.append(path / f"{spec.hub_name}{suffix}")
    for candidate in looked_for:
        if candidate.is_file():
            return candidate
    listed = "\n  ".join(str(c) for c in looked_for)
    raise PretrainedWeightsError(
        f"no weights for {spec.hub_name!r} in cache directory {str(path)!r}; looked for:\n  {listed}"
    )


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """Tensors only (``weights_only``): a checkpoint can never run code here."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file), device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(
            f"cannot read weights file {str(file)!r}: {type(error).__name__}: {error}"
        ) from error
    for wrapper in ("state_dict", "model", "module"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"weights file {str(file)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _remap_deep_stem(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CIRKD / gluon-cv ``resnetv1b`` deep-stem names -> timm's (``conv1,bn1,conv2,..`` -> ``conv1.0,conv1.1,..``).

    CIRKD's published ImageNet files (resnet18/101-imagenet.pth) use the gluon-cv layout; timm's deep stem is one
    Sequential, so the same tensors need new names.
    """
    if "conv2.weight" not in state or "conv1.0.weight" in state:
        return state
    mapping = {
        "conv1.": "conv1.0.",
        "bn1.": "conv1.1.",
        "conv2.": "conv1.3.",
        "bn2.": "conv1.4.",
        "conv3.": "conv1.6.",
        "bn3.": "bn1.",
    }
    remapped = {}
    for key, value in state.items():
        for old, new in mapping.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        remapped[key] = value
    return remapped


def _classifier_keys(spec: EncoderSpec, encoder_keys: set[str]) -> set[str]:
    """Keys of the full classification model that ``features_only`` drops (fc, conv_head, ...)."""
    with torch.device("meta"):
        full = timm.create_model(spec.timm_name, pretrained=False, **spec.kwargs)
    return set(full.state_dict()) - encoder_keys


def load_encoder_weights(encoder: nn.Module, path: Path, spec: EncoderSpec) -> Path:
    """Load a local ImageNet state dict strictly into ``encoder``; returns the file used.

    Strict means: every encoder tensor comes from the file with the same shape, and the file holds nothing
    else but the classifier that ``features_only`` drops. Anything else is an error naming the file and keys.
    """
    file = resolve_weights_file(path, spec)
    state = _remap_deep_stem(read_state_dict(file))
    own = encoder.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = sorted(set(state) - set(own) - _classifier_keys(spec, set(own)))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise PretrainedWeightsError(
            f"weights file {str(file)!r} does not match encoder {spec.timm_name} {spec.kwargs}: " + "; ".join(parts)
        )
    encoder.load_state_dict({k: state.get(k, v) for k, v in own.items()}, strict=True)
    return file
