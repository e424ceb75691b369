#!/usr/bin/env bash
# Every command's main job on the toy model that ships inside headscope, with only the README's plain
# install (`pip install torch==2.13.0 && pip install -e .`): a runtime import that is not a declared
# dependency fails here, where the tests (which install the test extra) would not see it.
# Usage: scripts/smoke_plain_install.sh [HEADSCOPE_COMMAND]   (default: headscope). Exits non-zero on any failure.
set -euo pipefail
hs=${1:-headscope}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { echo "+ headscope $*"; $hs "$@" >"$out/last.log" 2>&1 || { cat "$out/last.log" >&2; echo "FAILED: headscope $*" >&2; exit 1; }; }

run --version
run models list
run models info toy-induction-2l
run classify --num-prompts 8 --json "$out/roles.json" --csv "$out/roles.csv" --html "$out/roles.html"
run pattern toy-induction-2l L1H0 --text "t3 t17 t5 t3 t17" --html "$out/pattern.html"
run pattern toy-induction-2l L0H1,L1H0 --text "t3 t17 t5 t3 t17" --out "$out/grid.pdf" --out "$out/grid.png"
for method in rollout maxflow; do
    run flow --method "$method" --text "t3 t17 t5 t3 t17" \
        --out "$out/$method.graphml" --out "$out/$method.gexf" --out "$out/$method.json" --out "$out/$method.dot" \
        --out "$out/$method.html" --out "$out/$method.svg" --out "$out/$method.pdf"
done
run flow --method rollout --gradient --text "t3 t17 t5 t3 t17" --out "$out/gradient.json"
for method in composition ablation; do
    run flow --method "$method" --roles "$out/roles.json" \
        --out "$out/$method.graphml" --out "$out/$method.gexf" --out "$out/$method.json" --out "$out/$method.dot"
done
for method in alti norm value-zeroing routes; do
    run flow --method "$method" --text "t3 t17 t5 t3 t17" --out "$out/$method.json" --out "$out/$method.svg"
done
run flow --method composition --out "$out/composition.svg" --out "$out/composition.pdf"
run models verify
echo "+ headscope pairs induction toy-induction-2l --n 8"
$hs pairs induction toy-induction-2l --n 8 --seed 0 >"$out/pairs.jsonl" || { echo "FAILED: headscope pairs" >&2; exit 1; }
run patch toy-induction-2l --pairs "$out/pairs.jsonl" --sweep head --json "$out/patch.json" --html "$out/patch.html"
run patch toy-induction-2l --pairs "$out/pairs.jsonl" --sweep head --method atp --json "$out/atp.json"
run patch toy-induction-2l --pairs "$out/pairs.jsonl" --path L0H1:L1H0 --via k --json "$out/path.json"
run ablate --heads L1H0 --num-prompts 4 --json "$out/ablate.json" --html "$out/ablate.html"
run ablate --sweep head --num-prompts 4 --json "$out/sweep.json" --html "$out/sweep.html"
run report --roles "$out/roles.json" --ablation "$out/sweep.json" --patching "$out/patch.json" \
    --out "$out/report.html" --out "$out/report.pdf"
run report --out "$out/report_default.html"
run capture toy-induction-2l --num-prompts 4 --patterns L1H0 --out "$out/capture"
run train "$out/train" --steps 4 --eval-every 2 --checkpoint-every 2 --batch-size 4

for f in roles.json roles.csv roles.html pattern.html rollout.svg maxflow.pdf composition.graphml ablation.json \
         routes.svg composition.pdf pairs.jsonl patch.json atp.json path.json report.html report.pdf report_default.html grid.pdf grid.png \
         ablate.json sweep.html capture/stats.json capture/stats.safetensors capture/patterns.safetensors train/log.json; do
    [ -s "$out/$f" ] || { echo "FAILED: $f was not written" >&2; exit 1; }
done
echo "smoke: every command ran on the toy model"
