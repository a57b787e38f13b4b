"""``eval``: one checkpoint scored under a suite's dataset and evaluation protocol, recorded like a run's scores.

Before distilling from a downloaded teacher (ours, or an authors' release converted on load: ``--format cirkd``
or ``deeplab_xception``, see :mod:`benchmark.convert`) a user checks that it scores what its authors say, under
exactly the preprocessing, evaluation size, split and absent-class convention the suite's runs are scored with:
the same :func:`benchmark.engine.train.evaluate` (one confusion matrix over the whole split), the same record
fields (``final`` with mIoU, pixel accuracy and per-class IoU as fractions, ``cost``, ``environment``).

The record goes to ``results/<suite>/evals/<key>/metrics.json``, a folder no run or teacher uses, written
atomically; the key hashes what changes the numbers (the checkpoint's content and format, the model and its
options, the dataset settings, the split). A record is never overwritten: the same checkpoint under the same
protocol is the same evaluation, so it is shown again instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmark.convert import load_weights
from benchmark.cost import FLOPS_CONVENTION, count_flops
from benchmark.data.base import DatasetError
from benchmark.data.transforms import EvalTransform
from benchmark.engine import distributed
from benchmark.engine.checkpoint import CheckpointError
from benchmark.engine.loader import eval_loader, worker_count
from benchmark.engine.train import evaluate, resolved_precision, use_channels_last
from benchmark.models.base import count_parameters
from benchmark.preflight import without_weights
from benchmark.registry import DATASETS, MODELS
from benchmark.store import METRICS, SCHEMA_VERSION, ResultStore, atomic_write_json, read_json
from benchmark.suite import (
    Suite,
    SuiteError,
    SuiteFile,
    config_key,
    dataset_key_fields,
    file_digest,
    normalization_problem,
)

EVALS = "evals"


def evaluation_model(suite: Suite, name: str | None) -> tuple[str, dict[str, Any]]:
    """(model, options) to evaluate: ``name`` with the options the suite gives it (a teacher's or a student's),
    or the suite's only teacher when no name is given."""
    entries = suite.model_refs()
    if name is None:
        if len(suite.teachers) != 1:
            listed = ", ".join(f"{where} {ref.model}" for where, ref in entries)
            raise SuiteError(f"give --model NAME: the suite has {len(suite.teachers)} teachers ({listed})")
        name = next(iter(suite.teachers.values())).model
    MODELS.get(name)  # an unknown name is refused with the closest known ones
    options = next((dict(ref.options) for _, ref in entries if ref.model == name), {})
    return name, without_weights(options)  # every weight comes from the checkpoint


def evaluate_checkpoint(suite_file: SuiteFile, checkpoint: str | Path, checkpoint_format: str = "ours",
                        model_name: str | None = None, split: str | None = None,
                        results_root: str | Path = "results", echo=print) -> tuple[dict[str, Any], Path, bool]:
    """Score ``checkpoint`` on the suite's evaluation split (or ``split``); ``(record, its path, new)``, ``new``
    False where the same evaluation was recorded before (its record is returned, nothing is computed)."""
    if len(suite_file.parts) != 1:
        raise SuiteError(f"{suite_file.path}: holds {len(suite_file.parts)} tables "
                         f"({', '.join(p.name for p in suite_file.parts)}); evaluate under one of them: give its own "
                         "suite file")
    suite = suite_file.parts[0]
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise SuiteError(f"--checkpoint {path}: no such file")
    problem = normalization_problem("--format", checkpoint_format, suite.dataset.normalization)
    if problem:
        raise SuiteError(f"{suite_file.path}: {problem}")
    name, options = evaluation_model(suite, model_name)
    dataset = suite.dataset.resolved()
    spec = DATASETS.get(dataset["name"])
    split = split or dataset["eval_split"]
    root = Path(dataset["root"]).expanduser().resolve() if dataset["root"] else None
    try:
        images = spec.build(split, root, **dataset["options"])
    except DatasetError as error:
        raise SuiteError(f"{suite_file.path}: dataset: {error}") from None
    config = {"dataset": dataset_key_fields(dataset), "split": split, "model": name,
              "model_options": options, "checkpoint_sha256": file_digest(str(path)),
              "checkpoint_format": checkpoint_format}
    key = "eval-" + config_key(config)
    record_path = ResultStore(Path(results_root), suite_file.name).root.resolve() / EVALS / key / METRICS
    if record_path.is_file():
        return read_json(record_path), record_path, False

    device = distributed.setup()
    model = MODELS.get(name)(spec.num_classes, **options)
    try:
        loaded = load_weights(model, path, checkpoint_format, f"model {name}")
    except CheckpointError as error:
        raise SuiteError(str(error)) from None
    runtime = suite.runtime.model_dump()
    model = model.to(device)
    if use_channels_last(device, runtime):
        model = model.to(memory_format=torch.channels_last)
    loader = eval_loader(images, EvalTransform.from_config(dataset), suite.schedule.eval_batch_size,
                         worker_count(runtime["num_workers"], device.type), device.type == "cuda", distributed.rank(),
                         distributed.world_size())
    echo(f"evaluating {name} from {path} on {dataset['name']} {split} ({len(images)} images)")
    started = time.perf_counter()
    scores = evaluate(model, loader, spec.num_classes, spec.ignore_index, device, runtime,
                      dataset["absent_class_policy"], description=f"eval {split}")
    wall = time.perf_counter() - started
    from benchmark.runner import _cost_input_size, environment

    size = _cost_input_size(suite)
    record = {
        "schema": SCHEMA_VERSION, "role": "eval", "eval_key": key, "status": "done", "suite": suite.name,
        "table": suite.title, "dataset": dataset["name"], "model": name, "checkpoint": loaded,
        "class_names": list(spec.class_names),
        "final": {"split": split, "iteration": None, **scores},
        "precision": {"eval": resolved_precision(device, runtime)},
        "cost": {"params": count_parameters(model), "flops": count_flops(model, size), "flops_input_size": list(size),
                 "flops_convention": FLOPS_CONVENTION},
        "timing": {"wall_seconds": wall, "device": str(device), "world_size": distributed.world_size()},
        "environment": environment(), "config": config,
    }
    if distributed.is_main():
        atomic_write_json(record_path, record)
    return record, record_path, True
