#!/usr/bin/env bash
# SmolLM2-135M on generated IOI pairs: head sweeps (noising and denoising), the direct path of every head,
# AtP per head and position, path patching into the top heads, and the exact head x position sweep.
# Run from this folder: bash run_smollm2_ioi.sh   (transcript: smollm2_results.txt)
set -euo pipefail
M=smollm2-135m
P=smollm2_ioi_pairs.jsonl
run() { echo "\$ $*"; "$@"; echo; }
{
  echo "\$ headscope pairs ioi $M --n 16 --seed 0 > $P"; headscope pairs ioi $M --n 16 --seed 0 > $P; echo
  run headscope patch $M --pairs $P --sweep head --metric normalized-logit-diff --json smollm2_noise_heads.json --html smollm2_noise_heads.html
  run headscope patch $M --pairs $P --sweep head --denoise --metric normalized-logit-diff --json smollm2_denoise_heads.json --html smollm2_denoise_heads.html
  run headscope patch $M --pairs $P --path '*' --via logits --metric normalized-logit-diff --json smollm2_direct_path.json
  run headscope patch $M --pairs $P --sweep head-pos --method atp --denoise --metric normalized-logit-diff --json smollm2_atp_head_pos.json --html smollm2_atp_head_pos.html
  # receivers: the three heads whose noising costs the most normalised logit difference
  RECEIVERS=$(python -c "import json; r = json.load(open('smollm2_noise_heads.json'))['results']; print(','.join(x['heads'][0] for x in sorted(r, key=lambda x: x['value'])[:3]))")
  echo "receivers: $RECEIVERS"; echo
  for via in q k v; do
    run headscope patch $M --pairs $P --path "*:${RECEIVERS}" --via $via --metric normalized-logit-diff --json smollm2_path_${via}.json
  done
  run headscope patch $M --pairs $P --sweep head-pos --denoise --metric normalized-logit-diff --json smollm2_denoise_head_pos.json --html smollm2_denoise_head_pos.html
} 2>&1 | tee -a smollm2_results.txt
