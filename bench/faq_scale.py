#!/usr/bin/env python3
"""How the FAQ matcher scales: training time and peak memory, model load time, per-question latency.

    flock /tmp/bench.lock python bench/faq_scale.py [--sizes 100,1000,10000] [--per 10] [--out bench/results]

For each size, a synthetic FAQ of N originals with `--per` labelled rephrasings each (so 10,000
originals x 10 = 100,000 questions) is generated, then:

- **train** (a child process): `examples/faq-matching/train.py`'s training (5-fold CV report, then the
  final fit on all data) and writing the model directory (skops). Time, and the child's peak RSS
  (`ru_maxrss`, which includes the Python interpreter and libraries, ~150 MB).
- **serve** (another child): imports first (not counted), then `load_scorer` on the model directory
  (skops load with the allow-list + deriving the serving matrices): the model load time; then
  one question at a time through the flavour's `predict` + `render_score` (what a request costs
  besides HTTP), over unseen paraphrases: median and p99 latency. Peak RSS of that child.

Synthetic text: a Zipf-distributed vocabulary of pseudo-words; each original is about a few topic
words, its rephrasings mix some of them with other words, and the answers are ~80 words long. It
exercises sizes and sparsity, not accuracy (the accuracy figures it prints are for this toy data).
Results go to `OUT/faq_scale.json` and `OUT/faq_scale.md`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def synthetic(n: int, per: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, int]]]:
    """(originals, duplicates, unseen paraphrases) of a synthetic FAQ with n originals."""
    rng = np.random.default_rng(seed)
    vocab_size = max(5000, 20 * n)
    vocab = np.array([f"{_syllables(i)}" for i in range(vocab_size)], dtype=object)
    cdf = np.cumsum(1.0 / np.arange(1, vocab_size + 1))
    cdf /= cdf[-1]
    common = ["how", "do", "i", "can", "my", "the", "a", "to", "is", "what", "why", "does", "with", "for", "in"]

    def words(k: int) -> list[str]:
        return list(vocab[np.minimum(np.searchsorted(cdf, rng.random(k)), vocab_size - 1)])  # Zipf

    originals, duplicates, unseen = [], [], []
    for o in range(n):
        topic = list(vocab[rng.choice(vocab_size, 5, replace=False)])
        text = " ".join([*rng.choice(common, 3), *topic[:3], *words(2)]) + "?"
        answer = " ".join([*topic, *words(75)]) + "."
        originals.append({"id": o, "text": text, "answer": answer})
        for j in range(per + 1):
            q = [*rng.choice(topic, 2, replace=False), *words(int(rng.integers(1, 4))), *rng.choice(common, 3)]
            rng.shuffle(q)
            if j < per:
                duplicates.append({"text": " ".join(q), "original_id": o})
            else:
                unseen.append((" ".join(q), o))
    return originals, duplicates, unseen


def _syllables(i: int) -> str:
    parts = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "dor", "fen", "gal", "hum", "jin"]
    out = []
    while True:
        out.append(parts[i % 16])
        i //= 16
        if i == 0:
            return "".join(out)


def _train_module() -> Any:
    spec = importlib.util.spec_from_file_location("faq_train", REPO / "examples" / "faq-matching" / "train.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["faq_train"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_train(data_file: Path, model_dir: Path) -> dict[str, Any]:
    import skops.io  # noqa: F401 - (it imports torch when installed: ~600 MB of the peak below)

    t = _train_module()
    imports_mb = _rss_mb()
    doc = json.loads(data_file.read_text())
    originals = [t.Original(o["id"], o["text"], o["answer"]) for o in doc["originals"]]
    duplicates = [t.Duplicate(d["text"], d["original_id"]) for d in doc["duplicates"]]
    c0, t0 = time.process_time(), time.perf_counter()
    model, report = t.train(originals, duplicates)
    fit_s = time.perf_counter() - t0
    t.write_model_dir(model_dir, model, originals, report, "scale benchmark")
    total_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    size_mb = (model_dir / "pipeline.skops").stat().st_size / 2**20
    return {"train_s": round(total_s, 2), "train_cpu_s": round(cpu_s, 2), "fit_s": round(fit_s, 2),
            "report": report.lines(), "rss_after_imports_mb": imports_mb,
            "metrics": report.flat_metrics(), "model_mb": round(size_mb, 1)}


def child_serve(model_dir: Path, questions_file: Path) -> dict[str, Any]:
    import orjson

    from scoring_runtime.flavours import load_scorer
    from scoring_runtime.manifest import ModelManifest
    from scoring_runtime.settings import RuntimeSettings

    # load_scorer needs a registered manifest (name, version); the model dir has the source one
    source = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(ModelManifest(name="faq-scale", version=1, **source).to_json())
    import skops.io  # noqa: F401 - imports are not model load time

    imports_mb = _rss_mb()

    c0, t0 = time.process_time(), time.perf_counter()
    scorer = load_scorer(RuntimeSettings(model_dir=model_dir))
    load_s, load_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    questions = [(q, o) for q, o in json.loads(questions_file.read_text())]
    jobs = [scorer.parse_score(orjson.dumps({"question": q, "top_k": 3, "min_score": 0}), "application/json")
            for q, _ in questions]
    for job in jobs[:20]:
        scorer.render_score(scorer.predict([job])[0], job)  # warm-up
    lat, cpu, hits = [], [], 0
    for job, (_, o) in zip(jobs, questions, strict=True):
        c1, t1 = time.process_time(), time.perf_counter()
        out = scorer.render_score(scorer.predict([job])[0], job)
        lat.append(time.perf_counter() - t1)
        cpu.append(time.process_time() - c1)
        hits += out["matches"][0]["id"] == o
    lat_ms = sorted(x * 1000 for x in lat)
    cpu_ms = sorted(x * 1000 for x in cpu)
    p99 = min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))
    return {"load_s": round(load_s, 3), "load_cpu_s": round(load_cpu_s, 3), "rss_after_imports_mb": imports_mb,
            "latency_cpu_ms_p99": round(cpu_ms[p99], 3),
            "latency_ms_median": round(statistics.median(lat_ms), 3),
            "latency_cpu_ms_median": round(statistics.median(cpu) * 1000, 3),
            "latency_ms_p99": round(lat_ms[p99], 3),
            "latency_questions": len(lat_ms), "unseen_top1": round(hits / len(questions), 4)}


def run_child(mode: str, *args: str) -> dict[str, Any]:
    code = ("import json, resource, sys; sys.path.insert(0, sys.argv[1]); import faq_scale as b; "
            "out = getattr(b, 'child_' + sys.argv[2])(*map(b.Path, sys.argv[3:])); "
            "out['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1); "
            "print(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", code, str(HERE), mode, *args], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="numbers of originals, comma-separated")
    ap.add_argument("--per", type=int, default=10, help="labelled rephrasings per original")
    ap.add_argument("--latency-questions", type=int, default=500, help="unseen questions timed one by one")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="faq-scale-") as tmp:
            work = Path(tmp)
            originals, duplicates, unseen = synthetic(n, args.per, args.seed)
            (work / "data.json").write_text(json.dumps({"originals": originals, "duplicates": duplicates}))
            rng = np.random.default_rng(args.seed + 1)
            pick = rng.choice(len(unseen), min(args.latency_questions, len(unseen)), replace=False)
            (work / "questions.json").write_text(json.dumps([unseen[i] for i in pick]))
            print(f"== {n} originals, {len(duplicates)} questions: training", file=sys.stderr, flush=True)
            train = run_child("train", str(work / "data.json"), str(work / "model"))
            for line in train["report"]:
                print("   " + line, file=sys.stderr)
            print(f"   trained in {train['train_s']} s, peak {train['peak_rss_mb']} MB; serving", file=sys.stderr,
                  flush=True)
            serve = run_child("serve", str(work / "model"), str(work / "questions.json"))
            print(f"   load {serve['load_s']} s, latency median {serve['latency_ms_median']} ms, p99 "
                  f"{serve['latency_ms_p99']} ms, peak {serve['peak_rss_mb']} MB", file=sys.stderr, flush=True)
            rows.append({"originals": n, "questions": len(duplicates), "train": train, "serve": serve})
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": __import__("os").cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "note": "2-core VM shared with other work while measuring"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faq_scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (args.out / "faq_scale.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = ["| originals | questions | training wall (CPU) | training peak RSS | model file | load wall (CPU) | "
           "latency median wall (CPU) | latency p99 wall (CPU) | serving peak RSS | CV top-1 model / char profile |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, s, m = r["train"], r["serve"], r["train"]["metrics"]
        out.append(f"| {r['originals']:,} | {r['questions']:,} | {t['train_s']:.1f} s ({t['train_cpu_s']:.1f} s) | "
                   f"{t['peak_rss_mb']:.0f} MB | {t['model_mb']} MB | {s['load_s']:.2f} s ({s['load_cpu_s']:.2f} s) | "
                   f"{s['latency_ms_median']:.2f} ms ({s['latency_cpu_ms_median']:.2f} ms) | "
                   f"{s['latency_ms_p99']:.1f} ms ({s['latency_cpu_ms_p99']:.1f} ms) | {s['peak_rss_mb']:.0f} MB | "
                   f"{m.get('cv_top1_model', 0):.3f} / "
                   f"{m.get('cv_top1_char_profile', 0):.3f} |")
    out.append("")
    out.append(f"Python {meta['python']}, {meta['cpus']} CPUs, {meta['when']}; {meta['note']} (wall times include "
               "waiting for a CPU; the CPU times in brackets do not). Training: 5-fold CV report + final fit + "
               "writing the model. Load: skops load + deriving the serving matrices, imports excluded. Latency: one "
               "question per call through the flavour's predict + render_score (top 3), in-process, no HTTP. Peak RSS "
               f"includes the imports (~{rows[0]['train']['rss_after_imports_mb']:.0f} MB after importing skops, which "
               "pulls in torch when it is installed, as here)." if rows else "")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
