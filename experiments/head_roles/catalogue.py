"""The full head catalogue: every role headscope defines, on SmolLM2-135M and on all-MiniLM-L6-v2.

    python experiments/head_roles/catalogue.py            # both models
    python experiments/head_roles/catalogue.py smollm2    # one

SmolLM2: `classify_heads` with every built-in role plus the optional ones (retrieval, which brings its own
1024-token needle prompts, and copy_suppression) on classify's default probe (16 prompts of repeated random tokens, 64 tokens). MiniLM: every role
that applies to an encoder, on the 32 plain English sentences of `sentences.txt` ([CLS] ... [SEP]).
Writes `catalogue_<model>.json` (the role table, the shape `headscope classify --json` writes), and
`catalogue.md`: each role's definition, threshold, null and source, then which heads hold it in each model.
A model already done (its JSON exists) is read back, so an interrupted run continues.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {"smollm2": "smollm2-135m", "minilm": "minilm-l6"}


def classify(short: str) -> None:
    """Classify one model with every role that applies to it and write its JSON."""
    import torch

    import headscope
    from headscope.analysis import classify_heads
    from headscope.analysis.role_registry import get_role, known_role_names
    from headscope.capture.datasets import from_file
    from headscope.io import write_text_atomically

    torch.set_grad_enabled(False)
    model = headscope.load_model(MODELS[short])
    data = from_file(HERE / "sentences.txt", model.tokenizer) if short == "minilm" else None
    roles = [name for name in known_role_names() if get_role(name).available(model)]
    began = time.perf_counter()
    table = classify_heads(model, data, seed=0, roles=roles, progress=True)
    table.meta["catalogue_seconds"] = round(time.perf_counter() - began, 1)
    table.meta["catalogue_prompts"] = int(table.meta.get("num_prompts") or len(data))
    table.meta["catalogue_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    write_text_atomically(HERE / f"catalogue_{short}.json", table.to_json())


def write_markdown(done: list[str]) -> None:
    """catalogue.md from the role definitions and the tables written so far."""
    from headscope.analysis.role_registry import get_role, known_role_names, role_catalogue
    from headscope.analysis.role_table import RoleTable
    from headscope.io import write_text_atomically

    lines = ["# The head catalogue on SmolLM2-135M and all-MiniLM-L6-v2", "",
             "```bash", "python experiments/head_roles/catalogue.py", "```", "",
             "## The roles: definition, threshold, null, source", "",
             "A head holds a role when its score passes the threshold and, where the role has a null, the lower "
             "end of its 95% bootstrap interval over prompts clears the null by classify's margin.", "",
             role_catalogue(tuple(get_role(name) for name in known_role_names())), ""]
    for short in done:
        table = RoleTable.from_json((HERE / f"catalogue_{short}.json").read_text())
        meta = table.meta
        lines += [f"## {table.model}", "",
                  f"Probe: {meta.get('dataset')}, {meta.get('catalogue_prompts')} prompts of {meta.get('seq_len')} tokens, "
                  f"seed 0; {meta.get('catalogue_seconds')} s, peak RSS {meta.get('catalogue_peak_rss_mib')} MiB "
                  "(2 CPU cores shared with other jobs).", "",
                  "| role | heads holding it | best score (head) | threshold | null |", "|---|---|---|---|---|"]
        for role in table.roles:
            holders = sorted(table.with_role(role), key=lambda h: -h.scores[role])
            scored = [h for h in table.heads if h.scores[role] == h.scores[role]]
            best = max(scored, key=lambda h: h.scores[role], default=None)
            named = ", ".join(f"{h.name} {h.scores[role]:.2f}" for h in holders[:8])
            more = f" and {len(holders) - 8} more" if len(holders) > 8 else ""
            lines.append(f"| {role} | {len(holders)}: {named or '-'}{more} | "
                         f"{'-' if best is None else f'{best.scores[role]:.2f} ({best.name})'} | "
                         f"{meta['thresholds'].get(role)} | {meta.get('nulls', {}).get(role, '')} |")
        lines.append("")
    write_text_atomically(HERE / "catalogue.md", "\n".join(lines))


def main(which: list[str]) -> None:
    for short in which:
        if (HERE / f"catalogue_{short}.json").exists():
            print(f"{short}: done already", flush=True)
            continue
        classify(short)
    write_markdown([short for short in MODELS if (HERE / f"catalogue_{short}.json").exists()])


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
