"""Benchmark: one capture (or ablation sweep) over fixed prompts with 1, 2, ... processes under torchrun.

Run without torchrun; the script launches itself once per process count with
`python -m torch.distributed.run --standalone --nproc-per-node N` (gloo on CPUs, NCCL on GPUs, one GPU
per process), and each launch times only the work (after loading and a warm-up, between barriers).
Prints seconds, speed-up over one process, and the largest relative difference of every head's
statistics (or ablation effect) from the one-process result.

  python scripts/bench_distributed.py --processes 1,2 --threads 1        # CPU: one core per process
  python scripts/bench_distributed.py --processes 1,2 --threads 2        # CPU: 2 threads each
  python scripts/bench_distributed.py --processes 1,2 --threads 1 --work sweep --prompts 4 --seq 64
  python scripts/bench_distributed.py --processes 1,2,4,8 --device cuda  # a multi-GPU node
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from bench_report import save  # scripts/, beside this file


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="smollm2-135m", help="a headscope model name or path")
    parser.add_argument("--work", default="capture", choices=["capture", "sweep"],
                        help="every statistic, or a zero-ablation sweep of every head (induction loss)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def worker(args: argparse.Namespace) -> None:
    """One process of a launch: load, warm up, time the capture, rank 0 prints the result as JSON."""
    import torch.distributed as dist

    from headscope import distributed
    from headscope.analysis.ablation import sweep
    from headscope.capture import capture, repeated_random_tokens
    from headscope.loading.load import load_model

    distributed.init_from_environment()
    model = load_model(args.model, device=distributed.local_device(args.device))
    data = repeated_random_tokens(args.prompts, args.seq // 2, vocab_size=model.cfg.d_vocab, seed=0,
                                  bos_token_id=1, low=100)
    def work(prompts):
        if args.work == "capture":
            result = capture(model, prompts, progress=False)
            return {name: result.mean(name).tolist() for name in result.statistics}
        return {"value": [[e.value] for e in sweep(model, prompts, "zero", "induction-loss", n_bootstrap=10).effects]}

    work(data.subset(list(range(dist.get_world_size()))))  # warm-up
    dist.barrier()
    start = time.perf_counter()
    means = work(data)
    if args.device == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - start
    if distributed.is_writer():
        print("RESULT " + json.dumps({"processes": dist.get_world_size(), "seconds": seconds, "means": means}))
    distributed.close()


def launch(args: argparse.Namespace, processes: int) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               __file__, "--worker", "--device", args.device, "--model", args.model, "--work", args.work,
               "--prompts", str(args.prompts), "--seq", str(args.seq)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{processes} processes failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    runs = [launch(args, int(n)) for n in args.processes.split(",")]
    base = runs[0]
    rows = []
    for run in runs:
        difference = max(
            abs(a - b) / max(abs(b), 1e-12)
            for name in base["means"]
            for row_a, row_b in zip(run["means"][name], base["means"][name])
            for a, b in zip(row_a, row_b) if b == b)  # NaN (nothing counted) is skipped
        rows.append({"processes": run["processes"], "seconds": run["seconds"],
                     "speedup": base["seconds"] / run["seconds"],
                     "max_relative_difference": difference})
    figures = {"command": "python scripts/bench_distributed.py " + " ".join(
                   f"--{k} {v}" for k, v in vars(args).items() if v not in (None, False) and k not in ("json", "worker")),
               "work": args.work, "model": args.model, "device": args.device, "prompts": args.prompts,
               "tokens": args.seq + 1,
               "threads_per_process": args.threads, "torch": torch.__version__, "runs": rows}
    print(f"{'processes':>9} {'seconds':>8} {'speed-up':>8} {'max rel diff':>12}")
    for row in rows:
        print(f"{row['processes']:>9} {row['seconds']:>8.2f} {row['speedup']:>7.2f}x {row['max_relative_difference']:>12.2e}")
    save(figures, args.json)


if __name__ == "__main__":
    main()
