#!/usr/bin/env python3
"""ResNet-152 on a GPU: the served throughput against the in-process limit, fp32 and fp16, batch sweep.

One command on a machine with a CUDA GPU (after `make install install-torch bench-tools`):

    python bench/gpu.py                      # fp32 + fp16, batches 1..64, 1/8/32/64 clients, ~5 min
    python bench/gpu.py --quick              # fp16 only, fewer points, ~2 min
    python bench/gpu.py --device cpu --quick # the same machinery on a CPU (a smoke test, slow model:
                                             # the CPU's batching default, 1 and 4 clients, 10 s points)

For each precision it measures
1. the in-process limit: forward pass + top-k on preprocessed tensors already on the host, at batch
   sizes 1, 2, 4, ..., 64 (images/s; the best batch size is the limit);
2. this runtime serving JPEG bytes (`scoring serve`, adaptive batching at the runtime's default for
   the device, 32 rows / 5 ms on a GPU, 4 rows on a CPU, unless --batch/--delay-ms say otherwise),
   driven by wrk (closed loop) at 1, 8, 32 and 64 connections (1 and 4 on a CPU), with the load
   generator's and the server's CPU use recorded; a point where no request finished is an error;
and writes bench/results/gpu.{json,md}: images/s, p50/p99 latency and served / in-process limit.
The model has random weights (speed does not depend on them) and is registered once into
bench/.work/registry like bench/run.py does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
import run  # noqa: E402
from loadgen import Call, closed_loop, find_tool, wrk_script  # noqa: E402


def gpu_limit(model_dir: str, sizes: list[int], seconds: float) -> dict[str, Any]:
    """In-process images/s at each batch size on the configured device (SCORING_DEVICE/HALF_PRECISION)."""
    import numpy as np
    import torch

    from scoring_runtime.flavours import load_scorer
    from scoring_runtime.flavours.torch_vision import ImageClassifier
    from scoring_runtime.settings import RuntimeSettings

    scorer = load_scorer(RuntimeSettings(model_dir=Path(model_dir), max_batch_size=max(sizes)))
    assert isinstance(scorer, ImageClassifier)
    scorer.warmup()
    out: dict[str, float] = {}
    for size in sizes:
        x = np.random.default_rng(1).normal(size=(size, *scorer.pre.shape)).astype(np.float32)
        scorer.infer(x, 5)  # cuDNN picks its kernels for this shape
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n == 0:
            scorer.infer(x, 5)  # returns host arrays: includes the copy in and out, as serving does
            n += size
        out[str(size)] = n / (time.perf_counter() - t0)
    device = str(scorer.device)
    name = torch.cuda.get_device_name(scorer.device) if scorer.device.type == "cuda" else "cpu"
    run.log(f"  in-process ({device} {name}, {scorer.dtype}): "
            + ", ".join(f"b{k}: {v:.0f}/s" for k, v in out.items()))
    return {"by_batch": out, "device": device, "device_name": name, "dtype": str(scorer.dtype)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (smoke test)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--arch", default="resnet152")
    p.add_argument("--batch", type=int, help="server max_batch_size (default: the runtime's for the device, "
                   "32 on a GPU, 4 on a CPU)")
    p.add_argument("--delay-ms", type=float, help="server max_batch_delay_ms (default: the runtime's for the device)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    wrk = find_tool("wrk")
    if wrk is None:
        raise SystemExit("bench/gpu.py: wrk not found; run `make bench-tools` (or apt-get install wrk)")
    precisions = ["fp16"] if args.quick else ["fp32", "fp16"]
    if args.device == "cpu":
        precisions = ["fp32"]
    sizes = [1, 8, 32] if args.quick else [1, 2, 4, 8, 16, 32, 64]
    clients = [1, 32] if args.quick else [1, 8, 32, 64]
    seconds = 3.0 if args.quick else 6.0
    if args.device == "cpu":  # ResNet-152 takes ~0.3 s an image on a few cores: a batch of 32 would outlast a point
        sizes, clients, seconds = [1, 4], [1, 4], 10.0 if args.quick else 20.0
    model_dir = run.WORK / "models" / run.IMG_NAME
    registry = run.WORK / "registry"
    marker = registry / f".{run.IMG_NAME}-{args.arch}"
    if not marker.exists():
        run.log(f"registering {args.arch} (random weights)")
        run.run_cli(sys.executable, str(run.REPO / "examples" / "image-classification" / "register.py"),
                    "--registry", str(registry), "--name", run.IMG_NAME, "--arch", args.arch)
        marker.touch()
    run.fetch(registry, run.IMG_NAME, model_dir)
    calls = [Call("/score", img, "image/jpeg") for img in run.test_images(8)]
    script = wrk_script(calls, run.WORK / "scripts" / "gpu.lua")
    out: dict[str, Any] = {"generated": datetime.now(UTC).isoformat(timespec="seconds"),
                           "command": " ".join(["python bench/gpu.py", *(argv or sys.argv[1:])]),
                           "machine": run.machine_info(args.device), "versions": run.versions(),
                           "server_batching": {"max_batch_size": args.batch or "the runtime's default for the device",
                                               "max_batch_delay_ms": "the runtime's default for the device"
                                               if args.delay_ms is None else args.delay_ms},
                           "precisions": {}}
    with run.bench_lock():
        for prec in precisions:
            env = {"SCORING_DEVICE": args.device, "SCORING_HALF_PRECISION": "1" if prec == "fp16" else "0"}
            limit = run.in_fresh_process("gpu:gpu_limit", None, env, model_dir=str(model_dir), sizes=sizes,
                                         seconds=seconds / 2)
            batching = {"SCORING_MAX_BATCH_SIZE": str(args.batch)} if args.batch else {}
            if args.delay_ms is not None:
                batching["SCORING_MAX_BATCH_DELAY_MS"] = str(args.delay_ms)
            srv = peers.start_ours(f"gpu-{prec}", model_dir, None, {
                **env, **batching, "SCORING_WORKERS": "1", "SCORING_MAX_QUEUE_ROWS": "1024"})
            rows: list[dict[str, Any]] = []
            try:
                srv.wait_ready(900)
                closed_loop(wrk, srv.url, script, target=prec, connections=min(8, max(clients)), duration_s=2,
                            timeout_s=60)
                for c in clients:
                    r = run.show(closed_loop(wrk, srv.url, script, target=f"{prec} served", connections=c,
                                             duration_s=seconds, timeout_s=60, server_pid=srv.pid))
                    if r.requests == 0:
                        raise SystemExit(f"bench/gpu.py: no request finished in {seconds:.0f} s at {c} clients "
                                         f"({prec} on {args.device}): a batch takes longer than the point; "
                                         "lower --batch or run without --quick")
                    rows.append(r.as_dict())
            finally:
                srv.stop()
            best = max(limit["by_batch"].values())
            for row in rows:
                row["of_limit"] = round(row["rows_per_s"] / best, 3)
            out["precisions"][prec] = {"limit": limit, "served": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    served_with = out["server_batching"]
    md = [f"# ResNet GPU benchmark ({out['generated']}, `{out['command']}`)", "",
          f"Server batching: max_batch_size {served_with['max_batch_size']}, max_batch_delay_ms "
          f"{served_with['max_batch_delay_ms']}.", ""]
    for prec, sec in out["precisions"].items():
        lim = sec["limit"]
        md += [f"## {prec} on {lim['device']} ({lim['device_name']})", "",
               "In-process images/s by batch size: " + ", ".join(f"{k}: {v:.0f}" for k, v in lim["by_batch"].items()),
               "", "| clients | images/s | p50 ms | p99 ms | served / limit | wrk CPU | server CPU |",
               "|---:|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {r['concurrency']} | {r['rows_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
               f"**{r['of_limit']:.2f}** | {100 * r['client_cpu']:.0f} % | {100 * r['server_cpu']:.0f} % |"
               for r in sec["served"]]
        md.append("")
    (args.out / "gpu.md").write_text("\n".join(md), encoding="utf-8")
    run.log(f"wrote {args.out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
