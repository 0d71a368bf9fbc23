#!/usr/bin/env python3
"""Register an ImageNet classifier (ResNet-152 by default) as the `image-classifier` model.

    python examples/image-classification/register.py --registry /tmp/registry
    python examples/image-classification/register.py --registry /tmp/registry --weights resnet152.pth

With `--weights FILE` (a state_dict, e.g. torchvision's resnet152-*.pth) the model predicts real
ImageNet classes. Without it, the weights are initialised randomly (seeded, so every run is the
same model): everything works end to end, but the predictions are meaningless. The 1,000 class
names come from torchvision itself (no download).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torchvision

from scoring_runtime.flavours.torch_model import FORMATS, load_state_dict
from scoring_runtime.imaging import Preprocess
from scoring_runtime.registry.local import LocalFileRegistry

RANDOM_NOTE = "random-init (seed {seed}): predictions are meaningless"
FILES = {"state_dict": "model.pt", "torchscript": "model.torchscript.pt", "export": "model.pt2"}


def imagenet_labels(arch: str) -> list[str]:
    """The ImageNet-1K class names torchvision ships with the architecture's weight enum (offline)."""
    try:
        weights_enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        weights_enum = torchvision.models.ResNet152_Weights
    categories: list[str] = next(iter(weights_enum)).meta["categories"]
    return list(categories)


def build_model(arch: str, weights: Path | None, seed: int) -> torch.nn.Module:
    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        sys.exit(f"error: unknown --arch {arch!r}; torchvision classification models: {', '.join(sorted(known))}")
    torch.manual_seed(seed)  # deterministic random init when there are no weights
    model: torch.nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=1000)
    if weights is not None:
        try:
            model.load_state_dict(load_state_dict(weights), strict=True)
        except Exception as e:
            sys.exit(f"error: {weights} does not fit {arch}: {e}")
    return model.eval()


def save(model: torch.nn.Module, fmt: str, path: Path, crop: int) -> None:
    if fmt == "state_dict":
        torch.save(model.state_dict(), path)
    elif fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still works
            torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, crop, crop)), str(path))
    else:
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (torch.zeros(2, 3, crop, crop),), dynamic_shapes=({0: batch},))
        torch.export.save(program, path)


def write_model_dir(args: argparse.Namespace, out: Path) -> dict[str, object]:
    pre = Preprocess(resize=args.resize, crop=args.crop)
    model = build_model(args.arch, args.weights, args.seed)
    save(model, args.format, out / FILES[args.format], pre.crop)
    (out / "labels.json").write_text(json.dumps(imagenet_labels(args.arch), indent=0) + "\n", encoding="utf-8")
    flavour: dict[str, object] = {
        "kind": "torch-image-classification",
        "format": args.format,
        "file": FILES[args.format],
        "arch": args.arch,
        "labels": "labels.json",
        "preprocess": pre.to_flavour(),
        "top_k": args.top_k,
        "weights": f"state_dict {args.weights.name}" if args.weights else RANDOM_NOTE.format(seed=args.seed),
    }
    source = {
        "framework": "torch",
        "task": "image-classification",
        "description": f"{args.arch} ImageNet-1K classifier ({args.format})",
        "flavour": flavour,
    }
    (out / "model.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return flavour


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", required=True, help="local registry root directory")
    p.add_argument("--name", default="image-classifier", help="model name (default: image-classifier)")
    p.add_argument("--arch", default="resnet152", help="torchvision architecture (default: resnet152)")
    p.add_argument("--weights", type=Path, default=None,
                   help="state_dict file for --arch; without it the weights are random (seeded)")
    p.add_argument("--format", choices=FORMATS, default="state_dict",
                   help="stored format (default: state_dict, loaded safely with weights_only=True)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--resize", type=int, default=256, help="shorter side before the crop (default 256)")
    p.add_argument("--crop", type=int, default=224, help="centre crop size (default 224)")
    p.add_argument("--top-k", type=int, default=5, help="default number of classes returned (default 5)")
    args = p.parse_args(argv)
    if args.weights is not None and not args.weights.is_file():
        p.error(f"--weights {args.weights}: no such file")
    if not args.weights:
        print(
            "!" * 78 + "\n"
            f"!! NOTE: no --weights given: {args.arch} gets RANDOM weights (seed {args.seed}).\n"
            "!! The service works end to end, but its predictions are MEANINGLESS.\n"
            "!! For real predictions pass --weights FILE (a state_dict for this architecture).\n" + "!" * 78,
            file=sys.stderr,
        )
    registry = LocalFileRegistry(args.registry)
    with tempfile.TemporaryDirectory(prefix="image-classifier-") as tmp:
        write_model_dir(args, Path(tmp))
        manifest = registry.register(args.name, Path(tmp))
    print(f"registered {manifest.name} version {manifest.version} ({args.arch}, {args.format}) in {registry.uri}",
          file=sys.stderr)
    print(manifest.version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
