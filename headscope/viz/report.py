"""One report per model: a self-contained offline page (or its PDF) with the head roles, the strongest heads'
patterns, ablation and patching effects, a flow graph and the provenance of every number on it.

Results given as files are read; what is not given is computed with small defaults (`ReportOptions`) so
that `build_report("smollm2-135m")` alone makes a full report in about a minute on two CPU cores.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch
from networkx.readwrite import json_graph

import headscope
from headscope.analysis.roles import RoleTable
from headscope.errors import InputError
from headscope.notebook import results_html
from headscope.viz.effects import effects_figure
from headscope.viz.graphs import layered_graph_figure
from headscope.viz.page import Page
from headscope.viz.patterns import attention_text_html, pattern_figure
from headscope.viz.roles import role_heatmap

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"  # Wang et al. (2022)'s IOI form
SECTIONS = ("summary", "roles", "patterns", "ablation", "patching", "flow", "provenance")


@dataclass(frozen=True)
class ReportOptions:
    """What a report computes when a result is not given: the dataset of roles and ablation (repeated
    random tokens), the prompt of patterns and flow, how many heads' patterns, the flow's edges drawn."""

    num_prompts: int = 8
    seq_len: int = 32
    seed: int = 0
    prompt: str = DEFAULT_PROMPT
    pattern_heads: int = 6
    flow_method: str = "maxflow"
    flow_top_k: int = 2
    n_bootstrap: int = 200
    device: str = "cpu"
    style: str = "screen"


def build_report(model_source, roles=None, ablation=None, patching=None, flow=None,
                 options: ReportOptions | None = None, command: str | None = None) -> Page:
    """The report page of one model. `roles` (a RoleTable or roles.json), `ablation` and `patching` (a
    result, its JSON as a dict, or a .json file in the shared vocabulary) and `flow` (a networkx graph or
    a .json/.graphml/.gexf file) are drawn as given; each one missing is computed with `options`."""
    from headscope.loading.load import load_model

    options = options or ReportOptions()
    inputs = {name: value for name, value in
              (("roles", roles), ("ablation", ablation), ("patching", patching), ("flow", flow))
              if isinstance(value, (str, os.PathLike))}
    model = load_model(model_source, device=options.device)
    cfg = model.cfg
    table = _roles(model, roles, options)
    page = Page(f"headscope report: {_short(str(model_source))}")
    page.heading("Model", anchor="summary")
    page.table([{"model": str(model_source), "architecture": cfg.architecture, "layers": cfg.n_layers,
                 "heads per layer": cfg.n_heads, "key/value heads": cfg.n_kv_heads,
                 "parameters": sum(p.numel() for p in model.parameters()), "tokenizer": model.tokenizer is not None}])
    _roles_section(page, table, options)
    tokens = _prompt_tokens(model, options)
    _patterns_section(page, model, table, tokens, options)
    effects = _ablation(model, ablation, options)
    _effects_section(page, "ablation", "Head ablation", effects, cfg, options,
                     "no ablation: the model has no output logits" if effects is None else None)
    if patching is not None:
        _effects_section(page, "patching", "Patching", _read_result(patching), cfg, options, None)
    _flow_section(page, model, flow, tokens, table, options)
    _provenance_section(page, model_source, inputs, options, command)
    return page


def _short(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1]


def _roles(model, roles, options: ReportOptions) -> RoleTable:
    from headscope.analysis.roles import classify_heads

    if roles is None:
        return classify_heads(model, seq_len=_fit(model, options.seq_len), num_prompts=options.num_prompts,
                              seed=options.seed, n_bootstrap=options.n_bootstrap)
    table = roles if isinstance(roles, RoleTable) else RoleTable.from_json(_read_text(roles))
    if (table.n_layers, table.n_heads) != (model.cfg.n_layers, model.cfg.n_heads):
        raise InputError(f"the role table describes {table.n_layers} x {table.n_heads} heads, the model has "
                         f"{model.cfg.n_layers} x {model.cfg.n_heads}")
    return table


def _fit(model, seq_len: int) -> int:
    return min(seq_len, model.cfg.n_ctx - 2)


def _read_text(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from err


def _read_result(result) -> dict:
    if isinstance(result, dict):
        return result
    if isinstance(result, (str, os.PathLike)):
        try:
            data = json.loads(_read_text(result))
        except json.JSONDecodeError as err:
            raise InputError(f"{result} is not JSON: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise InputError(f"{result} has no \"results\" list: not a headscope result file")
        return data
    return json.loads(result.to_json())


def _roles_section(page: Page, table: RoleTable, options: ReportOptions) -> None:
    page.heading("Head roles", anchor="roles")
    held = table.held_rows()
    page.table(held, caption=f"{len(table.heads_with_roles())} of {table.n_layers * table.n_heads} heads hold roles",
               max_rows=60)
    page.figure(role_heatmap(table, style=options.style))


def _prompt_tokens(model, options: ReportOptions) -> torch.Tensor:
    """(1, pos) ids: the report's prompt, or a repeated-random prompt for a model whose tokenizer is missing
    or cannot spell the prompt (every token the same unknown id, as a toy model's symbol vocabulary gives)."""
    from headscope.capture.datasets import dataset_for_model

    if model.tokenizer is not None:
        try:
            tokens = model.to_tokens(options.prompt)
        except InputError:  # a vocabulary without these words: the default falls back, a prompt of yours is refused
            if options.prompt != DEFAULT_PROMPT:
                raise
            tokens = None
        if tokens is not None and len(set(tokens[0].tolist())) > 2:
            return tokens

    data = dataset_for_model(model, "repeated-random", seq_len=min(16, _fit(model, 16)), num_prompts=1,
                             seed=options.seed)
    return data.tokens[:1]


def _token_strings(model, tokens: torch.Tensor) -> list[str]:
    if model.tokenizer is not None and model.tokenizer.vocab_size > 1000:
        return model.to_str_tokens(tokens[0])
    return [str(t) for t in tokens[0].tolist()]  # ids read better than a toy vocabulary's symbols


def strongest_heads(table: RoleTable, n: int) -> list[tuple[int, int]]:
    """Up to `n` heads: the strongest holder of each role first, then the next strongest holders."""
    firsts = [holders[0] for role in table.roles if (holders := table.with_role(role))]
    ordered = list(dict.fromkeys([(h.layer, h.head) for h in firsts] +
                                 [(h.layer, h.head) for h in table.heads_with_roles()]))
    return ordered[:n] or [(0, 0)]


def _patterns_section(page: Page, model, table: RoleTable, tokens: torch.Tensor, options: ReportOptions) -> None:
    from headscope.heads import head_name

    heads = strongest_heads(table, options.pattern_heads)
    names = sorted({f"blocks.{l}.attn.hook_pattern" for l, _ in heads})
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.device), names_filter=names, return_type=None)
    patterns = {head_name(l, h): cache[f"blocks.{l}.attn.hook_pattern"][0, h].float().cpu() for l, h in heads}
    strings = _token_strings(model, tokens)
    page.heading("Patterns of the strongest heads", anchor="patterns")
    roles = {row.name: ", ".join(row.roles) or "no role" for row in table.heads}
    page.paragraph("Heads: " + "; ".join(f"{name} ({roles[name]})" for name in patterns) + ".")
    page.figure(pattern_figure(patterns, strings, causal=model.cfg.causal, style=options.style))
    first = next(iter(patterns))
    page.raw(attention_text_html(patterns[first], strings, -1, first))


