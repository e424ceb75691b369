"""The fast sweep equals one-at-a-time ablation; methods, metrics and bad input behave."""

import dataclasses
import json
import math

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers

from headscope.analysis.ablation import AblationResult, Effect, ablate, sweep
from headscope.analysis.metrics import METRICS, induction_loss_metric, logit_diff_metric
from headscope.analysis.patching.pairs import pairs_dataset
from headscope.capture.datasets import repeated_random_tokens
from headscope.errors import InputError
from headscope.heads import parse_heads
from headscope.model.tokenizer import Tokenizer
from headscope.model.transformer import HookedTransformer
from headscope.progress import ProgressFile
from tests.conftest import TINY_CONFIGS


@pytest.fixture(scope="module")
def dataset():
    return repeated_random_tokens(5, 8, vocab_size=99, seed=0, bos_token_id=98, exclude_ids=[98])


@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa", "neox", "attn-only"])
@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_fast_sweep_equals_one_head_at_a_time(arch, method, dataset):
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS[arch]).eval()
    for metric in ("loss", "kl", "induction-loss"):
        fast = sweep(model, dataset, method, metric, n_bootstrap=20, max_memory=1)  # one variant per pass
        stacked = sweep(model, dataset, method, metric, n_bootstrap=20)  # every head of a layer in one pass
        assert len(fast.effects) == model.cfg.n_layers * model.cfg.n_heads
        for one_pass, many in zip(fast.effects, stacked.effects):
            naive = ablate(model, dataset, list(one_pass.heads), method, metric, n_bootstrap=20).effects[0]
            assert one_pass.value == pytest.approx(naive.value, abs=1e-5)
            assert many.value == pytest.approx(naive.value, abs=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["gpt2", "neox"])  # tied unembedding; unembedding with a bias
def test_metrics_from_hidden_states_equal_the_same_metrics_from_logits(arch, dataset):
    torch.manual_seed(5)
    model = HookedTransformer(TINY_CONFIGS[arch]).eval()
    padded = dataset.subset([0, 1, 2])
    mask = torch.ones_like(padded.tokens)
    mask[1, -3:] = 0  # a prompt with padding at the end
    padded = dataclasses.replace(padded, attention_mask=mask)
    tokens, real = padded.tokens, mask.bool()
    logits = model(tokens, attention_mask=mask)
    hidden = model(tokens, attention_mask=mask, return_type="hidden")
    answers, wrongs = torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
    for metric in (METRICS["loss"], induction_loss_metric(padded), logit_diff_metric(answers, wrongs)):
        assert metric.reads == "hidden"
        from_hidden = metric.of(model, hidden, tokens, real, hidden)
        assert torch.allclose(from_hidden, metric(logits, tokens, real, logits), atol=1e-5)
    # A sweep with a plain callable (which reads logits) equals the built-in metric's sweep.
    plain = sweep(model, dataset, "zero", lambda *args: METRICS["loss"](*args), n_bootstrap=10)
    built_in = sweep(model, dataset, "zero", "loss", n_bootstrap=10)
    assert [e.value for e in plain.effects] == pytest.approx([e.value for e in built_in.effects], abs=1e-5)


def test_layer_sweep_equals_ablating_the_whole_layer(dataset):
    torch.manual_seed(1)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    by_layer = sweep(model, dataset, "zero", "loss", by="layer", n_bootstrap=20)
    assert [e.heads for e in by_layer.effects] == [tuple((l, h) for h in range(4)) for l in range(2)]
    whole = ablate(model, dataset, [(1, h) for h in range(4)], "zero", "loss", n_bootstrap=20).effects[0]
    assert by_layer.effects[1].value == pytest.approx(whole.value, abs=1e-5)


def test_resample_is_reproducible_for_a_seed(dataset):
    torch.manual_seed(2)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    first = ablate(model, dataset, [(0, 1)], "resample", "kl", seed=3).effects[0]
    again = ablate(model, dataset, [(0, 1)], "resample", "kl", seed=3).effects[0]
    other = ablate(model, dataset, [(0, 1)], "resample", "kl", seed=4).effects[0]
    assert first == again and first.value != other.value


