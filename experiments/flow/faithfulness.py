"""Which token-importance methods follow what the prediction uses? A faithfulness benchmark.

Part 1, SmolLM2-135M, the 32 sentences of experiments/head_roles/sentences.txt cut to 16 tokens after
BOS; the prediction is the model's most likely next token at the last position. Every method scores each
non-BOS input; each importance measure says how much the prediction's probability drops when that input
is taken away; the table is the mean Spearman correlation over sentences.
  methods: raw attention (last layer, heads averaged), rollout, max-flow, gradient-weighted rollout,
  ALTI, information-flow routes, value zeroing, norm (each chained over layers), gradient x input.
  measures: blank-out with the end-of-text token; blank-out by resampling (the token replaced by 4
  tokens drawn from the other sentences, the drops averaged); attention knockout (the input hidden from
  every head of every layer with `headscope.analysis.ablation.knockout`, its own residual untouched).

Part 2, circuit recovery on repeated random tokens: for a second-occurrence prediction at position p
(token t, whose first occurrence is at k, so the next token is at k + 1, the induction target), does the
route hold an induction head's edge from k + 1 into p, and one layer down the previous-token head's edge
from k into k + 1? Toy model `toy-induction-2l`: layer-1 heads, L0H1. SmolLM2: the L17/L18 induction heads
of experiments/flow/README.md, L16H0.

  python experiments/flow/faithfulness.py            # writes faithfulness.json, .svg, .html here
  python experiments/flow/faithfulness.py --table    # the README's table from faithfulness.json
  python experiments/flow/faithfulness.py --figure   # the figure from faithfulness.json
The JSON is rewritten after every sentence (`sentences_done`), so a run cut short still reports honestly.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import headscope
from headscope.analysis.ablation import knockout
from headscope.analysis.contributions import chain, decompose, token_scores
from headscope.analysis.flow import gradient_weighted_attention, layer_attention, max_flow, rollout
from headscope.analysis.metrics import Metric
from headscope.analysis.routes import attention_node, information_routes, input_contributions, residual_node
from headscope.capture.datasets import dataset_for_model, from_tensor

HERE = Path(__file__).parent
SENTENCES = HERE.parent / "head_roles" / "sentences.txt"
N_TOKENS, N_RESAMPLES, SEED = 16, 4, 0
METHODS = ("raw_attention", "rollout", "max_flow", "gradient_rollout", "alti", "routes", "value_zeroing", "norm",
           "gradient_x_input")
MEASURES = ("blank_out_eot", "blank_out_resample", "knockout")
SMOLLM2_INDUCTION = ("L17H3", "L17H4", "L17H5", "L18H6", "L18H7")


def method_scores(model, tokens: torch.Tensor, predicted: int) -> dict[str, torch.Tensor]:
    """(pos,) importance of every input for the prediction at the last position, by each method."""
    attention = layer_attention(model, tokens)
    scores = {"raw_attention": attention[-1, -1], "rollout": rollout(attention)[-1],
              "max_flow": max_flow(attention, -1),
              "gradient_rollout": rollout(gradient_weighted_attention(model, tokens, -1))[-1]}
    matrices = {"alti": [], "value-zeroing": [], "norm": []}
    for dec in decompose(model, tokens):
        for method, layers in matrices.items():
            layers.append(token_scores(dec, method))
    for method, layers in matrices.items():
        scores[method.replace("-", "_")] = chain(torch.stack(layers))[-1]
    scores["routes"] = input_contributions(information_routes(model, tokens, -1), tokens.shape[1])
    scores["gradient_x_input"] = gradient_x_input(model, tokens, predicted)
    return scores


def gradient_x_input(model, tokens: torch.Tensor, predicted: int) -> torch.Tensor:
    """(pos,) the token embedding dotted with the gradient of the predicted logit (first-order effect of
    removing the embedding)."""
    kept = {}

    def keep(embedding, hook):
        embedding.retain_grad()
        kept["e"] = embedding

    with torch.enable_grad(), model.hooks([("hook_embed", keep)]):
        model(tokens)[0, -1, predicted].backward()
    model.zero_grad(set_to_none=True)
    return (kept["e"].grad * kept["e"].detach())[0].sum(-1).double()


def last_probability(model, tokens: torch.Tensor, predicted: int) -> torch.Tensor:
    """(prompts,) probability of `predicted` at the last position, unembedding that position only."""
    hidden = model(tokens, return_type="hidden")[:, -1]
    return model.unembed_hidden(hidden).softmax(-1)[:, predicted]


@torch.no_grad()
def measure_scores(model, tokens: torch.Tensor, predicted: int, blank: int, pool: torch.Tensor,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """(pos - 1,) drop in the predicted token's probability when each non-BOS input is taken away."""
    n_pos = tokens.shape[1]
    clean = last_probability(model, tokens, predicted)[0]
    positions = torch.arange(1, n_pos)
    blanked = tokens.repeat(n_pos - 1, 1)
    blanked[positions - 1, positions] = blank
    resampled = tokens.repeat((n_pos - 1) * N_RESAMPLES, 1)
    rows = torch.arange(len(resampled))
    resampled[rows, positions.repeat_interleave(N_RESAMPLES)] = pool[torch.randint(len(pool), (len(rows),),
                                                                                   generator=generator)]
    resample_probs = last_probability(model, resampled, predicted).reshape(n_pos - 1, N_RESAMPLES).mean(1)
    heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    data = from_tensor(tokens, has_bos=True)
    probability = Metric("probability", lambda logits, *_: logits[:, -1].softmax(-1)[:, predicted],
                         lambda model, hidden, *_: model.unembed_hidden(hidden[:, -1]).softmax(-1)[:, predicted])
    knocked = torch.tensor([-knockout(model, data, heads, [j], probability, n_bootstrap=1).effects[0].delta
                            for j in range(1, n_pos)])
    return {"blank_out_eot": clean - last_probability(model, blanked, predicted),
            "blank_out_resample": clean - resample_probs, "knockout": knocked}


