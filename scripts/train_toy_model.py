"""Train the shipped default model `toy-induction-2l` and write it into headscope/data/.

A 2-layer attention-only transformer (4 heads of 16, d_model 64, LayerNorm, 64 token ids + BOS, 41
positions) trained 2500 steps on repeated random segments of varying period (`headscope.training`), seed
0; about 20 s on 2 CPU cores. Before writing, it checks what the model is shipped for: `classify_heads`
must find induction heads in layer 1 and a previous-token head in layer 0.

  python scripts/train_toy_model.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import headscope
from headscope.analysis import classify_heads
from headscope.capture.datasets import repeated_random_tokens
from headscope.loading.checkpoint import save_checkpoint
from headscope.training import TrainConfig, train

TARGET = Path(headscope.__file__).parent / "data" / "toy-induction-2l"


def main() -> None:
    config = TrainConfig(seed=0, steps=2500, eval_every=250, checkpoint_every=2500)
    result = train(config)
    table = classify_heads(result.model, repeated_random_tokens(16, 16, vocab_size=config.vocab, seed=7,
                                                                bos_token_id=config.vocab))
    induction = [r.name for r in table.with_role("induction") if r.layer == 1]
    previous = [r.name for r in table.with_role("previous_token") if r.layer == 0]
    if not induction or not previous:
        raise SystemExit(f"no induction head in layer 1 ({induction}) or previous-token head in layer 0 ({previous})")
    shutil.rmtree(TARGET, ignore_errors=True)
    TARGET.parent.mkdir(exist_ok=True)
    save_checkpoint(result.model, TARGET)
    (TARGET / "training.json").write_text(json.dumps(
        {"command": "python scripts/train_toy_model.py", "config": config.__dict__, "log": result.log,
         "induction_heads": induction, "previous_token_heads": previous}, indent=1))
    print(f"wrote {TARGET}: induction heads {induction}, previous-token heads {previous}")


if __name__ == "__main__":
    main()
