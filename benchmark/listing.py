"""``list`` and ``models``: what suites can name, and what each model costs."""

from __future__ import annotations

import inspect

from benchmark.cost import FLOPS_CONVENTION
from benchmark.models.describe import describe_registered
from benchmark.registry import DATASETS, METHODS, MODELS


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def print_listing(kind: str | None = None) -> None:
    if kind in (None, "datasets"):
        print("datasets:")
        for name, spec in DATASETS.items():
            root = "needs root" if spec.needs_root else "no files needed"
            print(f"  {name}: {spec.num_classes} classes, splits {'/'.join(spec.splits)} (train {spec.train_split}, "
                  f"eval {spec.eval_split}), {root}")
            if spec.options():
                print(f"      options: {spec.options()}")
    if kind in (None, "models"):
        print("models:")
        for name, builder in MODELS.items():
            options = {n: p.default for n, p in inspect.signature(builder).parameters.items()
                       if p.kind is p.KEYWORD_ONLY}
            print(f"  {name}: {_first_line(builder)}")
            if options:
                print(f"      options: {options}")
    if kind in (None, "methods"):
        print("methods:")
        for name, cls in METHODS.items():
            print(f"  {name}: {cls.summary()}")
            print(f"      paper: {cls.paper}")
            hyper = cls.hyperparameters()
            if hyper:
                print("      hyperparameters: " + ", ".join(f"{k}={v!r}" for k, v in hyper.items()))


#: Classes a model is described with when it states none of its own (the tiny smoke models): Cityscapes'.
DEFAULT_NUM_CLASSES = 19


def model_num_classes(name: str) -> int:
    """The class count a model is counted with by default: its own (``builder.num_classes``: 21 for the VOC
    models of pytorch-deeplab-xception), else :data:`DEFAULT_NUM_CLASSES`."""
    return getattr(MODELS.get(name), "num_classes", DEFAULT_NUM_CLASSES)


def print_models(names: list[str], size: tuple[int, int], num_classes: int | None = None) -> int:
    """Each model's parameters, GFLOPs and feature points; ``num_classes`` None: each model's own class count."""
    names = names or MODELS.names()
    for name in names:
        MODELS.get(name)  # every unknown name is refused before the first (slow) count
    print(f"input {size[0]}x{size[1]}; {FLOPS_CONVENTION}")
    for name in names:
        classes = num_classes if num_classes is not None else model_num_classes(name)
        info = describe_registered(name, classes, [size])
        print(f"\n{name} ({classes} classes): {info['params'] / 1e6:.2f}M params ({info['params_inference'] / 1e6:.2f}M "
              f"at inference), {next(iter(info['gflops'].values())):.2f} GFLOPs")
        for point, spec in info["feature_points"].items():
            print(f"  {point:<24} {spec['channels']:>5} channels  stride {spec['stride']:>2}  ({spec['capture']} of "
                  f"{spec['module'] or 'the model'})")
    return 0
