"""SmolLM2-135M's head roles across context lengths, up to its 8192-token context, with time and peak memory.

    python experiments/head_roles/smollm2_lengths.py                      # 128, 512, 2048, 8190 tokens
    python experiments/head_roles/smollm2_lengths.py --lengths 128,1024 --num-prompts 4

Each length is classified in a process of its own (`classify_heads` on repeated random tokens, two periods
of length / 2; 8190 is the longest even length whose
prompt, BOS included, fits SmolLM2's 8192 positions), so its peak resident memory (the process' maximum, weights included) is that length's
alone; the time is `classify_heads`' own, without loading the model. A length already done (its
`lengths/len-N.json` exists) is read back, so an interrupted run continues. Then the lengths are put
together as one `LengthSweep` (the shape `headscope classify --seq-len a,b,... --json` writes):
`smollm2_lengths.json`, `.csv`, the figure (`smollm2_lengths.{svg,pdf,png}`) and `smollm2_lengths.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "lengths"
MODEL = "smollm2-135m"
FOLLOWED = ("induction", "induction_norm", "previous_token", "attention_sink", "attention_sink_gu", "dormant")


def one_length(n: int, num_prompts: int, seed: int, path: Path) -> None:
    """Classify at `n` tokens in this process and write the table, the time and the peak memory."""
    import torch

    from headscope import load_model
    from headscope.analysis import classify_heads
    from headscope.capture.datasets import dataset_for_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    began = time.perf_counter()
    model = load_model(MODEL)
    loaded = time.perf_counter() - began
    data = dataset_for_model(model, "repeated-random", seq_len=n, num_prompts=num_prompts, seed=seed)
    began = time.perf_counter()
    table = classify_heads(model, data, seed=seed, progress=True)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    record = {"seq_len": n, "num_prompts": num_prompts, "seconds": round(seconds, 1), "load_seconds": round(loaded, 1),
              "peak_rss_bytes": peak, "threads": torch.get_num_threads(), "table": json.loads(table.to_json(None))}
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(record))
    partial.replace(path)  # a length is done only once its whole record is written


def sweep(lengths: list[int], num_prompts: int, seed: int) -> None:
    OUT.mkdir(exist_ok=True)
    for n in lengths:
        path = OUT / f"len-{n}.json"
        if path.exists():
            print(f"{n} tokens: done already ({path.name})", flush=True)
            continue
        print(f"{n} tokens: classifying {num_prompts} prompts", flush=True)
        subprocess.run([sys.executable, __file__, "--one", str(n), "--num-prompts", str(num_prompts),
                        "--seed", str(seed)], check=True)
    write_results(lengths)


def write_results(lengths: list[int]) -> None:
    from headscope.analysis.lengths import LengthSweep
    from headscope.analysis.role_table import RoleTable
    from headscope.viz.lengths import length_figure
    from headscope.viz.render import write_figure

    records = [json.loads((OUT / f"len-{n}.json").read_text()) for n in lengths]
    tables = tuple(RoleTable.from_json(json.dumps(r["table"])) for r in records)
    per_length = [{"seq_len": r["seq_len"], "num_prompts": r["num_prompts"], "seconds": r["seconds"],
                   "peak_memory_bytes": r["peak_rss_bytes"],
                   "memory": "process peak resident memory (ru_maxrss), weights included"} for r in records]
    meta = {"dataset": "repeated-random", "num_prompts": records[0]["num_prompts"],
            "threshold": tables[0].meta["thresholds"].get("induction"), "per_length": per_length,
            "load_seconds": [r["load_seconds"] for r in records], "threads": records[0]["threads"]}
    result = LengthSweep(MODEL, "induction", tuple(lengths), tables, meta)
    (HERE / "smollm2_lengths.json").write_text(result.to_json(indent=None))
    (HERE / "smollm2_lengths.csv").write_text(result.to_csv())
    figure = length_figure(result, style="single")
    for ext in ("svg", "pdf", "png"):
        write_figure(figure, HERE / f"smollm2_lengths.{ext}")
    (HERE / "smollm2_lengths.md").write_text(markdown(result, records))


def markdown(result, records: list[dict]) -> str:
    """Time and memory per length, the followed roles' leading heads by length, and induction by length."""
    lines = ["| tokens | prompts | classify (s) | peak RSS (MiB) | heads holding induction |", "|---|---|---|---|---|"]
    for r, table in zip(records, result.tables):
        held = [h.name for h in table.heads if "induction" in h.roles]
        lines.append(f"| {r['seq_len']:,} | {r['num_prompts']} | {r['seconds']:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} "
                     f"| {' '.join(held) or 'none'} |")
    lines += ["", "Leading heads (score) per role and length:", "",
              "| role | " + " | ".join(f"{n:,}" for n in result.seq_lens) + " |",
              "|---|" + "---|" * len(result.seq_lens)]
    for role in FOLLOWED:
        scores = result.scores(role)
        cells = []
        for i in range(len(result.seq_lens)):
            flat = scores[i].nan_to_num(-1.0).flatten()
            top = flat.topk(3).indices.tolist()
            n_heads = scores.shape[2]
            cells.append(", ".join(f"L{t // n_heads}H{t % n_heads} {float(flat[t]):.2f}" for t in top))
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    lines += ["", "Induction score by length (the 10 strongest heads at any length):", "",
              "| head | kv group | " + " | ".join(f"{n:,}" for n in result.seq_lens) + " |",
              "|---|---|" + "---|" * len(result.seq_lens)]
    for row in result.rows()[:10]:
        cells = ["-" if row["scores"][str(n)] is None else f"{row['scores'][str(n)]:.3f}" for n in result.seq_lens]
        lines.append(f"| {row['heads'][0]} | {row['kv_group']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="128,512,2048,8190")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_length(args.one, args.num_prompts, args.seed, OUT / f"len-{args.one}.json")
    else:
        sweep([int(n) for n in args.lengths.split(",")], args.num_prompts, args.seed)


if __name__ == "__main__":
    main()
