"""Text-encoder edits: DiffQuickFix (attention output projection, closed form) and ReFACT (rank-one MLP edit).

Layers are (encoder, layer) with both indices 0-based: `encoder` in the family's `text_encoders` order, `layer`
in that encoder's execution order (`localize layers`). Token positions index the padded prompt (CLIP: 0 is the
start token). Batch convention: row i of every recorded tensor is prompt i, all prompts encoded as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from importlib import resources
from typing import NamedTuple

import torch
from omegaconf import OmegaConf

from localize.conditioning import encode_contexts
from localize.engine import capturing
from localize.families import TEXT_ENCODER_ARCHS
from localize.model import Model, TextEncoderLayer
from localize.tokens import subject_span, token_ids
from locoedit.edits import Edit, WeightUpdate
from locoedit.params import BIAS_COUNTS, COVARIANCE_TOKENS, REFACT_OBJECTIVES, SHIFT_SITES
from locoedit.prompts import TIME_TEMPLATES, augmented_pairs, check_choice, check_lam, preserved_prompts
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


class Projection(NamedTuple):
    """A text layer's last linear map: the module, its weight's address (what an edit changes) and its site
    address (what the engine reads; `<site>.input` is the edit's keys)."""

    module: torch.nn.Linear
    address: str
    site: str


def linear_of(model: Model, layer: TextEncoderLayer, part: str) -> Projection:
    """The layer's attention output (`attention_out`) or MLP output (`mlp_out`) projection."""
    arch = TEXT_ENCODER_ARCHS[type(model.text_encoders[layer.encoder]).__name__]
    path = getattr(arch, part)
    return Projection(layer.module.get_submodule(path), f"{layer.name}.{path}.weight",
                      f"text_encoder.{layer.encoder}.layers.{layer.index}.{path}")


@contextmanager
def adding(module: torch.nn.Module, add: tuple[torch.Tensor, list[int] | torch.Tensor] | None):
    """Inside, `add` = (vector, where) changes `module`'s output (ReFACT's value search; gradients flow when
    enabled): `where` a list of positions adds the vector at position `where[i]` of row i; `where` a tensor
    `down` [in] adds (x . down) vector at every position with input x, the rank-one weight update vector down^T.
    None adds nothing."""
    if add is None:
        yield
        return
    vector, where = add

    def shift(_module, args, output):
        if isinstance(where, torch.Tensor):
            return output + (args[0] @ where.to(args[0].dtype))[..., None] * vector.to(output.dtype)
        rows = torch.arange(len(where), device=output.device)
        bump = torch.zeros_like(output)
        bump[rows, torch.tensor(where, device=output.device)] = vector.to(output.dtype)
        return output + bump

    handle = module.register_forward_hook(shift)
    try:
        yield
    finally:
        handle.remove()


def encode_recording(model: Model, prompts: Sequence[str], projection: Projection,
                     add: tuple[torch.Tensor, list[int] | torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(contexts N x tokens x features, the projection's inputs N x tokens x in, captured by the engine) for
    `prompts`, encoded as one batch by the family's own encoding, with `add` applied (`adding`)."""
    keys = f"{projection.site}.input"
    with capturing(model, [keys]) as captured, adding(projection.module, add):
        contexts = encode_contexts(model, prompts)
    return contexts, captured[keys][-1]


POOLED_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")


def pooled_features(model: Model, encoder: int, prompts: Sequence[str]) -> torch.Tensor:
    """Text encoder `encoder`'s pooled feature per prompt, N x features, under the caller's grad mode: CLIP's
    final-normed state at the end token, projected when the encoder has a projection (SD-XL's second)."""
    tokenizer = model.tokenizers[encoder]
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(model.device)
    output = model.text_encoders[encoder](ids)
    embeds = getattr(output, "text_embeds", None)
    return output.pooler_output if embeds is None else embeds




def covariance_positions(model: Model, encoder: int, prompt: str, tokens: str) -> list[int]:
    """The positions whose keys count in ReFACT's covariance: every one the encoder produces (`all`), or the
    prompt's own tokens, start to end token, padding excluded (`attended`)."""
    if tokens == "all":
        return list(range(model.tokenizers[encoder].model_max_length))
    return list(range(len(token_ids(model.tokenizers[encoder], prompt))))


def subject_positions(model: Model, encoder: int, sources: list[str], destinations: list[str], source_subject,
                      destination_subject, pairing: str = "trim") -> list[tuple[list[int], list[int]]]:
    """Per pair: (source, destination) positions of the last subject token, then the end span (`subject_span`)."""
    tokenizer = model.tokenizers[encoder]
    return [subject_span(tokenizer, s, d, source_subject, destination_subject, model.spec.max_tokens, pairing)
            for s, d in zip(sources, destinations, strict=True)]




@torch.no_grad()
def diffquickfix(model: Model, source: str | Sequence[str], destination: str | Sequence[str],
                 subject: str | None = None, destination_subject: str | None = None, lam: float = 0.01,
                 templates: Sequence[str] = TIME_TEMPLATES, encoder: int = 0, layer: int = 0,
                 preserve: Sequence[str] = (), preserve_scale: float = 1.0, pairing: str = "last",
                 bias: str = "once") -> dict[str, WeightUpdate]:
    """DiffQuickFix: text encoder `encoder`, layer `layer` (default 0, the causal state tracing finds),
    `self_attn.out_proj`. Keys: its inputs at the source prompts' last subject token (last word when `subject`
    is None) and the end span after it; targets: W applied to the destination prompts' inputs at the paired
    positions (`subject_span`; `pairing="last"`, the release notebook's, pairs a longer source span's extra
    positions with the destination's last position, `"trim"` drops them).

    `bias="once"` (this lab's, on purpose): targets exclude the layer's bias, which the layer adds back.
    `"twice"` is the release notebook's: its targets are the layer's outputs, bias included, so the edited
    layer adds the bias twice at the keys. `preserve` (not in the paper, off by default) keeps the projection's
    output at every token of those prompts, with weight `preserve_scale` (the solver's preservation term)."""
    check_lam(lam)
    check_choice("bias", bias, BIAS_COUNTS)
    projection, pairs, kept = diffquickfix_rows(model, source, destination, subject, destination_subject, templates,
                                                encoder, layer, preserve, pairing)
    keys, targets = (torch.cat(side) for side in zip(*pairs, strict=True))
    problem = RidgeProblem(keys, lam, kept, preserve_scale)
    up, down = problem.factors(problem.linear_residuals(projection.module, targets, bias))
    return {projection.address: WeightUpdate.from_factors(projection.module.weight, up, down)}


def diffquickfix_rows(model: Model, source: str | Sequence[str], destination: str | Sequence[str],
                      subject: str | None, destination_subject: str | None, templates: Sequence[str], encoder: int,
                      layer: int, preserve: Sequence[str], pairing: str
                      ) -> tuple[Projection, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
    """DiffQuickFix's rows (see `diffquickfix`): the edited projection; per templated prompt pair, its keys and the
    targets' inputs [positions, in], the last subject token first, then the end span; the preserved prompts'
    inputs at every token (None without `preserve`)."""
    src, dst = augmented_pairs(source, destination, templates)
    positions = subject_positions(model, encoder, src, dst, subject, destination_subject, pairing)
    projection = linear_of(model, text_layer(model, encoder, layer), "attention_out")
    preserve = preserved_prompts(preserve, src)
    _, inputs = encode_recording(model, src + dst + preserve, projection)
    pairs = [(inputs[i, p], inputs[len(src) + i, q]) for i, (p, q) in enumerate(positions)]
    kept = inputs[len(src) + len(dst):].flatten(0, 1) if preserve else None
    return projection, pairs, kept


def default_corpus(model: Model) -> list[str]:
    """Prompts whose keys estimate ReFACT's key covariance: the world's captions for a family that has one
    (the organism, `Family.ground_truth`), the lab's object, style and fact prompt sets (with their neutral
    prompts) for real models."""
    if model.spec.ground_truth is not None:
        return model.spec.ground_truth.captions()
    prompts = []
    for name in ("objects", "styles", "facts"):
        config = OmegaConf.load(str(resources.files("localize.conf") / "prompts" / f"{name}.yaml"))
        for entry in config.entries:
            prompts += [entry.prompt] + [p for p in (entry.get("altered"), entry.get("neutral")) if p]
    return list(dict.fromkeys(prompts))


REFACT_DEPTH = 7 / 11  # RoAD's best layer in the ReFACT paper: 7 of CLIP ViT-L's layers 0..11
LOGIT_SCALE = 100.0  # CLIP's trained logit scale (exp 4.6052), the contrastive objective's temperature


def refact_default_layer(layers: int) -> int:
    """The layer at ReFACT's relative depth (`REFACT_DEPTH` of the way from the first layer to the last)."""
    return round(REFACT_DEPTH * (layers - 1))


def rank_one_direction(key: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """ROME's closed form W' = W + d down^T with down = C^-1 k / (k^T C^-1 k), float64 [in]: it maps k exactly
    to W k + d and, among all such W', changes W least in the key covariance's norm, tr(dW C dW^T)."""
    direction = torch.linalg.solve(covariance.double(), key.double())
    return direction / (key.double() @ direction)


def refact(model: Model, source: str | Sequence[str], destination: str | Sequence[str],
           subject: str | None = None, destination_subject: str | None = None, layer: int | None = None,
           encoder: int = 0, templates: Sequence[str] = TIME_TEMPLATES, corpus: Sequence[str] | None = None,
           steps: int = 100, learning_rate: float = 0.1, weight_decay: float = 0.1, clamp_norm: float | None = 4.0,
           lam: float | None = None, objective: str = "contrastive", shift_at: str = "subject",
           covariance_tokens: str = "all", seed: int = 0) -> tuple[dict[str, WeightUpdate], dict]:
    """ReFACT: a rank-one edit of the MLP output projection of text encoder `encoder`, layer `layer` (default
    `refact_default_layer`: the paper's best RoAD layer, 7 of CLIP ViT-L's 12, at the same relative depth).

    The key k* is the projection's input at the source's last subject token (mean over the templated prompts).
    A shift d of the projection's output there is optimized (Adam, `steps`), as the authors' `compute_v` does:
    penalty `weight_decay` |d| / |v|^2 and |d| clamped to `clamp_norm` |v| after each step (None: no clamp),
    with v the projection's unedited output at k*.
    `objective="contrastive"` (the paper's, text side) makes each templated source prompt's pooled feature
    closer, in cosine at CLIP's logit scale, to the destination's unedited feature than to the source's own
    unedited feature; `"conditioning"` (this lab's, for encoders without a pooled feature such as IF's T5) makes
    the source's conditioning at the last subject token and end span match the destination's at the paired
    positions. The weight update is ROME's closed form (`rank_one_direction`): k* maps exactly to W k* + d,
    with the key covariance C the mean outer product of the projection's inputs over the `corpus` prompts, plus
    `lam` I (default 1e-4 of its mean eigenvalue, so that C is invertible when the corpus does not span the
    width). `covariance_tokens="all"` (this lab's default) counts every position the UNet reads, padding
    included; `"attended"` counts each prompt's own tokens, as the authors' statistics do. On the organism the
    `attended` edit moves the empty prompt's conditioning (classifier-free guidance's unconditional half) 8
    times as far and no longer draws the new fact (`scripts/organism_edits.py`).

    `shift_at="subject"` is the authors': d is added at the subject token only, then inserted, and the update
    also moves other positions (the end span) as that search never saw. `"update"` (this lab's option)
    optimizes d through the update itself, so what is optimized is what is applied.

    Returns the update and `info`: "mismatch" [before, after], the squared error of the source's conditioning
    at the matched positions against the destination's, over the destination's mean square, measured with the
    original and with the applied edited weights; "loss" [first, last] of the optimization."""
    if steps < 1 or not learning_rate > 0 or not (clamp_norm is None or clamp_norm > 0):
        raise ValueError(f"steps must be >= 1, learning_rate > 0 and clamp_norm > 0, got steps={steps!r}, "
                         f"learning_rate={learning_rate!r}, clamp_norm={clamp_norm!r}")
    check_choice("objective", objective, REFACT_OBJECTIVES)
    check_choice("shift_at", shift_at, SHIFT_SITES)
    check_choice("covariance_tokens", covariance_tokens, COVARIANCE_TOKENS)
    kind = type(model.text_encoders[encoder]).__name__ if 0 <= encoder < len(model.text_encoders) else None
    if objective == "contrastive" and kind is not None and kind not in POOLED_ENCODERS:
        raise ValueError(f"objective='contrastive' reads a pooled CLIP text feature, which text encoder {encoder} "
                         f"({kind}) does not have; use objective='conditioning'")
    n_layers = sum(entry.encoder == encoder for entry in model.text_encoder_layers)
    layer = refact_default_layer(n_layers) if layer is None else layer
    projection = linear_of(model, text_layer(model, encoder, layer), "mlp_out")
    linear, address = projection.module, projection.address
    src, dst = augmented_pairs(source, destination, templates)
    positions = subject_positions(model, encoder, src, dst, subject, destination_subject)
    subject_tokens = [p[0] for p, _ in positions]
    corpus = list(corpus or default_corpus(model))
    with torch.no_grad():
        inputs = encode_recording(model, corpus, projection)[1]
        corpus_keys = torch.cat([inputs[i, covariance_positions(model, encoder, prompt, covariance_tokens)]
                                 for i, prompt in enumerate(corpus)]).double()
        covariance = corpus_keys.T @ corpus_keys / len(corpus_keys)
        lam = 1e-4 * covariance.diagonal().mean().item() if lam is None else lam
        check_lam(lam)
        covariance += lam * torch.eye(len(covariance), dtype=covariance.dtype, device=covariance.device)
        destination_contexts = encode_recording(model, dst, projection)[0].float()
        source_contexts, source_inputs = encode_recording(model, src, projection)
        key = torch.stack([source_inputs[i, p] for i, p in enumerate(subject_tokens)]).double().mean(0)
        bias = None if linear.bias is None else linear.bias.double()
        value_norm = torch.nn.functional.linear(key, linear.weight.double(), bias).norm().float()
        matched = torch.cat([destination_contexts[i, q] for i, (_, q) in enumerate(positions)])
        down = rank_one_direction(key, covariance)
        if objective == "contrastive":
            anchors = torch.stack([pooled_features(model, encoder, dst), pooled_features(model, encoder, src)], 1)
            anchors = torch.nn.functional.normalize(anchors.float(), dim=-1)  # N x (destination, source) x features

    def mismatch(contexts: torch.Tensor) -> float:
        edited = torch.cat([contexts[i, p] for i, (p, _) in enumerate(positions)]).float()
        return ((edited - matched).pow(2).mean() / matched.pow(2).mean()).item()

    def loss_of(shift: torch.Tensor) -> torch.Tensor:
        added = (shift, down.float().to(model.device) if shift_at == "update" else subject_tokens)
        if objective == "contrastive":
            with adding(linear, added):
                features = torch.nn.functional.normalize(pooled_features(model, encoder, src).float(), dim=-1)
            logits = LOGIT_SCALE * torch.einsum("nf,nkf->nk", features, anchors)
            return -torch.log_softmax(logits, dim=1)[:, 0].mean()
        contexts = encode_recording(model, src, projection, add=added)[0].float()
        edited = torch.cat([contexts[i, p] for i, (p, _) in enumerate(positions)])
        return (edited - matched).pow(2).mean() / matched.pow(2).mean()

    generator = torch.Generator().manual_seed(seed)
    shift = (1e-3 * torch.randn(linear.out_features, generator=generator)).to(model.device).requires_grad_()
    optimizer = torch.optim.Adam([shift], lr=learning_rate)
    frozen = [p for module in model.text_side for p in module.parameters()]  # only the shift gets gradients
    requires = [p.requires_grad for p in frozen]
    losses = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_of(shift)
            if not loss.requires_grad:
                raise RuntimeError(f"ReFACT: no gradient reaches the value shift through the {model.family} "
                                   "family's text encoding (does it run under torch.no_grad?)")
            losses.append(loss.item())
            (loss + weight_decay * shift.norm() / value_norm ** 2).backward()
            optimizer.step()
            if clamp_norm is not None:
                with torch.no_grad():
                    shift.mul_((clamp_norm * value_norm / shift.norm()).clamp(max=1.0))
    finally:
        for p, flag in zip(frozen, requires, strict=True):
            p.requires_grad_(flag)
    up = shift.detach().double()[:, None].to(linear.weight.device)
    update = WeightUpdate.from_factors(linear.weight, up, down[None].to(linear.weight.device))
    with torch.no_grad(), Edit("refact", model.family, {}, {address: update}).applied(model):
        after = mismatch(encode_contexts(model, src))
    return {address: update}, {"mismatch": [mismatch(source_contexts), after], "loss": [losses[0], losses[-1]]}
