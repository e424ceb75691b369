"""SmolLM2-135M: which heads feed the induction heads' keys? K-composition from the weights.

Classifies heads (repeated random tokens, 16 prompts x 64 tokens), then for every induction head lists
its strongest K-composition sources among earlier heads (Elhage et al. 2021), with their roles. Olsson
et al.'s induction circuit predicts previous-token heads there. Writes induction_circuit_smollm2.json and
the K-composition graph (top 3 sources per head, role labels) as induction_circuit_smollm2.graphml.

  python experiments/flow/induction_circuit_smollm2.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import headscope
from headscope.analysis import classify_heads
from headscope.analysis.composition import composition_graph, composition_scores
from headscope.export import write_graph

HERE = Path(__file__).parent


def main() -> None:
    torch.set_grad_enabled(False)
    model = headscope.load_model("smollm2-135m")
    table = classify_heads(model, seq_len=64, num_prompts=16, seed=0)
    k_scores = composition_scores(model)[1]
    rows = []
    for reader in table.with_role("induction"):
        incoming = k_scores[: reader.layer, :, reader.layer, reader.head]
        top = incoming.flatten().topk(3)
        sources = []
        for value, index in zip(top.values.tolist(), top.indices.tolist()):
            layer, head = divmod(index, model.cfg.n_heads)
            sources.append({"head": f"L{layer}H{head}", "k_composition": value,
                            "roles": list(table.head(layer, head).roles)})
        rows.append({"induction_head": reader.name, "induction_score": reader.scores["induction"],
                     "top_k_composition_sources": sources, "median_k_composition": float(incoming.flatten().median())})
    write_graph(composition_graph(model, "k", top_k=3, roles=table), HERE / "induction_circuit_smollm2.graphml")
    share = sum("previous_token" in r["top_k_composition_sources"][0]["roles"] for r in rows) / max(len(rows), 1)
    result = {"command": "python experiments/flow/induction_circuit_smollm2.py", "induction_heads": len(rows),
              "share_whose_strongest_source_is_a_previous_token_head": share, "heads": rows}
    (HERE / "induction_circuit_smollm2.json").write_text(json.dumps(result, indent=2))
    for row in rows:
        sources = ", ".join(f"{s['head']} {s['k_composition']:.3f} ({';'.join(s['roles']) or '-'})"
                            for s in row["top_k_composition_sources"])
        print(f"{row['induction_head']}: {sources}   (median {row['median_k_composition']:.3f})")
    print(f"strongest source is a previous-token head for {share:.0%} of the induction heads")


if __name__ == "__main__":
    main()
