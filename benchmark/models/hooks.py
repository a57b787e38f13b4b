"""Capture named feature points with forward hooks, once per forward (after torchdistill)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

import torch
from torch import nn

from benchmark.models.base import SegmentationModel


class FeatureCapture:
    """Installs hooks for the requested points of one model; ``features`` holds the last forward's tensors.

    Only requested points are hooked, so a run that distils nothing pays nothing. ``logits`` is the
    model's own output, captured by a hook on the model itself like any other point. Use as a context
    manager or call :meth:`remove`.
    """

    def __init__(self, model: SegmentationModel, points: Iterable[str]):
        self.model = model
        self.points = frozenset(points)
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for name in sorted(self.points):
            point = model.point(name)
            module = modules[point.module]
            if point.capture == "output":
                self._handles.append(module.register_forward_hook(self._output_hook(name)))
            else:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(name)))

    def _output_hook(self, name: str):
        def hook(module: nn.Module, inputs, output):
            self.features[name] = output

        return hook

    def _input_hook(self, name: str):
        def hook(module: nn.Module, inputs):
            self.features[name] = inputs[0]

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """The features of the last forward; clears them so a stale tensor is never reused."""
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
