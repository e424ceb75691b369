"""Benchmark: headscope's capture against the plain forward pass and TransformerLens' cache route.

On the same prompts (repeated random tokens with BOS), each in a subprocess of its own so that its peak
memory is its own:
- hf_forward: `transformers`' forward (sdpa attention, no hooks): the plain forward pass;
- headscope_forward: our forward (fused attention, no hooks);
- headscope_capture: `headscope.capture` of every causal statistic for every head;
- tl_cache: TransformerLens' bridge `run_with_cache` of every `hook_pattern`, then the same statistics
  computed from the cached patterns (`statistics_from_patterns`, the same definitions, on the model's device).
Prints median time, peak memory above the loaded model, the ratios, and the largest difference between
the statistics of the capture and of the TransformerLens route; and how many times the capture halved its
batch after running out of memory (`oom_halvings`): if any, its time is that of a smaller batch.

  python scripts/bench_capture.py --device cpu --model smollm2-135m --batch 1 --seq 1024
  python scripts/bench_capture.py --device cuda --model random --dtype bfloat16 --batch 8 --seq 2048
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import threading
import time

import torch

from bench_report import save  # scripts/, beside this file

METHODS = ("hf_forward", "headscope_forward", "headscope_capture", "tl_cache")
# SmolLM2-135M's shape (NOTES.md), for seeded random weights where the real file cannot travel.
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
                     max_position_embeddings=8192, tie_word_embeddings=True)


def build_hf_model(args):
    import transformers

    dtype = getattr(torch, args.dtype)
    if args.model == "random":
        torch.manual_seed(0)
        config = transformers.LlamaConfig(**SMOLLM2_SHAPE, attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(config).to(dtype)
    else:
        from headscope.loading import registry

        path = registry.fetch(args.model, progress=False)
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                                  attn_implementation="sdpa")
    return model.to(args.device).eval()


def word_tokenizer(vocab_size: int):
    """A stand-in tokenizer of the right size: the bridge needs one, the benchmark feeds token ids."""
    from tokenizers import Tokenizer, models

    from headscope.model.tokenizer import Tokenizer as OurTokenizer

    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    return OurTokenizer(backend, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def make_dataset(args, vocab_size: int):
    from headscope.capture.datasets import repeated_random_tokens

    return repeated_random_tokens(args.batch, period=(args.seq - 1) // 2, vocab_size=vocab_size, seed=0,
                                  bos_token_id=1, low=100)


class PeakMemory:
    """Peak memory above the level at start: CUDA allocator statistics, or resident set size sampled on a CPU.

    On a CPU, memory freed by an earlier call stays with the allocator and would hide from the resident set,
    so measure the first call after `release_freed_memory`, and time the calls after it with no sampler: a
    sampling thread beside two OpenMP threads on two cores slows them several-fold.
    """

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self):
        release_freed_memory()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = max(self.peak, _rss()) - self.base


def release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def worker(args) -> dict:
    """Run one method in this process and return its figures."""
    from headscope.capture.engine import capture, statistics_from_patterns
    from headscope.capture.statistics import CAUSAL_STATISTICS
    from headscope.loading.load import load_model

    hf = build_hf_model(args)
    vocab = hf.config.vocab_size
    dataset = make_dataset(args, vocab)
    tokens = dataset.tokens.to(args.device)
    means = None
    if args.worker == "hf_forward":
        run = lambda: hf(tokens).logits  # noqa: E731
    elif args.worker in ("headscope_forward", "headscope_capture"):
        ours = load_model(hf, device=args.device, dtype=getattr(torch, args.dtype))
        del hf
        if args.worker == "headscope_forward":
            run = lambda: ours(tokens)  # noqa: E731
        else:
            run = lambda: capture(ours, dataset, CAUSAL_STATISTICS, batch_size=args.batch, progress=False)  # noqa: E731
    else:
        from headscope.loading.transformer_lens import boot_bridge

        bridge = boot_bridge(hf, word_tokenizer(vocab), name="smollm2-shape")
        n_layers = hf.config.num_hidden_layers

        def run():
            _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
            patterns = [cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(n_layers)]
            return statistics_from_patterns(patterns, dataset, CAUSAL_STATISTICS)

    times = []
    with torch.no_grad():
        try:
            with PeakMemory(args.device) as peak:
                result = run()  # also the warm-up
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = run()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        except torch.cuda.OutOfMemoryError:
            return {"method": args.worker, "error": "out of memory"}
    if args.worker in ("headscope_capture", "tl_cache"):
        means = {name: result.mean(name).tolist() for name in result.statistics}
    figures = {"method": args.worker, "ms": 1000 * statistics.median(times), "peak_mb": peak.bytes / 2**20,
               "means": means}
    if args.worker == "headscope_capture":
        figures["oom_halvings"] = result.meta["oom_halvings"]  # of the last timed run
    return figures


def run_method(args, method: str) -> dict:
    command = [sys.executable, __file__, "--worker", method] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "json")]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"method": method, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def largest_differences(a: dict, b: dict) -> dict[str, float]:
    """Per statistic, the largest absolute difference over heads (entropy in nats, distance in positions)."""
    return {name: max(abs(x - y) for row_a, row_b in zip(a[name], b[name]) for x, y in zip(row_a, row_b))
            for name in a}


def report(args, rows: dict) -> dict:
    print(f"device {args.device}, model {args.model}, {args.dtype}, batch {args.batch} x {args.seq} tokens, "
          f"median of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'method':<20}{'time ms':>12}{'peak MB':>12}")
    for method in METHODS:
        row = rows[method]
        if "error" in row:
            print(f"{method:<20}{row['error']}")
        else:
            halved = f"  batch halved {row['oom_halvings']}x after out of memory" if row.get("oom_halvings") else ""
            print(f"{method:<20}{row['ms']:>12.1f}{row['peak_mb']:>12.1f}{halved}")
    summary = {}
    if "oom_halvings" in rows["headscope_capture"]:
        summary["capture_oom_halvings"] = rows["headscope_capture"]["oom_halvings"]
    ok = lambda *ms: all("error" not in rows[m] for m in ms)  # noqa: E731
    if ok("headscope_capture", "hf_forward"):
        summary["capture_time_over_hf_forward"] = rows["headscope_capture"]["ms"] / rows["hf_forward"]["ms"]
    if ok("headscope_capture", "headscope_forward"):
        summary["capture_time_over_headscope_forward"] = rows["headscope_capture"]["ms"] / rows["headscope_forward"]["ms"]
    if ok("headscope_capture", "tl_cache"):
        summary["tl_time_over_capture"] = rows["tl_cache"]["ms"] / rows["headscope_capture"]["ms"]
        summary["tl_peak_over_capture_peak"] = rows["tl_cache"]["peak_mb"] / max(rows["headscope_capture"]["peak_mb"], 1e-9)
        differences = largest_differences(rows["headscope_capture"]["means"], rows["tl_cache"]["means"])
        summary |= {f"max_abs_difference_{name}": value for name, value in differences.items()}
    for key, value in summary.items():
        print(f"{key:<40}{value:.3g}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="random", help="random (SmolLM2-135M's shape, seeded) or smollm2-135m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=1024, help="tokens per prompt, BOS included")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    methods = args.methods.split(",")
    rows = {m: run_method(args, m) if m in methods else {"method": m, "error": "not run"} for m in METHODS}
    summary = report(args, rows)
    if args.json:
        figures = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "torch": torch.__version__,
                   "rows": [{k: v for k, v in r.items() if k != "means"} for r in rows.values()], "summary": summary}
        save(figures, args.json)


if __name__ == "__main__":
    main()
