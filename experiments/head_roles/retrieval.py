"""SmolLM2-135M: retrieval heads (Wu et al. 2024) on needle-in-a-haystack copy prompts, by context length.

Writes `retrieval.md` (top heads, time, peak memory per length) and `retrieval.json` (every head's score
per length) beside this file:

  python experiments/head_roles/retrieval.py [CONTEXT_LEN[:PROMPTS] ...]     (default: 1024:2 4096:1 8192:1)

Each length: PROMPTS prompts (default 4), needles of 16 copied tokens, seed 0 (`headscope.analysis.retrieval`). Peak memory
is the process's peak resident set (ru_maxrss), read after each length; lengths run in increasing order,
so each reading is that length's peak (the model's weights included).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import headscope
from headscope.analysis.retrieval import THRESHOLD, retrieval_scores
from headscope.io import write_text_atomically

HERE = Path(__file__).parent
N_PROMPTS, NEEDLE_LEN = 4, 16  # prompts per length by default, copied tokens per needle
NOTES_HEADING = "## Notes (by hand"
INDUCTION_HEADS = ["L18H6", "L17H4", "L18H7", "L17H3", "L17H5", "L23H2"]  # classify's, README.md here


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(requests: list[str]) -> None:
    lengths = {int(text.split(":")[0]): int(text.split(":")[1]) if ":" in text else N_PROMPTS for text in requests}
    start = time.perf_counter()
    model = headscope.load_model("smollm2-135m")
    loaded, load_peak = time.perf_counter() - start, peak_mib()
    runs = {}
    for length in sorted(lengths):
        start = time.perf_counter()
        result = retrieval_scores(model, n_prompts=lengths[length], context_len=length, needle_len=NEEDLE_LEN, seed=0)
        runs[length] = {"seconds": time.perf_counter() - start, "peak_mib": peak_mib(), "result": result}
        print(length, f"{runs[length]['seconds']:.1f}s", result.top(5), flush=True)
        write(requests, lengths, runs, loaded, load_peak)  # after each length: a stopped run keeps what it has


def write(requests: list[str], lengths: dict[int, int], runs: dict, loaded: float, load_peak: float) -> None:
    """retrieval.md and retrieval.json of the lengths measured so far."""
    command = "python experiments/head_roles/retrieval.py " + " ".join(requests)
    lines = ["# SmolLM2-135M: retrieval heads (Wu et al. 2024)", "", "```bash", command, "```",
             f"Machine: 2 CPU cores shared with other jobs (1-minute load average {os.getloadavg()[0]:.0f} when written), float32. Needles of {NEEDLE_LEN} "
             "copied tokens, seed 0; prompts and score as `headscope/analysis/retrieval.py` states them "
             f"(threshold {THRESHOLD}). Model load: {loaded:.1f} s, peak RSS after loading {load_peak:.0f} MiB.",
             "", "| context | prompts | seconds | peak RSS (MiB) | heads >= 0.1 | top heads (score) | "
             "induction heads' scores |", "|---|---|---|---|---|---|---|"]
    for length, run in runs.items():
        result = run["result"]
        everything = dict(result.top(result.scores.numel()))
        top = ", ".join(f"{name} {score:.2f}" for name, score in result.top(6))
        above = int((result.scores >= THRESHOLD).sum())
        induction = ", ".join(f"{h} {everything[h]:.2f}" for h in INDUCTION_HEADS)
        lines.append(f"| {length} | {lengths[length]} | {run['seconds']:.1f} | {run['peak_mib']:.0f} | {above} | "
                     f"{top} | {induction} |")
    lines += ["", "Only the copy-step rows of each layer's pattern are formed ((16, n) per head); the full "
              "patterns of all 30 layers x 9 heads would be 270 n^2 float32 values (4.5 GB at 2048 tokens, "
              "18 GB at 4096)."]
    notes = _hand_notes(HERE / "retrieval.md")
    write_text_atomically(HERE / "retrieval.md", "\n".join(lines) + "\n" + notes)
    data = {str(length): json.loads(run["result"].to_json()) | {"seconds": run["seconds"],
                                                               "peak_rss_mib": run["peak_mib"]}
            for length, run in runs.items()}
    write_text_atomically(HERE / "retrieval.json", json.dumps(data, indent=1) + "\n")

def _hand_notes(path: Path) -> str:
    """The notes written by hand below the generated part (from NOTES_HEADING on), kept across reruns."""
    text = path.read_text() if path.exists() else ""
    at = text.find(NOTES_HEADING)
    return "" if at < 0 else "\n" + text[at:]


if __name__ == "__main__":
    main(sys.argv[1:] or ["1024:2", "4096:1", "8192:1"])