def test_effects_and_json_shape(dataset):
    torch.manual_seed(3)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    result = ablate(model, dataset, parse_heads("L1H2,L0H0", 2, 4), "zero", "loss")
    effect = result.effects[0]
    assert effect.delta != 0 and effect.ci[0] <= effect.delta <= effect.ci[1]
    assert effect.value == pytest.approx(result.baseline + effect.delta)
    report = json.loads(result.to_json())
    assert set(report) == {"model", "method", "metric", "baseline", "results", "meta"}
    assert report["results"][0]["heads"] == ["L1H2", "L0H0"] and len(report["results"][0]["ci"]) == 2
    assert {"dataset", "n_prompts", "seed", "headscope_version"} <= set(report["meta"])
    assert AblationResult.from_json(result.to_json()) == result
    with pytest.raises(InputError, match="not a headscope ablation result"):
        AblationResult.from_json('{"model": "m"}')
    kl = ablate(model, dataset, [(0, 0)], "zero", "kl").effects[0]
    assert kl.value > 0 and sweep(model, dataset, "zero", "kl", n_bootstrap=10).grid(2, 4).min() >= 0


@pytest.fixture
def word_tokenizer() -> Tokenizer:
    words = ["<s>", "the", "cat", "dog", "sat", "ran", "big dog", "[UNK]"]
    backend = RustTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return Tokenizer(backend, bos_token_id=0)


@torch.no_grad()
def test_logit_difference_on_prompt_pairs(word_tokenizer, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "the cat", "answer": "sat", "wrong": "ran"}\n'
                     '{"prompt": "the dog the", "answer": "dog", "wrong": "cat"}\n')
    data, answers, wrongs = pairs_dataset(pairs, word_tokenizer)
    assert answers.tolist() == [4, 3] and wrongs.tolist() == [5, 2]
    torch.manual_seed(4)
    model = HookedTransformer(TINY_CONFIGS["gpt2"], word_tokenizer).eval()
    metric = logit_diff_metric(answers, wrongs)
    result = ablate(model, data, [(0, 0)], "zero", metric)
    logits = model(data.tokens, attention_mask=data.attention_mask)
    expected = [float(logits[0, 2, 4] - logits[0, 2, 5]), float(logits[1, 3, 3] - logits[1, 3, 2])]
    assert result.baseline == pytest.approx(sum(expected) / 2, abs=1e-5)


def test_bad_input_is_a_clear_error(word_tokenizer, dataset, tmp_path):
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    with pytest.raises(InputError, match="head L99H0 does not exist"):
        parse_heads("L99H0", 2, 4)
    with pytest.raises(InputError, match="bad head name 'foo'"):
        parse_heads("foo", 2, 4)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        pairs_dataset(empty, word_tokenizer)
    multi = tmp_path / "multi.jsonl"
    multi.write_text('{"prompt": "the", "answer": "big dog", "wrong": "cat"}\n')
    with pytest.raises(InputError, match="answer 'big dog' is 2 tokens, not one"):
        pairs_dataset(multi, word_tokenizer)
    with pytest.raises(InputError, match="unknown ablation method"):
        ablate(model, dataset, [(0, 0)], "shuffle")
    with pytest.raises(InputError, match="unknown metric"):
        ablate(model, dataset, [(0, 0)], "zero", "accuracy")
    with pytest.raises(InputError, match="logit-diff needs the answer and wrong token"):
        ablate(model, dataset, [(0, 0)], "zero", "logit-diff")
    with pytest.raises(InputError, match="induction-loss needs the repeated-random dataset"):
        from headscope.capture.datasets import from_tensor
        ablate(model, from_tensor(dataset.tokens), [(0, 0)], "zero", "induction-loss")
    with pytest.raises(InputError, match="at least two prompts"):
        ablate(model, dataset.subset([0]), [(0, 0)], "resample")