def _ablation(model, ablation, options: ReportOptions) -> dict | None:
    if ablation is not None:
        return _read_result(ablation)
    if not model.cfg.has_unembed:
        return None
    from headscope.analysis.ablation import sweep
    from headscope.capture.datasets import dataset_for_model

    data = dataset_for_model(model, "repeated-random", seq_len=_fit(model, options.seq_len),
                             num_prompts=options.num_prompts, seed=options.seed)
    return _read_result(sweep(model, data, "zero", "loss", seed=options.seed, n_bootstrap=options.n_bootstrap))


def _effects_section(page: Page, anchor: str, title: str, data: dict | None, cfg, options, missing: str | None) -> None:
    page.heading(title, anchor=anchor)
    if data is None:
        page.paragraph(missing or "not given")
        return
    page.figure(effects_figure(data, cfg.n_layers, cfg.n_heads, style=options.style))
    page.raw(results_html(data, max_rows=12))


def _flow_section(page: Page, model, flow, tokens: torch.Tensor, table: RoleTable, options: ReportOptions) -> None:
    page.heading("Flow graph", anchor="flow")
    if flow is None:
        from headscope.analysis.flow import token_flow

        graph = token_flow(model, tokens, options.flow_method).graph
    else:
        graph = flow if isinstance(flow, nx.Graph) else read_graph(flow)
    if all("head" in d for _, d in graph.nodes(data=True)):  # a head graph: label the heads with their roles
        graph = graph.copy()
        for name, data in graph.nodes(data=True):
            data.setdefault("roles", ";".join(table.head(int(data["layer"]), int(data["head"])).roles))
    method = graph.graph.get("method") or graph.graph.get("composition", "")
    top_k = options.flow_top_k if graph.number_of_edges() > 4 * graph.number_of_nodes() else None
    page.figure(layered_graph_figure(graph, top_k=top_k, style=options.style,
                                     title=f"{method} graph" + (f", the {top_k} strongest edges into each node"
                                                                if top_k else "")))


