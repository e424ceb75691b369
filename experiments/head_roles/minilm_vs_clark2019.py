"""all-MiniLM-L6-v2: the positional heads headscope finds, against what Clark et al. (2019) report for BERT.

Runs `classify_heads` on 32 plain English sentences (sentences.txt, [CLS] ... [SEP] as the encoder saw in
training) and lists the heads holding previous_token, next_token, sep ([SEP]) and attention_sink ([CLS])
roles, with the role scores of every head per layer, into minilm_roles.json.

  python experiments/head_roles/minilm_vs_clark2019.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import headscope
from headscope.analysis import classify_heads
from headscope.capture.datasets import from_file

HERE = Path(__file__).parent
ROLES = ("previous_token", "next_token", "sep", "attention_sink", "self")


def main() -> None:
    torch.set_grad_enabled(False)
    model = headscope.load_model("minilm-l6")
    dataset = from_file(HERE / "sentences.txt", model.tokenizer)
    table = classify_heads(model, dataset, seed=0)
    (HERE / "minilm_roles.json").write_text(table.to_json())
    summary = {role: [row.name for row in table.with_role(role)] for role in ROLES}
    per_layer = {role: [round(max(table.head(layer, h).scores[role] for h in range(table.n_heads)), 3)
                        for layer in range(table.n_layers)] for role in ROLES}
    (HERE / "minilm_summary.json").write_text(json.dumps(
        {"command": "python experiments/head_roles/minilm_vs_clark2019.py", "prompts": len(dataset),
         "heads_with_role": summary, "best_score_per_layer": per_layer}, indent=2))
    for role in ROLES:
        print(f"{role:<15} heads: {' '.join(summary[role]) or '-'}")
        print(f"{'':<15} best per layer: {per_layer[role]}")


if __name__ == "__main__":
    main()
