"""The certificates' CUDA path, measured on a GPU, for each checkpoint given.

1. How far the float32 logits computed on the GPU stray from the network's float64 copy (run on the CPU),
   against the rounding allowance that every certificate subtracts (`allowance.logit_allowance` at x): with
   cuDNN as PyTorch sets it up by default, and inside `rounding.exact_arithmetic` (cuDNN off). The allowance
   is proved for IEEE float32 with every unit a dot product in any order; cuDNN may round float32
   convolutions to TF32 or convolve by Winograd or FFT, outside that model. A digit whose deviation exceeds
   its allowance is one on which the rounding model does not describe the arithmetic.
2. `measure.certify_split` on the GPU against the CPU, mask by mask, with the seconds each took.

Needs a CUDA device. One JSON record, with the machine, the GPU, torch and the command:

    python scripts/measure_cuda.py CKPT [CKPT ...] --data-dir ../shared/mnist --limit 2000 --json FILE
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import allowance  # noqa: E402
import measure  # noqa: E402
import rounding  # noqa: E402
from certificates import METHODS  # noqa: E402
from checkpoints import load_checkpoint  # noqa: E402
from lipschitz import Ball  # noqa: E402
from mnist_data import PIXEL_RANGE, Split, load_mnist  # noqa: E402
from models import LipschitzMLP, in_float64  # noqa: E402


@torch.no_grad()
def deviations(model: LipschitzMLP, split: Split, device: torch.device) -> dict[str, float | int]:
    """Digits whose float32 logits on `device` leave the allowance, with cuDNN as set up and with it off."""
    model64 = in_float64(model)
    x64 = split.images.double()
    with rounding.exact_arithmetic():
        exact = model64(x64)
        bound = allowance.logit_allowance(model64, x64, Ball("linf", 0.0, PIXEL_RANGE), torch.float32)
    on_device, images = copy.deepcopy(model).to(device), split.images.to(device)  # the caller's model stays put
    out: dict[str, float | int] = {}
    for name, context in (("cudnn_default", torch.backends.cudnn.flags(enabled=True, allow_tf32=True)),
                          ("exact_arithmetic", rounding.exact_arithmetic())):
        with torch.no_grad(), context:
            logits = on_device(images).double().cpu()
        error = (logits - exact).abs()
        out[f"{name}_digits_outside"] = int((error > bound).any(dim=1).sum())
        out[f"{name}_worst_error_over_allowance"] = float((error / bound).max())
    out["median_allowance"] = float(bound.median())
    return out


def certify_on(model: LipschitzMLP, split: Split, ball: Ball, methods: tuple[str, ...], device: torch.device
               ) -> tuple[dict[str, torch.Tensor], float]:
    """`measure.certify_split` on `device`, its masks back on the CPU, and the seconds it took."""
    model, split = copy.deepcopy(model).to(device), Split(split.images.to(device), split.labels.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    masks = measure.certify_split(model, split, ball, methods)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {name: mask.cpu() for name, mask in masks.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=2000, help="first test digits (default: 2000)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("measure_cuda.py: no CUDA device is available")
    device = torch.device("cuda")
    (test,) = load_mnist(args.data_dir, ("test",), allow_download=False)
    test = Split(test.images[: args.limit], test.labels[: args.limit])
    record: dict = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(device),
                    "torch": torch.__version__, "machine": platform.machine(), "digits": len(test), "nets": []}
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path)
        model, metrics = checkpoint.model.eval(), checkpoint.metrics
        ball = Ball(metrics.get("norm", "linf"), metrics.get("cert_magnitude", 0.1), PIXEL_RANGE)
        methods = tuple(m for m in METHODS if m != "pairwise" or ball.norm == "linf")
        entry: dict = {"checkpoint": str(path), "convs": list(model.config.convs), "norm": ball.norm,
                       "radius": ball.eps, "methods": list(methods), **deviations(model, test, device)}
        masks = {}
        for name in ("cpu", "cuda"):
            certify_on(model, test, ball, methods, torch.device(name))  # warm-up
            masks[name], entry[f"{name}_seconds"] = certify_on(model, test, ball, methods, torch.device(name))
        entry["certified_percent"] = {m: round(100 * float(masks["cpu"][m].float().mean()), 2) for m in methods}
        entry["masks_differing"] = {m: int((masks["cpu"][m] != masks["cuda"][m]).sum()) for m in masks["cpu"]}
        record["nets"].append(entry)
        print(json.dumps(entry), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
