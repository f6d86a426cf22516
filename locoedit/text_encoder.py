"""Text-encoder edits: DiffQuickFix (attention output projection, closed form) and ReFACT (rank-one MLP edit).

Layers are (encoder, layer) with both indices 0-based: `encoder` in the family's `text_encoders` order, `layer`
in that encoder's execution order (`localize layers`). Token positions index the padded prompt (CLIP: 0 is the
start token). Batch convention: row i of every recorded tensor is prompt i, all prompts encoded as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import torch
from omegaconf import OmegaConf

from localize.conditioning import encode_contexts
from localize.families import TEXT_ENCODER_ARCHS
from localize.model import Model, TextEncoderLayer
from localize.tokens import subject_span
from locoedit.edits import WeightUpdate
from locoedit.prompts import TIME_TEMPLATES, augmented_pairs, check_lam, preserved_prompts
from locoedit.solver import RidgeProblem


def text_layer(model: Model, encoder: int, layer: int) -> TextEncoderLayer:
    """Layer `layer` of text encoder `encoder`; a clear error for indices the model does not have."""
    encoders = len(model.text_encoders)
    if not isinstance(encoder, int) or not 0 <= encoder < encoders:
        raise ValueError(f"text encoder {encoder!r} does not exist: this model has {encoders} (0..{encoders - 1})")
    layers = [entry for entry in model.text_encoder_layers if entry.encoder == encoder]
    if not isinstance(layer, int) or not 0 <= layer < len(layers):
        raise ValueError(f"text encoder {encoder} has no layer {layer!r}: it has {len(layers)} (0..{len(layers) - 1})")
    return layers[layer]


def linear_of(model: Model, layer: TextEncoderLayer, part: str) -> tuple[torch.nn.Linear, str]:
    """The layer's attention output (`attention_out`) or MLP output (`mlp_out`) projection, and its address."""
    arch = TEXT_ENCODER_ARCHS[type(model.text_encoders[layer.encoder]).__name__]
    path = getattr(arch, part)
    return layer.module.get_submodule(path), f"{layer.name}.{path}.weight"