@torch.no_grad()
def test_edge_knockout_equals_renormalising_the_pattern_without_those_keys(dataset):
    from headscope.analysis.ablation import knockout

    torch.manual_seed(7)
    model = HookedTransformer(TINY_CONFIGS["llama-gqa"]).eval()
    result = knockout(model, dataset, [(1, 2)], key_positions=[0, 3], metric="loss", n_bootstrap=20)

    def renormalise(pattern, hook):
        pattern = pattern.clone()
        head = pattern[:, 2]
        kept = head.clone()
        kept[..., [0, 3]] = 0
        rows = kept.sum(-1, keepdim=True) > 0  # rows 0..: row 0 sees only key 0 and is left alone
        pattern[:, 2] = torch.where(rows, kept / kept.sum(-1, keepdim=True).clamp(min=1e-30), head)
        return pattern

    logits = model.run_with_hooks(dataset.tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", renormalise)])
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), dataset.tokens[:, 1:],
                                                 reduction="none").mean(1).mean()
    assert result.effects[0].value == pytest.approx(float(expected), abs=1e-5)
    assert result.effects[0].delta != 0 and result.method == "knockout"
    with pytest.raises(InputError, match="key position 99 is out of range"):
        knockout(model, dataset, [(1, 2)], key_positions=[99])


class Interrupt(Exception):
    pass


@torch.no_grad()
def test_an_interrupted_sweep_resumes_without_rerunning_finished_variants(dataset, tmp_path):
    torch.manual_seed(8)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    passes = []
    count = [(f"blocks.{l}.attn.hook_z", lambda z, hook: passes.append(1)) for l in range(2)]
    with model.hooks(count):
        whole = sweep(model, dataset, "mean", "loss", n_bootstrap=20, max_memory=1)  # one variant per pass
    uninterrupted = len(passes)  # clean pass 2, each layer-0 variant 2 (both layers), each layer-1 variant 1
    progress = tmp_path / "sweep.safetensors"
    passes.clear()

    def stop_at_the_sixth(z, hook):
        passes.append(1)
        if len(passes) == 6:
            raise Interrupt

    with pytest.raises(Interrupt), model.hooks([(f"blocks.{l}.attn.hook_z", stop_at_the_sixth) for l in range(2)]):
        sweep(model, dataset, "mean", "loss", n_bootstrap=20, max_memory=1, resume=progress, save_every_s=0)
    assert progress.exists()
    passes.clear()
    with model.hooks(count):
        resumed = sweep(model, dataset, "mean", "loss", n_bootstrap=20, max_memory=1, resume=progress,
                        save_every_s=0)
    # Interrupted in its sixth hook call, the run had finished one variant (L0H0: two calls) after the
    # clean pass; the rerun does not run it again.
    assert len(passes) == uninterrupted - 2 and resumed == whole
    assert not progress.exists()
    ProgressFile(progress, "another run", keep_finished=True).save(lambda: ({}, {}), final=True)
    with pytest.raises(InputError, match="holds the progress of another run"):
        sweep(model, dataset, "zero", "loss", n_bootstrap=20, resume=progress)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_gpu_sweep_equals_cpu_sweep(dataset):
    torch.manual_seed(9)
    model = HookedTransformer(TINY_CONFIGS["llama-gqa"]).eval()
    on_cpu = sweep(model, dataset, "mean", "induction-loss", n_bootstrap=20)
    on_gpu = sweep(model.to("cuda"), dataset, "mean", "induction-loss", n_bootstrap=20)
    assert [e.value for e in on_gpu.effects] == pytest.approx([e.value for e in on_cpu.effects], abs=1e-4)


