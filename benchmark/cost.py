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
    # A model compiled in place (runtime.compile) calls its compiled code, which fvcore's jit trace cannot follow:
    # count its eager call (the same operations), then put the compiled one back.
    compiled = getattr(model, "_compiled_call_impl", None)
    if compiled is not None:
        model._compiled_call_impl = None
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
        if compiled is not None:
            model._compiled_call_impl = compiled


def profile_step(student: nn.Module, teacher: nn.Module | None, method: nn.Module, crop: tuple[int, int],
                 batch_size: int, num_classes: int, device: torch.device, steps: int = 3, warmup: int = 1,
                 runtime: dict | None = None) -> float:
    """Seconds per training step of one (student, teacher, method) at a crop and batch, measured on ``device``
    with random data: the student and teacher forwards, the method's terms, backward and an SGD step.
    The first ``warmup`` steps (allocations, cudnn autotuning) are not counted."""
    import time

    from benchmark.engine.step import step_losses, student_capture
    from benchmark.engine.train import autocast_context
    from benchmark.models.hooks import FeatureCapture
    from methods.base import Batch

    runtime = runtime or {}
    student, method = student.to(device).train(), method.to(device)
    params = list(student.parameters()) + list(method.student_optimizer_parameters())
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
    images = torch.randn(batch_size, 3, *crop, device=device)
    labels = torch.randint(0, num_classes, (batch_size, *crop), device=device)
    batch = Batch(images, labels, iteration=0, total_iterations=steps + warmup)
    with student_capture(student, method) as student_hooks:
        teacher_capture = FeatureCapture(teacher, method.teacher_points) if teacher is not None else None
        elapsed = 0.0
        for step in range(warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            with autocast_context(device, runtime):
                terms, _, _ = step_losses(student, teacher, method, student_hooks, teacher_capture, batch)
            optimizer.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                elapsed += time.perf_counter() - started
        if teacher_capture is not None:
            teacher_capture.remove()
    return elapsed / steps
