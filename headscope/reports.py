"""Plain-text reports the command line prints: folded hook names, capture summaries, role and ablation
tables. Functions return lines; printing is the caller's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from headscope.heads import head_name


def describe_model(model) -> list[str]:
    """The lines of `models info`: source, size, tokenizer, config fields, folded hook names."""
    tok = model.tokenizer
    lines = [f"source: {model.source}", *_registered(model.source),
             f"sha256: {model.source_sha256 or 'none (loaded from memory)'}",
             f"weights sha256 (as loaded): {model.weights_digest()}",
             f"parameters: {sum(p.numel() for p in model.parameters()):,} "
             f"({', '.join(sorted({str(p.dtype).removeprefix('torch.') for p in model.parameters()}))})",
             "tokenizer: " + (f"vocab {tok.vocab_size}, bos {tok.bos_token_id}, eos {tok.eos_token_id}, "
                              f"pad {tok.pad_token_id}" if tok is not None else "none"),
             "config:"]
    config = model.cfg.to_dict()
    width = max(map(len, config))
    lines += [f"  {key.ljust(width)}  {value}" for key, value in config.items()]
    lines.append("attention per layer:")
    lines += [f"  {layers}: {kind}" for layers, kind in attention_runs(model.cfg)]
    names = model.hook_names()
    lines.append(f"hook points ({len(names)}):")
    return lines + [f"  {line}" for line in group_hook_names(names)]


def attention_runs(cfg) -> list[tuple[str, str]]:
    """Each layer's attention type (`ModelConfig.attention_type`), consecutive equal layers folded:
    [("L0-L4", "local window 512"), ("L5", "global"), ...]."""
    runs: list[list] = []
    for layer in range(cfg.n_layers):
        kind = cfg.attention_type(layer)
        if runs and runs[-1][2] == kind:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer, kind])
    return [(f"L{a}" if a == b else f"L{a}-L{b}", kind) for a, b, kind in runs]


def _registered(source: str) -> list[str]:
    """What a registered model is: its description, kind and how its file stores the weights."""
    from headscope.loading.registry import REGISTRY

    entry = REGISTRY.get(source)
    if entry is None:
        return []
    return [f"registered model: {entry.description}", f"kind: {entry.kind}",
            f"stored as: {entry.quantisation}, dequantised to float32 when loaded"]


def group_hook_names(names: Iterable[str]) -> list[str]:
    """Fold per-layer hook names: `blocks.0.attn.hook_q` ... `blocks.29.attn.hook_q` -> `blocks.{0..29}.attn.hook_q`."""
    layers: dict[str, list[int]] = {}
    for name in names:
        match = re.match(r"blocks\.(\d+)\.(.*)", name)
        key = f"blocks.{{}}.{match.group(2)}" if match else name
        layers.setdefault(key, []).append(int(match.group(1)) if match else -1)
    lines = []
    for key, found in layers.items():
        if found == [-1]:
            lines.append(key)
            continue
        found = sorted(set(found))
        contiguous = found == list(range(found[0], found[-1] + 1))
        span = f"{found[0]}..{found[-1]}" if contiguous and len(found) > 1 else ",".join(map(str, found))
        lines.append(key.replace("{}", f"{{{span}}}", 1))
    return lines


def model_table(statuses) -> list[str]:
    """The lines of `models list`: name, what the weights are (kind, quantisation), shape, format, the sha256
    of the file or folder (first 12 digits; `models info` shows it whole), and where each model is cached."""
    from headscope.loading.registry import model_sha256

    rows = [("name", "kind", "architecture", "layers x heads (kv)", "format", "stored as", "sha256", "cached")]
    for status in statuses:
        e = status.entry
        digest = model_sha256(e) or ""
        rows.append((e.name, e.kind, e.architecture, f"{e.n_layers} x {e.n_heads} ({e.n_kv_heads})", e.format,
                     f"{e.quantisation} -> float32", digest[:12], str(status.path) if status.cached else "not cached"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]


def capture_summary(result, top: int = 3) -> list[str]:
    """The `top` heads of every statistic, highest mean first (lowest for entropy and distance)."""
    lines = [f"{result.n_prompts} prompts x {result.meta['seq_len']} tokens; top heads per statistic:"]
    width = max(map(len, result.statistics))
    for name in result.statistics:
        means = result.mean(name)
        flat = means.flatten().nan_to_num(nan=float("-inf"))
        order = flat.argsort(descending=name not in ("entropy", "mean_distance"))[:top]
        heads = [f"{head_name(*divmod(int(i), means.shape[1]))} {float(flat[i]):.3f}" for i in order]
        lines.append(f"  {name.ljust(width)}  " + "   ".join(heads) + f"   ({result.count(name)} queries)")
    return lines


def ablation_lines(result, top: int = 15) -> list[str]:
    """The baseline, then the effects, largest change first (the top ones of a sweep)."""
    effects = sorted(result.effects, key=lambda e: abs(e.delta), reverse=True)
    lines = [f"{result.model}: {result.method} ablation, {result.metric} baseline {result.baseline:.4f} "
             f"({result.meta['n_prompts']} prompts)"]
    for effect in effects[:top]:
        names = ",".join(head_name(l, h) for l, h in effect.heads)
        lines.append(f"  {names:<24} {effect.value:.4f}  delta {effect.delta:+.4f}  "
                     f"[{effect.ci[0]:+.4f}, {effect.ci[1]:+.4f}]")
    if len(effects) > top:
        lines.append(f"  ... {len(effects) - top} more in the JSON output")
    return lines + control_lines(result.meta, "prompts")


def role_lines(table) -> list[str]:
    """The heads holding roles, top first: name, roles, and each role's score, interval and null."""
    held = table.heads_with_roles()
    lines = [f"{table.model}: {len(held)} of {table.n_layers * table.n_heads} heads hold roles "
             f"({table.meta['num_prompts']} prompts x {table.meta['seq_len']} tokens, {table.meta['dataset']})"]
    if not held:
        return lines + ["  no head's attention clears its null: no roles assigned"]
    width = max(17, 2 + max(len(role) for row in held for role in row.roles))  # roles' names line up
    lines.append(f"  {'head':<7}{'role':<{width}}{'score':>7}  {'95% interval':<15}{'null':>6}  copying")
    for row in held:
        for n, role in enumerate(row.roles):
            lo, hi = row.intervals[role]
            copying = f"{row.copying:+.2f}" if role == "induction" and row.copying is not None else ""
            name = row.name if n == 0 else ""
            interval = " " * 14 if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"  # a score role may have none
            null = float(row.nulls[role])
            null_text = "" if math.isnan(null) else f"{null:.3f}"  # nor a null
            lines.append(f"  {name:<7}{role:<{width}}{row.scores[role]:>7.3f}  {interval}  {null_text:>6}  {copying}")
    return lines


