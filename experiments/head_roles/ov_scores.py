"""SmolLM2-135M: the OV copying score and the succession score of its 270 heads, from the weights alone.

Writes `ov_scores.md` (tables, timings) and `ov_scores.json` (both results, every head) beside this file:

  python experiments/head_roles/ov_scores.py

Besides the two scores as headscope defines them it measures how much they depend on two choices: the
copying score's token set (the first 1,000 non-special ids, the default, against the first 5,000), and the
succession score's source embedding (Gould et al.'s W_E + MLP0(W_E), the default, against W_E alone, MLP0's
output alone, and block 0's whole output on a one-token input, attention included). The embedding swap
patches the module's `effective_embeddings` for the length of one call: a probe, not an API.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from unittest import mock

import torch

import headscope
from headscope.analysis import ov_scores
from headscope.io import write_text_atomically

HERE = Path(__file__).parent
COMMAND = "python experiments/head_roles/ov_scores.py"
# classify_heads' induction heads of SmolLM2 (README.md in this folder): induction heads copy (Olsson et al.).
INDUCTION_HEADS = ["L18H6", "L17H4", "L18H7", "L17H3", "L17H5", "L23H2"]


def _embedding_variants(model) -> dict:
    """The succession score's best head and per-task maxima under each source embedding."""
    token = ov_scores.token_embeddings
    effective = ov_scores.effective_embeddings

    def block0(model, ids):
        tokens = torch.tensor(list(ids), device=model.device)[:, None]
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"], return_type=None)
        return cache["blocks.0.hook_resid_post"][:, 0].double()

    variants = {"W_E + MLP0(W_E) (default)": effective, "W_E": token,
                "MLP0(W_E) alone": lambda m, ids: effective(m, ids) - token(m, ids),
                "block 0 output on [t]": block0}
    out = {}
    for name, function in variants.items():
        with mock.patch.object(ov_scores, "effective_embeddings", function):
            result = ov_scores.successor_scores(model)
        out[name] = {"top": result.top(3), "max_by_task": {t: float(s.max()) for t, s in result.by_task.items()}}
    return out


def _table(rows: list[tuple], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = headscope.load_model("smollm2-135m")
    loaded = time.perf_counter()
    copying = ov_scores.ov_copying(model)
    copied = time.perf_counter()
    succession = ov_scores.successor_scores(model)
    done = time.perf_counter()
    wider = ov_scores.ov_copying_scores(model, ov_scores.frequent_tokens(model, 5000))
    agreement = float(torch.corrcoef(torch.stack([copying.scores.flatten(), wider.flatten()]))[0, 1])
    variants = _embedding_variants(model)
    timings = {"load_s": loaded - start, "ov_copying_s": copied - loaded, "succession_s": done - copied}
    write_text_atomically(HERE / "ov_scores.json", json.dumps(
        {"command": COMMAND, "timings": timings, "ov_copying": json.loads(copying.to_json()),
         "succession": json.loads(succession.to_json()), "copying_1000_vs_5000_pearson": agreement,
         "succession_embedding_variants": variants}, indent=1))
    write_text_atomically(HERE / "ov_scores.md", _report(copying, succession, timings, agreement, variants))


def _report(copying, succession, timings, agreement, variants) -> str:
    scores = copying.scores
    by_name = {row["heads"][0]: row for row in succession.rows()}
    copy_rows = [(name, f"{value:+.3f}") for name, value in copying.top(10)]
    negative_rows = [(name, f"{value:+.3f}") for name, value in copying.top(10, lowest=True)]
    tasks = list(succession.by_task)
    succ_rows = [(name, f"{value:.2f}", *(f"{by_name[name]['by_task'][t]:.2f}" for t in tasks),
                  f"{float(scores.flatten()[_index(name, scores.shape[1])]):+.2f}")
                 for name, value in succession.top(10)]
    used = [(name, seq["form"], " ".join(seq["labels"]), len(seq["pairs"]), f"{1 / len(seq['ids']):.3f}")
            for name, seq in succession.meta["sequences"].items()]
    induction = " ".join(f"{h} {float(scores.flatten()[_index(h, scores.shape[1])]):+.2f}" for h in INDUCTION_HEADS)
    variant_rows = [(name, ", ".join(f"{h} {v:.2f}" for h, v in data["top"]),
                     ", ".join(f"{t} {v:.2f}" for t, v in data["max_by_task"].items()))
                    for name, data in variants.items()]
    return f"""# SmolLM2-135M: OV copying and succession scores from the weights

```bash
{COMMAND}
```
Machine: 2 shared CPU cores, weights in float32, scores in float64. Definitions: the docstring of
`headscope/analysis/ov_scores.py` (Elhage et al. 2021; McDougall et al. 2023; Gould et al. 2024).
Every head's numbers: `ov_scores.json`.

| step | seconds |
|---|---|
| load the model | {timings['load_s']:.1f} |
| OV copying score, 270 heads, 1,000 tokens | {timings['ov_copying_s']:.2f} |
| succession score, 270 heads, 4 sequences | {timings['succession_s']:.2f} |

## OV copying score

Token set: {copying.meta['token_set']}. Heads above +0.9: {int((scores > 0.9).sum())}; below -0.9:
{int((scores < -0.9).sum())}; mean {float(scores.mean()):+.3f}. With the first 5,000 ids instead of 1,000 the
270 scores correlate at Pearson {agreement:.3f}.

{_table(copy_rows, ("copying head", "score"))}

{_table(negative_rows, ("negative (copy-suppression candidate) head", "score"))}

The induction heads `classify_heads` finds (README.md here) and their copying scores: {induction}.
A negative score is the weight half of McDougall et al.'s copy suppression; the other half (attending to
earlier copies of the token being predicted) needs prompts and is not measured here. The eigenvalue score
weighs the whole circuit on the frequent tokens, not each token's own logit: L23H2, whose direct effect on
the copied token's logit is the largest of the induction heads (+0.63 on repeated random tokens drawn from
the whole vocabulary, README.md), scores negative here, so the two measure different things and a head's
role should rest on both.

## Succession score

Sequences used (chance = 1 / items; pooled chance {succession.meta['chance']:.3f} over
{succession.meta['pairs']} pairs):

{_table(used, ("sequence", "form", "items (single tokens)", "pairs", "chance"))}

{_table(succ_rows, ("head", "pooled", *tasks, "copying score"))}

Sensitivity to the source embedding (top 3 heads pooled; best head per sequence):

{_table(variant_rows, ("embedding", "top heads", "best per sequence"))}

By this weight-only score SmolLM2-135M has no successor head: the best pooled score is
{succession.top(1)[0][1]:.2f} ({succession.top(1)[0][0]}) against {succession.meta['chance']:.2f} by chance, and
no choice of source embedding above changes that. Its digits are single tokens only without a leading
space, so "numbers" is 1-9 as bare digits, not the " 1" ... " 20" words of GPT-2-style vocabularies.
"""


def _index(name: str, n_heads: int) -> int:
    layer, head = headscope.heads.parse_head(name)
    return layer * n_heads + head


if __name__ == "__main__":
    main()
