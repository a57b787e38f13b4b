"""Describe a zoo model: parameters, GFLOPs at given input sizes, and its feature points (for ``list models``).

FLOPs come from fvcore, which counts one fused multiply-add as one FLOP (so its "GFLOPs" are GMACs, the unit
CIRKD, CWD and most segmentation-KD papers report as FLOPs). Counted in eval mode, batch 1: the auxiliary head
is training-only and not part of inference cost. Ops fvcore has no formula for (BN, ReLU, pooling, upsampling)
count zero, which is the papers' convention too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmark.cost import count_flops
from benchmark.models.base import SegmentationModel, count_parameters


def count_gflops(model: SegmentationModel, input_size: tuple[int, int]) -> float:
    """fvcore GFLOPs (multiply-adds) of one forward at ``input_size`` (H, W), eval mode, batch 1."""
    return count_flops(model, input_size) / 1e9


def describe_model(
    model: SegmentationModel, input_sizes: Sequence[tuple[int, int]] = ((512, 1024),), *, flops: bool = True
) -> dict[str, Any]:
    """A JSON-ready description: params (total, and without the training-only aux head), GFLOPs, points."""
    aux = getattr(model, "aux_head", None)
    params = count_parameters(model)
    return {
        "class": type(model).__name__,
        "num_classes": model.num_classes,
        "params": params,
        "params_inference": params - (count_parameters(aux) if aux is not None else 0),
        "aux_weight": model.aux_weight,
        "gflops": {f"{h}x{w}": count_gflops(model, (h, w)) for h, w in input_sizes} if flops else {},
        "feature_points": {
            name: {"channels": p.channels, "stride": p.stride, "module": p.module, "capture": p.capture}
            for name, p in sorted(model.feature_points.items())
        },
    }


def describe_registered(
    name: str,
    num_classes: int,
    input_sizes: Sequence[tuple[int, int]] = ((512, 1024),),
    *,
    flops: bool = True,
    **builder_kwargs: Any,
) -> dict[str, Any]:
    """Build registered model ``name`` (random init, no download) and describe it."""
    from benchmark.registry import MODELS

    builder_kwargs.setdefault("pretrained", False)
    model = MODELS.get(name)(num_classes, **builder_kwargs)
    return {"name": name, **describe_model(model, input_sizes, flops=flops)}