def length_lines(sweep, top: int = 10) -> list[str]:
    """Per length: time, peak memory and heads holding the role; then the strongest heads' scores by length."""
    role = sweep.role
    lines = [f"{sweep.model}: {role} across {len(sweep.seq_lens)} sequence lengths "
             f"({sweep.meta['num_prompts']} prompts each, {sweep.meta['dataset']})",
             f"  {'length':>8}  {'seconds':>8}  {'peak MB':>8}  holding {role}"]
    for entry, table in zip(sweep.meta["per_length"], sweep.tables):
        peak = "" if entry["peak_memory_bytes"] is None else f"{entry['peak_memory_bytes'] / 2**20:.0f}"
        holders = ", ".join(h.name for h in table.with_role(role)) or "none"
        lines.append(f"  {entry['seq_len']:>8,}  {entry['seconds']:>8.1f}  {peak:>8}  {holders}")
    lines.append(f"  {'head':<7}" + "".join(f"{n:>9,}" for n in sweep.seq_lens))
    for row in sweep.rows()[:top]:
        scores = ["" if v is None else f"{v:.3f}" for v in row["scores"].values()]
        lines.append(f"  {row['heads'][0]:<7}" + "".join(f"{v:>9}" for v in scores))
    return lines


def patch_lines(result, top: int = 15) -> list[str]:
    """The clean and corrupted baselines, then the patches that move the metric most, then any control."""
    meta = result.meta
    direction = "denoising (corrupted run, clean patched in)" if meta.get("denoise") else \
        "noising (clean run, corrupted patched in)"
    route = f", senders -> {','.join(meta['receivers']) or 'logits'} via {meta['via']}" if "via" in meta else ""
    lines = [f"{result.model}: {result.method} {result.kind} patching{route}, {direction}, {meta['n_pairs']} pairs",
             f"  {result.metric}: clean {result.clean:.4f}, corrupted {result.corrupted:.4f}"]
    effects = sorted(result.effects, key=lambda e: abs(e.value - result.base), reverse=True)
    for e in effects[:top]:
        names = ",".join(f"L{l}H{h}" for l, h in e.heads) or f"resid L{e.layer}"
        if e.positions is not None:
            names += "@" + ",".join(map(str, e.positions))
        normalized = "" if e.normalized is None else f"  normalised {e.normalized:+.3f}"
        lines.append(f"  {names:<24} {e.value:.4f}  [{e.ci[0]:.4f}, {e.ci[1]:.4f}]{normalized}")
    if len(effects) > top:
        lines.append(f"  ... {len(effects) - top} more in the JSON output")
    return lines + control_lines(meta, "pairs")


def control_lines(meta: dict, unit: str) -> list[str]:
    """A held-out selection's split and a random-head control, when the result's meta has them."""
    lines = []
    held = meta.get("held_out")
    if held:
        lines.append(f"  heads chosen on {len(held['select'])} {unit}, measured on the other {len(held['evaluate'])}")
    control = meta.get("control") or (held or {}).get("control")
    if control:
        lines.append(f"  random-head control: the real effect {control['real']:+.4f} beats "
                     f"{control['percentile']:.0f}% of {control['n_draws']} random draws from the same layers")
    return lines
