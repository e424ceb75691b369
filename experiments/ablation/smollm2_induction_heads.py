"""SmolLM2-135M: ablating its induction heads against ablating as many random heads of the same layers.

Heads are classified on repeated random tokens (16 prompts x 64 tokens, seed 0); the k heads holding the
induction role are zero-ablated together, and so are, in 10 seeded draws, k other heads taken one per
induction head from the same layer (never an induction head). The metric is the loss on the repeated
half of 16 fresh repeated-random prompts (seed 1), where in-context copying is what predicts the tokens.

  python experiments/ablation/smollm2_induction_heads.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

import headscope
from headscope.analysis import classify_heads
from headscope.analysis.ablation import ablate
from headscope.capture.datasets import dataset_for_model

HERE = Path(__file__).parent
DRAWS = 10


def main() -> None:
    torch.set_grad_enabled(False)
    model = headscope.load_model("smollm2-135m")
    table = classify_heads(model, seq_len=64, num_prompts=16, seed=0)
    induction = [(r.layer, r.head) for r in table.with_role("induction")]
    data = dataset_for_model(model, "repeated-random", seq_len=64, num_prompts=16, seed=1)
    ablated = ablate(model, data, induction, "zero", "induction-loss")
    rng = random.Random(0)
    draws = []
    for _ in range(DRAWS):
        others = [(layer, rng.choice([h for h in range(model.cfg.n_heads) if (layer, h) not in induction]))
                  for layer, _ in induction]
        effect = ablate(model, data, others, "zero", "induction-loss").effects[0]
        draws.append({"heads": [f"L{l}H{h}" for l, h in others], "value": effect.value, "delta": effect.delta})
    first_half = _first_half_loss(model, data)
    result = {
        "command": "python experiments/ablation/smollm2_induction_heads.py",
        "induction_heads": [f"L{l}H{h}" for l, h in induction],
        "baseline_induction_loss": ablated.baseline, "first_half_loss": first_half,
        "induction_heads_ablated": {"value": ablated.effects[0].value, "delta": ablated.effects[0].delta,
                                    "ci": ablated.effects[0].ci},
        "random_same_layer_draws": draws,
        "max_random_delta": max(d["delta"] for d in draws),
    }
    (HERE / "smollm2_induction_heads.json").write_text(json.dumps(result, indent=2))
    print(f"induction heads ({len(induction)}): {' '.join(result['induction_heads'])}")
    print(f"loss on the repeated half: clean {ablated.baseline:.3f}; first half (no copying possible) {first_half:.3f}")
    print(f"ablating the induction heads: {ablated.effects[0].value:.3f} (delta {ablated.effects[0].delta:+.3f})")
    print("ablating random heads of the same layers: " + ", ".join(f"{d['delta']:+.3f}" for d in draws))


def _first_half_loss(model, data) -> float:
    """Loss on the first period's predictions (after BOS): what a model that cannot copy gets."""
    period = data.meta["period"]
    logits = model(data.tokens)
    losses = torch.nn.functional.cross_entropy(logits[:, 1:period].transpose(1, 2), data.tokens[:, 2 : period + 1],
                                               reduction="none")
    return float(losses.mean())


if __name__ == "__main__":
    main()
