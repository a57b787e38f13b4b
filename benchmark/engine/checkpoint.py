"""Full-state checkpoints that load strictly.

A checkpoint holds everything needed to continue a run bit-for-bit on CPU: model, method modules
(connectors, memory banks, private optimizers via extra state), optimizer, scheduler, iteration, RNG
states, AMP scaler, and the run's bookkeeping. Loading is strict: a missing or unexpected key is an
error naming the file and the keys (the field's de-facto code base drops mismatched keys silently).
Files are read with ``weights_only=True``: they hold tensors and plain containers only.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark.store import atomic_write_bytes


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(_python_state_as_ints(), dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_as_ints() -> list[int]:
    version, internal, gauss = random.getstate()
    return [version, *internal, 0 if gauss is None else 1]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    ints = state["python"].tolist()
    random.setstate((ints[0], tuple(ints[1:-1]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from None


class PrecisionMismatchError(CheckpointError):
    """A run's checkpoint was trained in another precision than this process would continue it in."""


def stored_precision(path: Path) -> str | None:
    """The precision a checkpoint was trained in (``"bf16"``/``"fp32"``); None for one written before it was stored.

    Memory-mapped, so only the few bytes of this key are read, not the tensors.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True).get("precision")
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from None


def check_precision(run: str, path: Path, stored: str | None, precision: str) -> None:
    """Refuse to continue a run in another precision than its checkpoint's: its numbers would mix both."""
    if stored is not None and stored != precision:
        raise PrecisionMismatchError(
            f"run {run}: {path} was trained in {stored}, but this process would resume it in {precision}: a run "
            f"trains in one precision; resume it where it ran (runtime.amp and the device decide: bf16 on CUDA unless "
            f"runtime.amp is off, fp32 on a CPU), or remove {path} to train it again from the start in {precision}")


def load_state_strict(module: nn.Module, state: dict[str, Any], source: Path | str, what: str) -> None:
    """``load_state_dict`` that names the file and every missing / unexpected / mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if hasattr(state[k], "shape") and hasattr(own[k], "shape") and state[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError(f"{source}: {what} does not match: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