def importance_benchmark(model, done: Callable[[list[dict], dict], None]) -> None:
    """Per-sentence Spearman correlations of every method with every measure, and their means so far,
    handed to `done` after every sentence."""
    sentences = [line for line in SENTENCES.read_text().splitlines() if line.strip()]
    all_tokens = [model.to_tokens(s)[:, : N_TOKENS + 1] for s in sentences]
    generator = torch.Generator().manual_seed(SEED)
    rows = []
    for index, tokens in enumerate(all_tokens):
        with torch.no_grad():
            predicted = int(model.unembed_hidden(model(tokens, return_type="hidden")[0, -1]).argmax())
        pool = torch.cat([t[0, 1:] for i, t in enumerate(all_tokens) if i != index])
        measures = measure_scores(model, tokens, predicted, model.tokenizer.eos_token_id, pool, generator)
        methods = method_scores(model, tokens, predicted)
        row = {"sentence": sentences[index], "predicted": model.to_string(torch.tensor([predicted]))}
        for measure, truth in measures.items():
            for method, values in methods.items():
                rho = spearmanr(truth.numpy(), values[1:].detach().numpy()).statistic
                row[f"{method}|{measure}"] = None if np.isnan(rho) else float(rho)
        rows.append(row)
        done(rows, {measure: {method: _mean([r[f"{method}|{measure}"] for r in rows]) for method in METHODS}
                    for measure in MEASURES})
        print(f"sentence {index + 1}/{len(all_tokens)} done", flush=True)


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def circuit_recovery(model, induction: tuple[str, ...] | None, previous: str, n_prompts: int, period: int,
                     queries: list[int]) -> dict:
    """Share of second-occurrence predictions whose route has the induction edge (k + 1 -> p through an
    induction head; None: any head of the layer above `previous`) and, of those, also the previous-token
    edge (k -> k + 1 through `previous`)."""
    data = dataset_for_model(model, "repeated-random", seq_len=2 * period, num_prompts=n_prompts, seed=SEED)
    offset = 1 if data.has_bos else 0
    prev_layer = int(previous[1:].split("H")[0])
    found_induction = found_both = total = 0
    heads_used: dict[str, int] = {}
    for tokens in data.tokens:
        for k in queries:  # first occurrence at offset + k, second at p = offset + period + k
            p, source = offset + period + k, offset + k + 1
            graph = information_routes(model, tokens[None], target=p)
            components = {c for u, v, c in graph.edges(data="component") if graph.nodes[u]["position"] == source
                          and graph.nodes[v]["position"] == p and c not in ("residual",) and not c.startswith("MLP")}
            for c in components:
                heads_used[c] = heads_used.get(c, 0) + 1
            hits = components & set(induction) if induction is not None else \
                {c for c in components if c.startswith(f"L{prev_layer + 1}H")}
            total += 1
            if hits:
                found_induction += 1
                prev_edges = graph.get_edge_data(residual_node(prev_layer, source - 1),
                                                 _after_attention(model, prev_layer, source)) or {}
                found_both += previous in prev_edges
    top = sorted(heads_used.items(), key=lambda item: -item[1])[:8]
    return {"predictions": total, "induction_edge": found_induction / total,
            "induction_and_previous_token_edge": found_both / total,
            "heads_on_edges_from_the_induction_target": dict(top)}