def encode_recording(model: Model, prompts: Sequence[str], module: torch.nn.Module,
                     add: tuple[torch.Tensor, list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(contexts N x tokens x features, `module`'s inputs N x tokens x in) for `prompts`, encoded as one batch by
    the family's own encoding. `add` = (vector, positions): the vector is added to `module`'s output at
    position `positions[i]` of row i (ReFACT's value search); gradients flow when enabled."""
    recorded = {}

    def record(_module, args):
        recorded["inputs"] = args[0]

    def shift(_module, _args, output):
        vector, positions = add
        rows = torch.arange(len(positions), device=output.device)
        bump = torch.zeros_like(output)
        bump[rows, torch.tensor(positions, device=output.device)] = vector.to(output.dtype)
        return output + bump

    handles = [module.register_forward_pre_hook(record)]
    if add is not None:
        handles.append(module.register_forward_hook(shift))
    try:
        contexts = encode_contexts(model, prompts)
    finally:
        for handle in handles:
            handle.remove()
    return contexts, recorded["inputs"]


def subject_positions(model: Model, encoder: int, sources: list[str], destinations: list[str], source_subject,
                      destination_subject) -> list[tuple[list[int], list[int]]]:
    """Per pair: (source, destination) positions of the last subject token, then the end span (`subject_span`)."""
    tokenizer = model.tokenizers[encoder]
    return [subject_span(tokenizer, s, d, source_subject, destination_subject, model.spec.max_tokens)
            for s, d in zip(sources, destinations, strict=True)]


@torch.no_grad()
def diffquickfix(model: Model, source: str | Sequence[str], destination: str | Sequence[str],
                 subject: str | None = None, destination_subject: str | None = None, lam: float = 0.01,
                 templates: Sequence[str] = TIME_TEMPLATES, encoder: int = 0, layer: int = 0,
                 preserve: Sequence[str] = (), preserve_scale: float = 1.0,
                 bias_in_targets: bool = False) -> dict[str, WeightUpdate]:
    """DiffQuickFix: text encoder `encoder`, layer `layer` (default 0, the causal state tracing finds),
    `self_attn.out_proj`. Keys: its inputs at the source prompts' last subject token (last word when `subject`
    is None) and the end span after it; targets: W applied to the destination prompts' inputs at the paired
    positions, without the bias (the layer adds it back, so counting it in the target would add it twice).
    `bias_in_targets=True` is the DiffQuickFixRelease notebook's convention (targets are the layer's outputs,
    bias included, so the edited layer adds the bias twice at the keys); off by default because it is wrong.
    `preserve` (not in the paper, off by default) keeps the projection's output at every token of those prompts,
    with weight `preserve_scale` (the solver's preservation term)."""
    check_lam(lam)
    src, dst = augmented_pairs(source, destination, templates)
    positions = subject_positions(model, encoder, src, dst, subject, destination_subject)
    projection, address = linear_of(model, text_layer(model, encoder, layer), "attention_out")
    preserve = preserved_prompts(preserve, src)
    _, inputs = encode_recording(model, src + dst + preserve, projection)
    keys = torch.cat([inputs[i, p] for i, (p, _) in enumerate(positions)])
    targets = torch.cat([inputs[len(src) + i, q] for i, (_, q) in enumerate(positions)])
    kept = inputs[len(src) + len(dst):].flatten(0, 1) if preserve else None
    problem = RidgeProblem(keys, lam, kept, preserve_scale)
    residuals = problem.input_residuals(projection.weight, targets)
    if bias_in_targets and projection.bias is not None:
        residuals = residuals + projection.bias.to(residuals)
    up, down = problem.factors(residuals)
    return {address: WeightUpdate.from_factors(projection.weight, up, down)}


def default_corpus(model: Model) -> list[str]:
    """Prompts whose keys estimate ReFACT's key covariance: the organism's world captions for the organism, the
    lab's object, style and fact prompt sets (with their neutral prompts) for real models."""
    if model.family == "organism":
        from localize.organism.world import TRAIN_TEMPLATES, all_subjects

        return [template.format(subject.phrase) for subject in all_subjects() for template in TRAIN_TEMPLATES]
    prompts = []
    for name in ("objects", "styles", "facts"):
        config = OmegaConf.load(str(resources.files("localize.conf") / "prompts" / f"{name}.yaml"))
        for entry in config.entries:
            prompts += [entry.prompt] + [p for p in (entry.get("altered"), entry.get("neutral")) if p]
    return list(dict.fromkeys(prompts))


def refact(model: Model, source: str | Sequence[str], destination: str | Sequence[str],
           subject: str | None = None, destination_subject: str | None = None, layer: int | None = None,
           encoder: int = 0, templates: Sequence[str] = TIME_TEMPLATES, corpus: Sequence[str] | None = None,
           steps: int = 100, learning_rate: float = 0.1, weight_decay: float = 1e-3, preserve_scale: float = 1.0,
           lam: float | None = None, seed: int = 0) -> tuple[dict[str, WeightUpdate], dict]:
    """ReFACT: a rank-one edit of the MLP output projection of text encoder `encoder`, layer `layer` (default: the
    middle layer), ROME-style. The key k* is the projection's input at the source's last subject token (mean
    over the templated prompts); the value shift d is optimized (Adam, `steps`) so that the edited source
    prompts' text conditioning at the last subject token and end span matches the destination's at the paired
    positions, with an L2 penalty `weight_decay` (the paper matches the pooled CLIP text feature contrastively;
    this lab matches the conditioning the UNet reads, which every family has); the solver then finds the least
    change of W that maps k* to W k* + d while keeping the corpus keys' outputs (their mean second moment,
    scaled by `preserve_scale`; `lam` defaults to 1e-4 of its mean eigenvalue). Returns the update and
    {"mismatch": [first, last]}: the matched positions' squared error over the destination's mean square, at
    the first and last Adam step."""
    if steps < 1 or not learning_rate > 0:
        raise ValueError(f"steps must be >= 1 and learning_rate > 0, got steps={steps!r}, "
                         f"learning_rate={learning_rate!r}")
    n_layers = sum(entry.encoder == encoder for entry in model.text_encoder_layers)
    layer = n_layers // 2 if layer is None else layer
    projection, address = linear_of(model, text_layer(model, encoder, layer), "mlp_out")
    src, dst = augmented_pairs(source, destination, templates)
    positions = subject_positions(model, encoder, src, dst, subject, destination_subject)
    with torch.no_grad():
        corpus_keys = encode_recording(model, list(corpus or default_corpus(model)), projection)[1]
        corpus_keys = corpus_keys.flatten(0, 1).double()
        second_moment = corpus_keys.T @ corpus_keys / len(corpus_keys)
        lam = 1e-4 * second_moment.diagonal().mean().item() if lam is None else lam
        check_lam(lam)
        destination_contexts = encode_recording(model, dst, projection)[0].float()
        source_inputs = encode_recording(model, src, projection)[1]
        subject_tokens = [p[0] for p, _ in positions]
        key = torch.stack([source_inputs[i, p] for i, p in enumerate(subject_tokens)]).double().mean(0)
    target = torch.cat([destination_contexts[i, q] for i, (_, q) in enumerate(positions)])
    scale = target.pow(2).mean()
    generator = torch.Generator().manual_seed(seed)
    shift = (1e-3 * torch.randn(projection.out_features, generator=generator)).to(model.device).requires_grad_()
    optimizer = torch.optim.Adam([shift], lr=learning_rate)
    frozen = [p for module in model.text_side for p in module.parameters()]  # only the shift gets gradients
    requires = [p.requires_grad for p in frozen]
    mismatches = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for _ in range(steps):
            optimizer.zero_grad()
            contexts = encode_recording(model, src, projection, add=(shift, subject_tokens))[0].float()
            edited = torch.cat([contexts[i, p] for i, (p, _) in enumerate(positions)])
            mismatch = (edited - target).pow(2).mean() / scale
            if not mismatch.requires_grad:
                raise RuntimeError(f"ReFACT: no gradient reaches the value shift through the {model.family} "
                                   "family's text encoding (does it run under torch.no_grad?)")
            mismatches.append(mismatch.item())
            loss = mismatch + weight_decay * shift.pow(2).mean()
            loss.backward()
            optimizer.step()
    finally:
        for p, flag in zip(frozen, requires, strict=True):
            p.requires_grad_(flag)
    problem = RidgeProblem(key[None], lam, preserve_gram=second_moment, preserve_scale=preserve_scale)
    up, down = problem.factors(shift.detach().double()[None].to(key.device))
    return ({address: WeightUpdate.from_factors(projection.weight, up, down)},
            {"mismatch": [mismatches[0], mismatches[-1]]})
