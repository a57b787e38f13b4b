"""The dataset interface.

A dataset module registers one :class:`DatasetSpec` instance in ``DATASETS``. The spec knows the
classes, palette and splits, checks a root directory (``check``) and builds a split as a
``torch.utils.data.Dataset`` of *raw* samples: ``(image, mask)`` where ``image`` is a
``tv_tensors.Image`` uint8 ``[3, H, W]`` and ``mask`` a ``tv_tensors.Mask`` int64 ``[H, W]`` already in
train ids (0..K-1, ``ignore_index`` elsewhere). Augmentation and normalisation are applied by the
harness (:mod:`benchmark.data.transforms`) so that seeding is in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

IGNORE_INDEX = 255


class DatasetError(Exception):
    """A dataset root that is missing, incomplete or malformed; the message says what and where."""


@dataclass
class CheckReport:
    """Result of checking a dataset root: image counts per split and the problems found."""

    dataset: str
    root: str | None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self, limit: int = 20) -> str:
        lines = [f"dataset {self.dataset!r}" + (f" at {self.root}:" if self.root is not None else ":")]
        lines += [f"  {split}: {count} pairs" for split, count in self.counts.items()]
        if self.problems:
            lines.append(f"  {len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems[:limit]]
            if len(self.problems) > limit:
                lines.append(f"  ... and {len(self.problems) - limit} more")
        else:
            lines.append("  ok")
        return "\n".join(lines)


class DatasetSpec:
    """Describes one dataset. Subclasses set the attributes and implement ``build`` and ``check``."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    splits: tuple[str, ...]
    train_split: str
    eval_split: str
    #: Split used to pick the best checkpoint; None where the papers do not select on a validation split.
    selection_split: str | None = None
    #: Largest crop (height, width) that makes sense; the suite validator rejects larger crops.
    max_crop: tuple[int, int] = (4096, 4096)
    needs_root: bool = True
    #: Where the README expects a copy, relative to the working directory (``data check`` without ``--root``).
    default_root: str | None = None
    ignore_index: int = IGNORE_INDEX

    def build(self, split: str, root: Path | None, **options: Any) -> Dataset:
        raise NotImplementedError

    def check(self, root: Path | None, **options: Any) -> CheckReport:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Dataset-specific options a suite may set (name -> default)."""
        return {}

    def __repr__(self) -> str:
        return f"<dataset {self.name}>"
