#!/usr/bin/env python3
"""Train the FAQ matcher on originals + labelled rephrasings, report cross-validated accuracy, register it.

    python examples/faq-matching/train.py --registry /srv/models [--data DIR] [--name faq-matcher] [--folds 5]

Reports k-fold cross-validated top-1 / top-3 / MRR of the model and of two baselines on the same
folds (word TF-IDF vs the original question; character n-gram TF-IDF vs the original's profile),
then fits the final model on ALL the data given and registers that, with the metrics, the chosen
reranker and the no-match threshold in model.json. The new version number goes to stdout; the
report goes to stderr. See docs/faq-matching.md and `scoring_runtime.flavours.faq_training`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scoring_runtime.flavours.faq_training import FAQData, Report, fit_matcher
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
        missing = [k for k in ("id", "text", "answer") if not str(rec.get(k, "")).strip() or rec.get(k) is None]
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


Array = np.ndarray[Any, Any]


def as_training_data(originals: list[Original], duplicates: list[Duplicate]) -> FAQData:
    """The arrays training needs: originals in file order, each rephrasing's original as an index."""
    position = {o.id: i for i, o in enumerate(originals)}
    return FAQData(texts=[o.text for o in originals], answers=[o.answer for o in originals],
                   questions=[d.text for d in duplicates],
                   owner=np.array([position[d.original_id] for d in duplicates], dtype=np.int64))


def train(originals: list[Original], duplicates: list[Duplicate], folds: int = 5, seed: int = 7,
          log: Any = None) -> tuple[Any, Report]:
    """Cross-validate, then fit the final model on all the data: (model, report)."""
    return fit_matcher(as_training_data(originals, duplicates), folds=folds, seed=seed,
                       log=log or (lambda _m: None))


def write_model_dir(out: Path, model: Any, originals: list[Original], report: Report, description: str) -> None:
    """The directory `scoring register` takes: pipeline.skops, faq.json and a source model.json."""
    import sklearn

    out.mkdir(parents=True, exist_ok=True)
    # Mostly sparse arrays of hashed features: deflate shrinks small models (their fixed-size IDF vectors
    # compress ~100x) but barely shrinks big ones while it costs them seconds at every load.
    trusted = dump_skops(model, out / "pipeline.skops", compress=len(originals) <= 2000)
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
            "reranker": report.final_config or "none (unsupervised character-profile cosine)",
            "calibrated": report.calibrated,
            "no_match_threshold": None if report.threshold is None else round(report.threshold, 4),
        },
        "metrics": report.flat_metrics(),
    }
    (out / "model.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", required=True, help="registry root directory or file:// URI")
    ap.add_argument("--data", type=Path, default=HERE / "data", help="dir with originals.jsonl and duplicates.jsonl")
    ap.add_argument("--name", default="faq-matcher", help="model name to register")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds (fewer when the data is small)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the fold assignment and subsampling")
    ap.add_argument("--keep", type=Path, default=None, help="also keep the model directory here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print progress per fold")
    args = ap.parse_args(argv)
    if args.folds < 2:
        ap.error("--folds must be at least 2")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        originals, duplicates = load_dataset(args.data)
        registry = open_registry(args.registry)
        if not isinstance(registry, LocalFileRegistry):
            raise DataError(f"{args.registry}: train.py registers into a local file registry only")
        model, report = train(originals, duplicates, folds=args.folds, seed=args.seed,
                              log=say if args.verbose else None)
        for line in report.lines():
            say(line)
        say(f"final model fitted on all {len(duplicates)} rephrasings of {len(originals)} originals")
        desc = f"FAQ matcher: {len(originals)} originals, trained on {len(duplicates)} rephrasings"
        with tempfile.TemporaryDirectory(prefix="faq-model-") as tmp:
            model_dir = args.keep or Path(tmp)
            write_model_dir(model_dir, model, originals, report, desc)
            manifest = registry.register(args.name, model_dir)
    except (DataError, RegistryError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"registered {manifest.name} version {manifest.version} in {registry.uri}", file=sys.stderr)
    print(manifest.version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