def _after_attention(model, layer: int, position: int) -> str:
    separate = model.cfg.d_mlp and not model.cfg.parallel_attn_mlp
    return attention_node(layer, position) if separate else residual_node(layer + 1, position)


def main() -> None:
    # One thread: on a shared, oversubscribed machine two spinning threads cost 10x the CPU time here.
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    result = {"command": "python experiments/flow/faithfulness.py", "seed": SEED, "meta": {
        "sentences": str(SENTENCES.relative_to(HERE.parent.parent)), "tokens_per_sentence": N_TOKENS,
        "resamples": N_RESAMPLES, "headscope_version": headscope.__version__}}
    start = time.perf_counter()
    toy = headscope.load_model("toy-induction-2l")
    result["toy_circuit"] = circuit_recovery(toy, None, "L0H1", n_prompts=8, period=20, queries=list(range(1, 19, 2)))
    print("toy", result["toy_circuit"], flush=True)
    model = headscope.load_model("smollm2-135m")
    result["model"] = "SmolLM2-135M-Instruct Q4_1"
    result["smollm2_circuit"] = circuit_recovery(model, SMOLLM2_INDUCTION, "L16H0", n_prompts=4, period=16,
                                                 queries=[3, 7, 11])
    print("smollm2", result["smollm2_circuit"], flush=True)

    def save(rows: list[dict], means: dict) -> None:  # after every sentence, so a cut-short run still counts
        result.update(sentences_done=len(rows), mean_spearman=means, per_sentence=rows,
                      seconds=round(time.perf_counter() - start, 1))
        (HERE / "faithfulness.json").write_text(json.dumps(result, indent=1, allow_nan=False))

    importance_benchmark(model, save)
    for measure in MEASURES:
        print(measure, {m: None if v is None else round(v, 3) for m, v in result["mean_spearman"][measure].items()})
    figure(result["mean_spearman"], result["sentences_done"])


def figure(means: dict, n_sentences: int) -> None:
    """Mean Spearman correlation of each method with each importance measure, grouped bars."""
    import plotly.graph_objects as go

    from headscope.viz import write_figure

    fig = go.Figure([go.Bar(name=measure.replace("_", " "), x=[m.replace("_", " ") for m in METHODS],
                            y=[means[measure][m] for m in METHODS]) for measure in MEASURES])
    fig.add_hline(y=0, line=dict(color="grey", dash="dot"))
    fig.update_layout(barmode="group", template="plotly_white", width=980, height=520, font=dict(size=14),
                      title=f"SmolLM2-135M: mean Spearman correlation with importance, {n_sentences} sentences x 16 tokens",
                      yaxis=dict(title="mean Spearman rho", range=[-1, 1]))
    write_figure(fig, HERE / "faithfulness.html")
    write_figure(fig, HERE / "faithfulness.svg")


def table(means: dict) -> str:
    """The README's markdown table: one row per method, one column per importance measure."""
    lines = ["| method | " + " | ".join(m.replace("_", " ") for m in MEASURES) + " |",
             "|---|" + "---|" * len(MEASURES)]
    for method in METHODS:
        cells = ["n/a" if means[m][method] is None else f"{means[m][method]:+.2f}" for m in MEASURES]
        lines.append(f"| {method.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] in (["--figure"], ["--table"]):  # redraw the figure, or print the table, from the JSON
        saved = json.loads((HERE / "faithfulness.json").read_text())
        if sys.argv[1] == "--figure":
            figure(saved["mean_spearman"], saved["sentences_done"])
        else:
            print(table(saved["mean_spearman"]))
    else:
        main()