def read_graph(path) -> nx.DiGraph:
    """A graph file headscope writes (.json node-link, .graphml, .gexf)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".json":
            return json_graph.node_link_graph(json.loads(_read_text(path)), edges="edges")
        if suffix == ".graphml":
            return nx.read_graphml(path)
        if suffix == ".gexf":
            return nx.read_gexf(path)
    except (nx.NetworkXError, KeyError, ValueError) as err:
        raise InputError(f"{path} is not a graph file: {err}") from err
    raise InputError(f"{path}: a graph is read from .json, .graphml or .gexf")


def _provenance_section(page: Page, model_source, inputs: dict, options: ReportOptions, command: str | None) -> None:
    page.heading("Provenance", anchor="provenance")
    file = model_file(model_source)
    rows = [{"what": "model", "value": str(model_source)},
            {"what": "model file", "value": str(file) if file else "not a file on this machine"},
            {"what": "model sha256", "value": sha256_of(file) if file else "–"},
            {"what": "headscope version", "value": headscope.__version__},
            {"what": "command", "value": command or "build_report (Python)"},
            {"what": "seed", "value": options.seed},
            {"what": "computed defaults", "value": f"repeated-random, {options.num_prompts} prompts x {options.seq_len} "
                                                   f"tokens; prompt {options.prompt!r}; flow {options.flow_method}"},
            {"what": "machine", "value": f"{platform.node()}: {platform.platform()}, {os.cpu_count()} CPUs, "
                                         f"python {platform.python_version()}, torch {torch.__version__}, "
                                         f"device {options.device}"},
            {"what": "written", "value": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}]
    rows += [{"what": f"{name} file", "value": f"{path} (sha256 {sha256_of(Path(path))})"} for name, path in inputs.items()]
    page.table(rows, caption="Where every number on this page comes from", max_rows=len(rows))


def model_file(source) -> Path | None:
    """The file or folder a model source names on this machine (a registry name resolves to its cache)."""
    from headscope.loading import registry

    if isinstance(source, str) and source in registry.REGISTRY:
        return registry.cached_path(source)
    if isinstance(source, (str, os.PathLike)) and Path(source).expanduser().exists():
        return Path(source).expanduser().resolve()
    return None


def sha256_of(path: Path) -> str:
    """The sha256 of a file, or of a folder's files (relative name and contents, in name order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
