"""SmolLM2-135M: does a head that matters for copying matter for every prediction?

The same prompts as `headscope ablate smollm2-135m --sweep head --metric induction-loss` (16 repeated-
random prompts of 64 tokens, seed 0), every head zero-ablated alone, but the loss counted on the first
period only, where nothing can be copied: a head whose ablation raises the repeated half's loss but not
the first period's serves in-context copying in particular.

  python experiments/ablation/smollm2_sweep_first_period.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import headscope
from headscope.analysis.ablation import sweep
from headscope.analysis.metrics import mean_token_loss
from headscope.capture.datasets import dataset_for_model
from headscope.heads import head_name

HERE = Path(__file__).parent


def main() -> None:
    torch.set_grad_enabled(False)
    model = headscope.load_model("smollm2-135m")
    data = dataset_for_model(model, "repeated-random", seq_len=64, num_prompts=16, seed=0)
    period = data.meta["period"]

    def first_period(tokens, real):  # predictions of tokens 2 .. period (after BOS and the first token)
        predicted = torch.arange(1, tokens.shape[1])
        return ((predicted >= 2) & (predicted <= period)).expand(tokens.shape[0], -1) & real[:, 1:]

    first = sweep(model, data, "zero", mean_token_loss("first-period-loss", first_period), progress=True)
    repeated = json.loads((HERE / "smollm2_sweep_induction_loss.json").read_text())
    copying = {r["heads"][0]: r["delta"] for r in repeated["results"]}
    rows = sorted(({"head": head_name(*e.heads[0]), "first_period_delta": e.delta, "first_period_ci": list(e.ci)}
                   for e in first.effects), key=lambda row: -copying[row["head"]])
    for row in rows:
        row["repeated_half_delta"] = copying[row["head"]]
    result = {"command": "python experiments/ablation/smollm2_sweep_first_period.py",
              "first_period_baseline": first.baseline, "repeated_half_baseline": repeated["baseline"],
              "heads": rows, "meta": first.meta}
    (HERE / "smollm2_sweep_first_period.json").write_text(json.dumps(result, indent=2))
    print(f"baselines: first period {first.baseline:.3f}, repeated half {repeated['baseline']:.3f}")
    for row in rows[:12]:
        print(f"{row['head']:<7} repeated half {row['repeated_half_delta']:+.3f}   first period "
              f"{row['first_period_delta']:+.3f}")


if __name__ == "__main__":
    main()
