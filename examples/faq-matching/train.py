#!/usr/bin/env python3
"""Train the FAQ matcher on originals + labelled duplicates, report held-out accuracy, register it.

    python examples/faq-matching/train.py --registry /srv/models [--data DIR] [--name faq-matcher]

The duplicates of every original are split into train and test (the originals are never held
out: at scoring time every original is a candidate). The model is trained on the training
duplicates, evaluated on the held-out ones (top-1/top-3 accuracy, mean reciprocal rank), and that
model is registered with its metrics in model.json. The new version number goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scoring_runtime.flavours.faq_pipeline import build_pipeline
from scoring_runtime.flavours.sklearn_io import dump_skops
from scoring_runtime.registry import LocalFileRegistry, RegistryError, open_registry

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Original:
    id: int | str
    text: str
    answer: str


@dataclass(frozen=True)
class Duplicate:
    text: str
    original_id: int | str


class DataError(ValueError):
    """The dataset is malformed; the message names the file and line."""


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) from a .jsonl file or a .tsv file with a header row."""
    out = []
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as f:
            for n, rec in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
                out.append((n, dict(rec)))
        return out
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{n}: each line must be a JSON object")
            out.append((n, rec))
    return out


def _find(data_dir: Path, stem: str) -> Path:
    for ext in (".jsonl", ".tsv"):
        if (p := data_dir / f"{stem}{ext}").is_file():
            return p
    raise DataError(f"{data_dir} has no {stem}.jsonl (or {stem}.tsv)")