def _hand_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over prompts of each prompt's mean -log p(next token) over the real tokens predicted."""
    per_prompt = []
    for b in range(len(tokens)):
        losses = [-float(logits[b, p].double().log_softmax(-1)[tokens[b, p + 1]])
                  for p in range(tokens.shape[1] - 1) if mask[b, p + 1]]
        per_prompt.append(sum(losses) / len(losses))
    return sum(per_prompt) / len(per_prompt)


@torch.no_grad()
def test_mean_ablation_puts_the_mean_of_z_over_real_positions_in_its_place(dataset):
    """The mean of z[:, :, head] over the real (non-padding) positions of every prompt, summed by hand, hooked
    in at every position, gives the value `ablate` and `sweep` report; zero ablation gives another one."""
    torch.manual_seed(11)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    padded = dataset.subset([0, 1, 2, 3])
    mask = torch.ones_like(padded.tokens)
    mask[1, -4:] = 0  # padding, whose z must not enter the mean
    mask[3, -2:] = 0
    padded = dataclasses.replace(padded, attention_mask=mask)
    layer, head = 1, 2
    _, cache = model.run_with_cache(padded.tokens, attention_mask=mask)
    z = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
    total, count = torch.zeros(z.shape[-1], dtype=torch.float64), 0
    for b in range(z.shape[0]):
        for p in range(z.shape[1]):
            if mask[b, p]:
                total += z[b, p].double()
                count += 1
    assert count == mask.numel() - 6
    by_hand = (total / count).float()
    assert not torch.allclose(by_hand, z.mean((0, 1)), atol=1e-4)  # the padding would change the mean

    def put_mean(z, hook):
        z = z.clone()
        z[:, :, head] = by_hand
        return z

    logits = model.run_with_hooks(padded.tokens, attention_mask=mask,
                                  fwd_hooks=[(f"blocks.{layer}.attn.hook_z", put_mean)])
    expected = _hand_loss(logits, padded.tokens, mask)
    baseline = _hand_loss(model(padded.tokens, attention_mask=mask), padded.tokens, mask)
    mean = ablate(model, padded, [(layer, head)], "mean", "loss", n_bootstrap=20)
    assert mean.effects[0].value == pytest.approx(expected, abs=1e-5)
    assert mean.baseline == pytest.approx(baseline, abs=1e-5)
    assert mean.effects[0].delta == pytest.approx(expected - baseline, abs=1e-5)
    swept = sweep(model, padded, "mean", "loss", n_bootstrap=20)
    assert swept.effects[layer * 4 + head].heads == ((layer, head),)
    assert swept.effects[layer * 4 + head].value == pytest.approx(expected, abs=1e-5)
    zero = ablate(model, padded, [(layer, head)], "zero", "loss", n_bootstrap=20).effects[0]
    assert abs(zero.value - expected) > 1e-4  # ten times the tolerance above (a tiny random model's head)


