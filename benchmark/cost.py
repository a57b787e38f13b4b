"""What a model costs: parameters and FLOPs (fvcore), counted the way the papers' tables count them.

fvcore counts one fused multiply-add as one FLOP (so its "FLOPs" are MACs); the report says so next to
every number. Counting runs in eval mode on one image of the given size.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

FLOPS_CONVENTION = "fvcore: one multiply-add counts as one FLOP"


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, int]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore still calls the deprecated torch.jit.script
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        images = torch.zeros(1, 3, *input_size, device=device)
        analysis = FlopCountAnalysis(model, images)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        # fvcore logs every op it has no formula for (upsampling, adds): elementwise, negligible here.
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(analysis.total())
    finally:
        model.train(was_training)