def _id(value: Any) -> int | str:
    """Ids are ints when they look like ints (TSV gives strings), else strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    s = str(value).strip()
    return int(s) if s.lstrip("-").isdigit() else s


def load_dataset(data_dir: Path) -> tuple[list[Original], list[Duplicate]]:
    """Read and validate originals (id, text, answer) and duplicates (text, original_id)."""
    originals: list[Original] = []
    path = _find(data_dir, "originals")
    for n, rec in _rows(path):
        missing = [k for k in ("id", "text", "answer") if not str(rec.get(k) or "").strip()]
        if missing:
            raise DataError(f"{path}:{n}: missing {', '.join(missing)}")
        originals.append(Original(_id(rec["id"]), str(rec["text"]).strip(), str(rec["answer"]).strip()))
    ids = [o.id for o in originals]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: id {dup!r} is used more than once")
    if len(originals) < 2:
        raise DataError(f"{path}: need at least 2 originals to rank")
    known = set(ids)
    duplicates: list[Duplicate] = []
    path = _find(data_dir, "duplicates")
    for n, rec in _rows(path):
        text, oid = str(rec.get("text") or "").strip(), rec.get("original_id")
        if not text or oid in (None, ""):
            raise DataError(f"{path}:{n}: each duplicate needs text and original_id")
        if _id(oid) not in known:
            raise DataError(f"{path}:{n}: original_id {oid!r} is not an id in the originals file")
        duplicates.append(Duplicate(text, _id(oid)))
    return originals, duplicates


def split(duplicates: list[Duplicate], test_fraction: float, seed: int) -> tuple[list[Duplicate], list[Duplicate]]:
    """Stratified by original: each original keeps some training duplicates and gives some to test."""
    rng = random.Random(seed)
    by_original: dict[int | str, list[Duplicate]] = {}
    for d in duplicates:
        by_original.setdefault(d.original_id, []).append(d)
    train, test = [], []
    for group in by_original.values():
        group = group[:]
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction) if len(group) > 1 else 0
        test += group[:n_test]
        train += group[n_test:]
    return train, test


Array = np.ndarray[Any, Any]


def pairs_for(questions: list[Duplicate], originals: list[Original]) -> tuple[Array, Array]:
    """Every (question, original, answer) row, labelled 1 where the question duplicates that original."""
    x = np.array([(q.text, o.text, o.answer) for q in questions for o in originals], dtype=object).reshape(-1, 3)
    y = np.array([int(q.original_id == o.id) for q in questions for o in originals])
    return x, y


def train(originals: list[Original], train_set: list[Duplicate], C: float = 1.0) -> Any:
    x, y = pairs_for(train_set, originals)
    return build_pipeline(C=C).fit(x, y)


def evaluate(pipeline: Any, originals: list[Original], test_set: list[Duplicate]) -> dict[str, float]:
    """Top-1 / top-3 accuracy and mean reciprocal rank of the true original, over held-out questions."""
    if not test_set:
        return {}
    x, _ = pairs_for(test_set, originals)
    scores = pipeline.predict_proba(x)[:, list(pipeline.classes_).index(1)].reshape(len(test_set), len(originals))
    truth = np.array([[o.id for o in originals].index(q.original_id) for q in test_set])
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.argmax(order == truth[:, None], axis=1) + 1
    return {
        "top1_accuracy": round(float(np.mean(rank == 1)), 4),
        "top3_accuracy": round(float(np.mean(rank <= 3)), 4),
        "mrr": round(float(np.mean(1.0 / rank)), 4),
    }


def write_model_dir(out: Path, pipeline: Any, originals: list[Original], metrics: dict[str, float],
                    description: str) -> None:
    """The directory `scoring register` takes: pipeline.skops, faq.json and a source model.json."""
    import sklearn

    out.mkdir(parents=True, exist_ok=True)
    trusted = dump_skops(pipeline, out / "pipeline.skops")
    (out / "faq.json").write_text(
        json.dumps([o.__dict__ for o in originals], ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    source = {
        "framework": "sklearn",
        "task": "faq-matching",
        "description": description,
        "flavour": {
            "kind": "sklearn-faq",
            "format": "skops",
            "file": "pipeline.skops",
            "faq": "faq.json",
            "trusted_types": trusted,
            "default_top_k": 3,
            "sklearn_version": sklearn.__version__,
        },
        "metrics": metrics,
    }
    (out / "model.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", required=True, help="registry root directory or file:// URI")
    ap.add_argument("--data", type=Path, default=HERE / "data", help="dir with originals.jsonl and duplicates.jsonl")
    ap.add_argument("--name", default="faq-matcher", help="model name to register")
    ap.add_argument("--test-fraction", type=float, default=0.34, help="share of each original's duplicates held out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--C", type=float, default=1.0, help="inverse regularisation strength of the classifier")
    ap.add_argument("--keep", type=Path, default=None, help="also keep the model directory here")
    args = ap.parse_args(argv)
    if not 0.0 <= args.test_fraction < 1.0:
        ap.error("--test-fraction must be in [0, 1)")
    try:
        originals, duplicates = load_dataset(args.data)
        registry = open_registry(args.registry)
        if not isinstance(registry, LocalFileRegistry):
            raise DataError(f"{args.registry}: train.py registers into a local file registry only")
        train_set, test_set = split(duplicates, args.test_fraction, args.seed)
        t0 = time.perf_counter()
        pipeline = train(originals, train_set, C=args.C)
        fit_s = time.perf_counter() - t0
        metrics = evaluate(pipeline, originals, test_set)
        metrics.update(n_originals=len(originals), n_train=len(train_set), n_test=len(test_set))
        print(
            f"trained on {len(train_set)} duplicates of {len(originals)} originals in {fit_s:.2f} s; "
            f"held-out ({len(test_set)}): " + ", ".join(f"{k}={v}" for k, v in metrics.items() if k[0] in "tm"),
            file=sys.stderr,
        )
        desc = f"FAQ matcher: {len(originals)} originals, trained on {len(train_set)} duplicates"
        with tempfile.TemporaryDirectory(prefix="faq-model-") as tmp:
            model_dir = args.keep or Path(tmp)
            write_model_dir(model_dir, pipeline, originals, metrics, desc)
            manifest = registry.register(args.name, model_dir)
    except (DataError, RegistryError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"registered {manifest.name} version {manifest.version} in {registry.uri}", file=sys.stderr)
    print(manifest.version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