@torch.no_grad()
def test_resample_ablation_of_two_prompts_swaps_their_z(dataset):
    """With two prompts the only derangement is the swap: each prompt's head output becomes the other's, at
    the same positions. One prompt is refused (nothing else to take activations from)."""
    torch.manual_seed(12)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    two = dataset.subset([0, 3])
    layer, head = 0, 1
    _, cache = model.run_with_cache(two.tokens)
    clean_z = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]

    def swap(z, hook):
        z = z.clone()
        z[:, :, head] = clean_z[[1, 0]]
        return z

    logits = model.run_with_hooks(two.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", swap)])
    expected = _hand_loss(logits, two.tokens, torch.ones_like(two.tokens))
    for seed in (0, 1, 2):
        resampled = ablate(model, two, [(layer, head)], "resample", "loss", seed=seed, n_bootstrap=20).effects[0]
        assert resampled.value == pytest.approx(expected, abs=1e-5)
        assert abs(resampled.delta) > 1e-4
    swept = sweep(model, two, "resample", "loss", n_bootstrap=20).effects[layer * 4 + head]
    assert swept.value == pytest.approx(expected, abs=1e-5)
    with pytest.raises(InputError, match="^resample ablation needs at least two prompts$"):
        ablate(model, dataset.subset([2]), [(layer, head)], "resample")


def test_a_result_with_missing_values_reads_back_from_its_json():
    """Strict JSON writes NaN as null; reading it back gives NaN again, not an error."""
    nan = float("nan")
    result = AblationResult("m", "zero", "loss", 1.5, (Effect(((0, 1),), nan, nan, (nan, 0.25)),), {"seed": 0})
    text = result.to_json()
    assert json.loads(text)["results"][0]["delta"] is None
    back = AblationResult.from_json(text).effects[0]
    assert math.isnan(back.value) and math.isnan(back.delta) and math.isnan(back.ci[0]) and back.ci[1] == 0.25
    assert back.heads == ((0, 1),)
    grid = AblationResult.from_json(text).grid(2, 3)
    assert grid.shape == (2, 3) and torch.isnan(grid).all()  # only L0H1 has an effect, and it is NaN


def test_rows_repr_and_table_of_a_result_written_by_hand():
    """Rows come largest |delta| first (whatever its sign), heads by name; the repr and the table say what
    the result is without its tensors."""
    effects = (Effect(((0, 1),), 2.0, 0.5, (0.25, 0.75)), Effect(((1, 0), (1, 3)), 1.0, -1.0, (-1.5, -0.5)),
               Effect(((1, 2),), 1.4, -0.1, (-0.2, 0.0)))
    result = AblationResult("tiny", "mean", "loss", 1.5, effects, {"seed": 0})
    assert result.rows() == [
        {"heads": "L1H0,L1H3", "value": 1.0, "delta": -1.0, "95% interval": [-1.5, -0.5]},
        {"heads": "L0H1", "value": 2.0, "delta": 0.5, "95% interval": [0.25, 0.75]},
        {"heads": "L1H2", "value": 1.4, "delta": -0.1, "95% interval": [-0.2, 0.0]},
    ]
    assert repr(result) == "AblationResult(model='tiny', method='mean', metric='loss', baseline=1.5, effects=3)"
    page = result._repr_html_()
    assert "<caption>tiny: mean ablation, loss baseline 1.5; largest changes first</caption>" in page
    assert page.index("<td>L1H0,L1H3</td>") < page.index("<td>L0H1</td>") < page.index("<td>L1H2</td>")
    grid = result.grid(2, 4)
    assert grid[0, 1] == 0.5 and grid[1, 2] == pytest.approx(-0.1)
    assert torch.isnan(grid[1, 0]) and int(torch.isnan(grid).sum()) == 6  # the pair is no single head


@torch.no_grad()
def test_an_encoder_is_ablated_and_swept_by_the_cosine_of_its_mean_pooled_embedding(dataset):
    """An encoder has no logits: "cosine" (by name or as the Metric object) scores a run by the cosine of its
    mean-pooled final hidden state (real positions only) to the clean run's, by hand here, padding masked in
    every layer; a metric that reads logits is refused in one line."""
    from headscope.analysis.metrics import COSINE

    torch.manual_seed(13)
    model = HookedTransformer(TINY_CONFIGS["bert"]).eval()
    for block in model.blocks:
        block.attn.W_O.mul_(50)  # random heads barely move a pooled embedding; these move it
    data = dataset.subset([0, 1, 2])
    mask = torch.ones_like(data.tokens)
    mask[2, -5:] = 0
    data = dataclasses.replace(data, attention_mask=mask)
    clean = model(data.tokens, attention_mask=mask, return_type="hidden")

    def by_hand(layer: int) -> float:
        """The mean cosine with every head of `layer` zeroed."""
        ablated = model.run_with_hooks(data.tokens, attention_mask=mask, return_type="hidden",
                                       fwd_hooks=[(f"blocks.{layer}.attn.hook_z", lambda z, hook: torch.zeros_like(z))])
        cosines = []
        for b in range(len(data)):
            n = int(mask[b].sum())
            u, v = ablated[b, :n].double().mean(0), clean[b, :n].double().mean(0)
            cosines.append(float(u @ v / (u.norm() * v.norm())))
        return sum(cosines) / len(cosines)

    expected = [by_hand(0), by_hand(1)]
    heads = [(1, h) for h in range(4)]
    for metric in ("cosine", COSINE):
        result = ablate(model, data, heads, "zero", metric, n_bootstrap=20)
        assert result.metric == "cosine" and result.baseline == pytest.approx(1.0, abs=1e-6)
        assert result.effects[0].value == pytest.approx(expected[1], abs=1e-6)
    by_layer = sweep(model, data, "zero", "cosine", by="layer", n_bootstrap=20)
    assert [e.value for e in by_layer.effects] == pytest.approx(expected, abs=1e-6)
    assert max(expected) < 0.99  # the ablations show (a cosine of 1 would hide a metric that ignores them)
    message = ("^metric '{}' reads next-token logits and this model \\(an encoder\\) has none: use the cosine "
               "metric \\(similarity of the mean-pooled embedding to the clean run's\\)$")
    # by name, as the built-in Metric object (which can read hidden states, yet unembeds them) and as a callable
    for metric, name in (("loss", "loss"), (METRICS["loss"], "loss"), (lambda *args: METRICS["loss"](*args), "<lambda>")):
        with pytest.raises(InputError, match=message.format(name)):
            ablate(model, data, heads, "zero", metric)
        with pytest.raises(InputError, match=message.format(name)):
            sweep(model, data, "zero", metric)


def test_the_result_meta_says_what_was_run(dataset):
    model = HookedTransformer(TINY_CONFIGS["attn-only"]).eval()
    result = ablate(model, dataset, [(0, 0)], "zero", "loss", seed=5, n_bootstrap=20)
    assert result.meta["dataset"] == "repeated-random" and result.meta["dataset_meta"] == dataset.meta
    assert result.meta["n_prompts"] == 5 and result.meta["seq_len"] == dataset.tokens.shape[1] == 17
    assert result.meta["seed"] == 5 and "headscope_version" in result.meta


@torch.no_grad()
def test_the_interval_is_the_seeded_percentile_bootstrap_of_the_per_prompt_changes(dataset):
    """ci: 2.5th and 97.5th percentiles of the mean change over prompts resampled with replacement (the
    seeded draws of `n_bootstrap` resamples), per-prompt losses by hand."""
    torch.manual_seed(14)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    layer, head = 0, 3

    def zero(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    ones = torch.ones_like(dataset.tokens)
    ablated = model.run_with_hooks(dataset.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])
    clean = model(dataset.tokens)
    deltas = torch.tensor([_hand_loss(ablated[b:b + 1], dataset.tokens[b:b + 1], ones[b:b + 1])
                           - _hand_loss(clean[b:b + 1], dataset.tokens[b:b + 1], ones[b:b + 1])
                           for b in range(len(dataset))], dtype=torch.float64)
    for seed in (0, 5):
        draws = torch.randint(0, len(deltas), (300, len(deltas)), generator=torch.Generator().manual_seed(seed))
        means = torch.stack([deltas[d].mean() for d in draws])
        want = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
        effect = ablate(model, dataset, [(layer, head)], "zero", "loss", seed=seed, n_bootstrap=300).effects[0]
        assert effect.delta == pytest.approx(float(deltas.mean()), abs=1e-5)
        assert effect.ci == pytest.approx((float(want[0]), float(want[1])), abs=1e-5)
    assert effect.ci[0] < effect.ci[1]


def test_an_empty_dataset_is_refused(dataset):
    model = HookedTransformer(TINY_CONFIGS["attn-only"]).eval()
    empty = dataclasses.replace(dataset, tokens=dataset.tokens[:0])
    for run in (lambda: ablate(model, empty, [(0, 0)]), lambda: sweep(model, empty)):
        with pytest.raises(InputError, match="^the dataset is empty$"):
            run()
