"""Parameters and fvcore GFLOPs of every paper model in the zoo; prints the markdown table of docs/models.md.

Run once on CPU (random init, nothing downloaded): ``python benchmarks/model_costs.py``. fvcore counts one
multiply-add as one FLOP; eval mode, batch 1, so the training-only auxiliary head is not in the FLOPs (it is in
"params", as the papers count it, and left out of "params (inference)").
"""

from __future__ import annotations

import argparse

from benchmark.models.describe import describe_registered
from benchmark.registry import MODELS

ZOO_MODULES = ("benchmark.models.zoo_xception", "benchmark.models.zoo_cirkd")
SIZES = ((512, 1024), (512, 512))
# name -> (classes the paper used, paper's parameter count (M) and source, or why there is none)
PAPER = {
    "deeplabv3plus_r101": (21, "59.3 (AttnFD Tab. 1, VOC)"),
    "deeplabv3plus_r18": (21, "16.6 (AttnFD Tab. 1, VOC)"),
    "deeplabv3plus_mbv2": (21, "5.9 (AttnFD Tab. 1, VOC)"),
    "deeplabv3_r101": (19, "61.1 (CIRKD Tab. 1, Cityscapes)"),
    "deeplabv3_r18": (19, "13.6 (CIRKD Tab. 1, Cityscapes)"),
    "deeplabv3_mbv2": (19, "3.2 (CIRKD Tab. 1, Cityscapes)"),
    "pspnet_r18": (19, "12.9 (CIRKD Tab. 1, Cityscapes)"),
    "pspnet_r101": (19, "not stated"),
    "pspnet_effb0": (19, "not stated (LGAD)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    names = [n for n, b in MODELS.items() if b.__module__ in ZOO_MODULES and n in PAPER]  # pspnet_b0: alias
    header = ["model", "classes", "OS", "params (M)", "params inference (M)", "paper params (M)"]
    header += [f"GFLOPs {h}x{w}" for h, w in SIZES]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name in names:
        classes, paper = PAPER[name]
        d = describe_registered(name, classes, SIZES)
        output_stride = d["feature_points"]["encoder"]["stride"]
        row = [f"`{name}`", str(classes), str(output_stride), f"{d['params'] / 1e6:.2f}",
               f"{d['params_inference'] / 1e6:.2f}", paper]  # fmt: skip
        row += [f"{d['gflops'][f'{h}x{w}']:.1f}" for h, w in SIZES]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
