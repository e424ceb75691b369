"""SmolLM2-135M: do rollout and max-flow follow which input tokens matter? (Abnar & Zuidema 2020, sec. 4)

For each of the 32 sentences in experiments/head_roles/sentences.txt (cut to their first 16 tokens after
BOS), the output token is the model's most likely next token at the last position. The blank-out
importance of input j is the drop in that token's probability when token j alone is replaced by a
blank (the tokenizer's end-of-text token, as the paper used UNK). Across the inputs of a sentence (BOS
excluded) it is rank-correlated with: rollout (row of the last position), max-flow to the last position,
and the raw head-averaged attention of the last layer. The paper found rollout and max-flow correlate far
better with importance than raw attention.

  python experiments/flow/importance_correlation.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from scipy.stats import spearmanr

import headscope
from headscope.analysis.flow import layer_attention, max_flow, rollout

HERE = Path(__file__).parent
SENTENCES = HERE.parent / "head_roles" / "sentences.txt"
N_TOKENS = 16


@torch.no_grad()
def blank_out_importance(model, tokens: torch.Tensor, blank: int) -> tuple[torch.Tensor, int]:
    """(pos - 1,) drop in the predicted token's probability when each non-BOS input is blanked."""
    probs = model(tokens).softmax(-1)[0, -1]
    predicted = int(probs.argmax())
    variants = tokens.repeat(tokens.shape[1] - 1, 1)
    positions = torch.arange(1, tokens.shape[1])
    variants[torch.arange(len(positions)), positions] = blank
    blanked = model(variants).softmax(-1)[:, -1, predicted]
    return probs[predicted] - blanked, predicted


def main() -> None:
    torch.set_grad_enabled(False)
    model = headscope.load_model("smollm2-135m")
    blank = model.tokenizer.eos_token_id
    rows = []
    for sentence in [line for line in SENTENCES.read_text().splitlines() if line.strip()]:
        tokens = model.to_tokens(sentence)[:, : N_TOKENS + 1]
        importance, predicted = blank_out_importance(model, tokens, blank)
        attention = layer_attention(model, tokens)
        measures = {"rollout": rollout(attention)[-1, 1:], "max_flow": max_flow(attention, -1)[1:],
                    "raw_attention_last_layer": attention[-1, -1, 1:]}
        rows.append({"sentence": sentence, "predicted": model.to_string(torch.tensor([predicted])),
                     **{name: float(spearmanr(importance.numpy(), values.numpy()).statistic)
                        for name, values in measures.items()}})
    names = ("rollout", "max_flow", "raw_attention_last_layer")
    means = {name: sum(r[name] for r in rows) / len(rows) for name in names}
    result = {"command": "python experiments/flow/importance_correlation.py", "model": "SmolLM2-135M-Instruct Q4_1",
              "sentences": len(rows), "tokens_per_sentence": N_TOKENS, "blank": "end-of-text token",
              "mean_spearman_with_blank_out_importance": means, "per_sentence": rows}
    (HERE / "importance_correlation.json").write_text(json.dumps(result, indent=2))
    for name in names:
        print(f"mean Spearman, {name:<26} vs blank-out importance: {means[name]:+.3f}")
    figure(rows, names, means)


def figure(rows: list[dict], names: tuple[str, ...], means: dict[str, float]) -> None:
    """Each sentence's rank correlation per measure, with the mean: importance_correlation.html / .svg."""
    import plotly.graph_objects as go

    from headscope.viz import write_figure

    fig = go.Figure()
    for name in names:
        fig.add_trace(go.Box(y=[r[name] for r in rows], name=f"{name.replace('_', ' ')}<br>(mean {means[name]:+.2f})",
                             boxpoints="all", jitter=0.4, pointpos=0, text=[r["sentence"] for r in rows]))
    fig.add_hline(y=0, line=dict(color="grey", dash="dot"))
    fig.update_layout(title="SmolLM2-135M: Spearman correlation with blank-out importance, 32 sentences",
                      yaxis=dict(title="Spearman rho per sentence", range=[-1, 1]), template="plotly_white",
                      showlegend=False, width=820, height=560, font=dict(size=14))
    write_figure(fig, HERE / "importance_correlation.html")
    write_figure(fig, HERE / "importance_correlation.svg")


if __name__ == "__main__":
    main()
