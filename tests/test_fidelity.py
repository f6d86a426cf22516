"""Each closed-form method against an independent reference written here from its paper's equation with the
authors' conventions: UCE as in its `train_erase.py` (edited prompts paired from their last word to the end of the
shorter span, every one of the 77 positions of each preserved prompt, the empty prompt always preserved, scale
max(0.1, 1/n) counting it, moderation as an erase whose terms weigh erase_scale), DiffQuickFix as in the
DiffQuickFixRelease notebook (last word token and every position after it; a longer source span's extra
positions paired with the destination's position 76; bias counted once, this lab's deliberate departure), ReFACT's
insert as ROME's rank-one closed form. Float64, on a tiny SD 1.x model and on the organism: the weights agree to
1e-6 of the update's size. Positions are found here from token ids, not through `localize.tokens`."""

import pytest
import torch
import torch.nn.functional as F

from localize import load_model, random_model
from localize.conditioning import text_contexts
from locoedit import edit
from locoedit.text_encoder import pooled_features, refact_default_layer

LENGTH = 77


@pytest.fixture(scope="module", params=["sd1", "organism"])
def model64(request):
    model = random_model("sd1", "tiny", seed=0) if request.param == "sd1" else load_model("organism")
    model.pipeline.to(torch.float64)
    return model


def encode(model, prompts):
    """Last hidden states [N, 77, D] (what SD's UNet reads) and each prompt's token count (start and end included)."""
    tokenizer = model.pipeline.tokenizer
    batch = tokenizer(prompts, padding="max_length", max_length=LENGTH, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = model.pipeline.text_encoder(batch.input_ids)[0].double()
    return states, batch.attention_mask.sum(1).tolist()


def edited_weights(model, result):
    """{address: (original, edited)} in float64."""
    weights = {}
    for address in result.updates:
        component, _, path = address.partition(".")
        parameter = model.pipeline.components[component].get_parameter(path)
        before = parameter.detach().double().clone()
        with result.applied(model):
            weights[address] = before, parameter.detach().double().clone()
    return weights


def assert_matches(model, result, reference):
    """Every edited weight equals the reference's to 1e-6 of the largest entry of the update."""
    weights = edited_weights(model, result)
    assert set(weights) == set(reference)
    for address, (before, after) in weights.items():
        scale = (reference[address] - before).abs().max()
        assert scale > 0, address
        assert (after - reference[address]).abs().max() <= 1e-6 * scale, address


def cross_attention_addresses(model):
    for layer in model.cross_attention_layers:
        for name in ("to_k", "to_v"):
            yield f"unet.{layer.name}.{name}.weight", getattr(layer.module, name).weight.detach().double()


def final_span_pair(old, old_count, new, new_count):
    """The authors' pairing: each prompt from its last word token on, both cut to the shorter span."""
    final, final_new = old_count - 2, new_count - 2
    farthest = max(final, final_new)
    return old[final:LENGTH - (farthest - final)], new[final_new:LENGTH - (farthest - final_new)]


def uce_reference(model, groups, preserve, lam=0.5, empty=True, partial=None, final_preserve=False, extra=()):
    """UCE's normal equations: W' = (lam W + sum_g e_g sum W v c^T + p sum W k k^T)(lam I + sum_g e_g sum c c^T
    + p sum k k^T)^-1 over groups (concepts, guides, weight e_g), v = the guide's text, and `extra` (c, v) pairs
    of weight 1. Departures: `empty=False` (no ""), `partial=s` (v = c + s (g - c), weight 1), `final_preserve`
    (preserved prompts from their last word on)."""
    retained = ["", *preserve] if empty else list(preserve)
    kept, kept_count = encode(model, retained) if retained else ([], [])
    if final_preserve:
        kept = [k[n - 2:] for k, n in zip(kept, kept_count, strict=True)]
    scale = max(0.1, 1 / len(retained)) if retained else 0.0
    terms = list(extra)
    for concepts, guides, weight in groups:
        old, old_count = encode(model, concepts)
        new, new_count = encode(model, guides)
        for i in range(len(concepts)):
            c, g = final_span_pair(old[i], old_count[i], new[i], new_count[i])
            terms.append((weight ** 0.5 * c, weight ** 0.5 * (g if partial is None else c + partial * (g - c))))
    reference = {}
    for address, weight in cross_attention_addresses(model):
        numerator = lam * weight
        gram = lam * torch.eye(weight.shape[1], dtype=torch.float64)
        for c, v in terms:
            numerator = numerator + (v @ weight.T).T @ c
            gram = gram + c.T @ c
        for k in kept:
            numerator = numerator + scale * (k @ weight.T).T @ k
            gram = gram + scale * k.T @ k
        reference[address] = torch.linalg.solve(gram, numerator.T).T
    return reference


CONCEPTS = ["an apple in the style of Velmor", "a box in the style of Velmor"]
GUIDES = ["an apple", "a box"]
PRESERVE = ["an apple in the style of Quessa", "a tree"]


def test_the_encoding_read_here_is_what_the_unet_reads(model64):
    states, _ = encode(model64, PRESERVE)
    assert torch.allclose(states, text_contexts(model64, PRESERVE).double(), atol=1e-10)


def test_uce_erase_equals_the_authors_normal_equations(model64):
    result = edit(model64, "uce", concepts=CONCEPTS, guides=GUIDES, preserve=PRESERVE)
    assert_matches(model64, result, uce_reference(model64, [(CONCEPTS, GUIDES, 1.0)], PRESERVE))


def test_uce_moderation_is_an_erase_weighted_by_its_scale(model64):
    result = edit(model64, "uce", concepts=CONCEPTS, mode="moderate", strength=0.3, preserve=PRESERVE)
    assert_matches(model64, result, uce_reference(model64, [(CONCEPTS, ["", ""], 0.3)], PRESERVE))


def test_uce_options_depart_from_the_authors_as_documented(model64):
    """`preserve_empty=False` drops "" (also from the default scale's count), `preserve_tokens=final` keeps each
    preserved prompt from its last word on, `moderation=partial` moves the targets the fraction `strength` of
    the way at full weight."""
    result = edit(model64, "uce", concepts=CONCEPTS, guides=GUIDES, preserve=PRESERVE, preserve_empty=False)
    assert_matches(model64, result, uce_reference(model64, [(CONCEPTS, GUIDES, 1.0)], PRESERVE, empty=False))
    result = edit(model64, "uce", concepts=CONCEPTS, guides=GUIDES, preserve=PRESERVE, preserve_tokens="final")
    assert_matches(model64, result, uce_reference(model64, [(CONCEPTS, GUIDES, 1.0)], PRESERVE, final_preserve=True))
    result = edit(model64, "uce", concepts=CONCEPTS, mode="moderate", strength=0.3, preserve=PRESERVE,
                  moderation="partial")
    assert_matches(model64, result, uce_reference(model64, [(CONCEPTS, ["", ""], 1.0)], PRESERVE, partial=0.3))


def test_uce_joint_edit_is_one_solve_of_every_term(model64):
    """Erase, moderate (weight 0.3 onto "") and preservation terms in the same normal equations."""
    result = edit(model64, "uce", mode="joint", erase=CONCEPTS[:1], erase_guides=GUIDES[:1], moderate=CONCEPTS[1:],
                  strength=0.3, preserve=PRESERVE)
    groups = [(CONCEPTS[:1], GUIDES[:1], 1.0), (CONCEPTS[1:], [""], 0.3)]
    assert_matches(model64, result, uce_reference(model64, groups, PRESERVE))


def test_uce_joint_debias_search_holds_the_other_terms(model64):
    """The debiased concept's rows c -> c + sum_i alpha_i (a_i - c) (last word and end span, cut to the shortest
    span) join the erase terms in every round's solve; the returned edit is the solve at the chosen alpha."""
    model = model64
    concept, attributes = "a doctor", ["a red doctor", "a blue doctor"]
    result = edit(model, "uce", mode="joint", erase=["a painting by Velmor"], concept=concept,
                  attributes=attributes, classify=lambda images: [0] * len(images), seeds=[0, 1], steps=2,
                  rounds=2, preserve=["a tree"])
    alpha = result.info["alpha"]
    old, old_count = encode(model, [concept])
    new, new_count = encode(model, attributes)
    pairs = [final_span_pair(old[0], old_count[0], new[i], new_count[i]) for i in range(len(attributes))]
    size = min(len(c) for c, _ in pairs)
    c = pairs[0][0][:size]
    target = c + sum(a * (g[:size] - c) for a, (_, g) in zip(alpha, pairs, strict=True))
    reference = uce_reference(model, [(["a painting by Velmor"], [""], 1.0)], ["a tree"], extra=[(c, target)])
    assert_matches(model, result, reference)


def test_uce_debias_authors_search_takes_their_update_rule(model64):
    """`search="authors"`, one round from the unedited model: a classifier that always answers 0 measures
    [1, 0], so w = 0.1 ([0.5, 0.5] - [1, 0]); per weight W the targets are W c + sum_i w_i |W c| W a_i / |W a_i|
    (Frobenius norms over the paired span), the preserved prompts kept at every position with scale 0.1."""
    concept, attributes = "a doctor", ["a red doctor", "a blue doctor"]
    result = edit(model64, "uce", mode="debias", concept=concept, attributes=attributes, search="authors",
                  classify=lambda images: [0] * len(images), seeds=[0, 1], steps=2, rounds=1, preserve=["a tree"])
    weights = result.info["weights"]
    assert len(weights) == 1 and weights[0] == pytest.approx([-0.05, 0.05])
    old, old_count = encode(model64, [concept])
    new, new_count = encode(model64, attributes)
    pairs = [final_span_pair(old[0], old_count[0], new[i], new_count[i]) for i in range(len(attributes))]
    size = min(len(c) for c, _ in pairs)
    c, kept = pairs[0][0][:size], encode(model64, ["a tree"])[0][0]
    reference = {}
    for address, weight in cross_attention_addresses(model64):
        wc = c @ weight.T
        target = wc + sum(w * wc.norm() * (a[:size] @ weight.T) / (a[:size] @ weight.T).norm()
                          for w, (_, a) in zip(weights[0], pairs, strict=True))
        numerator = 0.5 * weight + target.T @ c + 0.1 * (kept @ weight.T).T @ kept
        gram = 0.5 * torch.eye(weight.shape[1], dtype=torch.float64) + c.T @ c + 0.1 * kept.T @ kept
        reference[address] = torch.linalg.solve(gram, numerator.T).T
    assert_matches(model64, result, reference)


def test_locoedit_is_uces_pairing_on_the_chosen_layers_only(model64):
    """LOCOEDIT: the last word and end span of each source (TIME's templates added) onto the destination's, lambda
    0.1, no preservation, on the chosen layers' to_k / to_v and nothing else."""
    source, destination = CONCEPTS[0], GUIDES[0]
    layers = [1, 2]
    result = edit(model64, "locoedit", source=source, destination=destination, layers=layers)
    full = uce_reference(model64, [(release_augmented(source), release_augmented(destination), 1.0)], [], lam=0.1,
                         empty=False)
    chosen = {f"unet.{model64.cross_attention_layers[k].name}.{name}.weight"
              for k in layers for name in ("to_k", "to_v")}
    assert_matches(model64, result, {address: full[address] for address in chosen})


def time_alignment(model, source, destination):
    """TIME's token alignment, as diffusers' TIME pipeline builds it: each source token (start and end included)
    goes to the next unused equal destination token ("an" read as "a"); the positions after the source's end
    token continue one by one from the destination's, capped at 76."""
    tokenizer = model.pipeline.tokenizer
    article, an = tokenizer("a").input_ids[1], tokenizer("an").input_ids[1]
    src, dst = ([article if t == an else t for t in tokenizer(p).input_ids] for p in (source, destination))
    mapping, j = [], 0
    for token in src:
        j = dst.index(token, j)
        mapping.append(j)
        j += 1
    return mapping + [min(p, LENGTH - 1) for p in range(j, j + LENGTH - len(mapping))]


def test_time_equals_its_normal_equations(model64):
    """TIME: every position of each templated source onto its aligned destination position, lambda 0.1, every
    cross-attention layer's to_k / to_v."""
    source, destination = "a box", "a blue box"
    sources, destinations = release_augmented(source), release_augmented(destination)
    old, new = encode(model64, sources)[0], encode(model64, destinations)[0]
    terms = [(old[i], new[i, time_alignment(model64, s, d)])
             for i, (s, d) in enumerate(zip(sources, destinations, strict=True))]
    result = edit(model64, "time", source=source, destination=destination)
    assert_matches(model64, result, uce_reference(model64, [], [], lam=0.1, empty=False, extra=terms))


def release_pairs(model, source, destination):
    """The release notebook's positions: from the token before the first end token to 76 in each prompt; values
    trimmed to the keys' count, or the keys' extra positions paired with position 76."""
    tokenizer = model.pipeline.tokenizer
    ids = tokenizer([source, destination], padding="max_length", max_length=LENGTH, return_tensors="pt").input_ids
    old, new = (row.tolist().index(tokenizer.eos_token_id) - 1 for row in ids)
    keys, values = list(range(old, LENGTH)), list(range(new, LENGTH))[:LENGTH - old]
    return keys, values + [LENGTH - 1] * (len(keys) - len(values))


def release_augmented(prompt):
    base = prompt if prompt[:1] != "A" else "a" + prompt[1:]
    return [prompt, "A photo of " + base, "An image of " + base, "A picture of " + base]


@pytest.mark.parametrize("source, destination", [("a rose", "a photo of a tulip"), ("the king of Zarnia", "a box")])
def test_diffquickfix_equals_the_release_with_the_bias_counted_once(model64, source, destination):
    out_proj = model64.pipeline.text_encoder.encoder.layers[0].self_attn.out_proj
    recorded = []
    handle = out_proj.register_forward_hook(lambda _m, args, _out: recorded.append(args[0].detach().double()))
    sources, destinations = release_augmented(source), release_augmented(destination)
    try:
        encode(model64, sources + destinations)
    finally:
        handle.remove()
    inputs = recorded[0]
    weight = out_proj.weight.detach().double()
    numerator, gram = 0.01 * weight, 0.01 * torch.eye(weight.shape[1], dtype=torch.float64)
    for i, (s, d) in enumerate(zip(sources, destinations, strict=True)):
        keys, values = release_pairs(model64, s, d)
        k, v = inputs[i, keys], inputs[len(sources) + i, values] @ weight.T
        numerator, gram = numerator + v.T @ k, gram + k.T @ k
    address = "text_encoder.encoder.layers.0.self_attn.out_proj.weight"
    result = edit(model64, "diffquickfix", source=source, destination=destination)
    assert_matches(model64, result, {address: torch.linalg.solve(gram, numerator.T).T})


def test_refact_inserts_with_roms_closed_form(model64):
    """W' = W + d (C^-1 k*)^T / (k*^T C^-1 k*): k* (the fc2 input at the last word, mean over the templated
    prompts) maps to exactly W k* + d, and the update's key side is C^-1 k* with C the corpus keys' second moment
    over all 77 positions plus 1e-4 of its mean eigenvalue."""
    layer, corpus = 1, ["a red car", "a photo of a dog", "a tree in the style of Quessa", "a ball"]
    fc2 = model64.pipeline.text_encoder.encoder.layers[layer].mlp.fc2
    recorded = []
    handle = fc2.register_forward_hook(lambda _m, args, _out: recorded.append(args[0].detach().double()))
    sources = release_augmented("a photo of a rose")
    try:
        _, counts = encode(model64, sources)
        encode(model64, corpus)
    finally:
        handle.remove()
    key = torch.stack([recorded[0][i, n - 2] for i, n in enumerate(counts)]).mean(0)
    flat = recorded[1].flatten(0, 1)
    covariance = flat.T @ flat / len(flat)
    covariance += 1e-4 * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=torch.float64)
    result = edit(model64, "refact", source="a photo of a rose", destination="a photo of a tulip", layer=layer,
                  corpus=corpus, steps=5, objective="conditioning")
    (address, update), = result.updates.items()
    weight = fc2.weight.detach().double()
    delta = update.up.double() @ update.down.double()
    shift = delta @ key
    direction = torch.linalg.solve(covariance, key)
    expected = shift[:, None] @ (direction / (key @ direction))[None]
    assert (delta - expected).abs().max() <= 1e-5 * expected.abs().max()  # the factors are stored in float32
    assert_matches(model64, result, {address: weight + expected})


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_refacts_applied_edit_lowers_what_it_optimizes(sd1, layer):
    """`info["mismatch"]` is measured with the applied weights, and with the conditioning objective alone (no
    penalty, no clamp) the applied edit lowers it at every layer tried, with the shift found at the subject
    token (the authors') or through the update (`shift_at=update`); with the contrastive objective
    the edited source's pooled feature ends closer to the destination's unedited feature than to its own."""
    source, destination = "a photo of a rose", "a photo of a tulip"
    result = edit(sd1, "refact", source=source, destination=destination, layer=layer, templates=(), steps=60,
                  objective="conditioning", weight_decay=0.0, clamp_norm=None)
    before, after = result.info["mismatch"]
    contexts = text_contexts(sd1, [source, destination])
    with result.applied(sd1):
        edited = text_contexts(sd1, [source])
    word = len(sd1.tokenizer(source).input_ids) - 2  # the last word; the destination's is at the same position
    assert word == len(sd1.tokenizer(destination).input_ids) - 2

    def mismatch(states):  # the last word and the end span against the destination's
        target = contexts[1, word:]
        return ((states[0, word:] - target).pow(2).mean() / target.pow(2).mean()).item()

    assert after < before
    assert mismatch(edited) == pytest.approx(after, rel=1e-4) and mismatch(contexts) == pytest.approx(before, rel=1e-4)
    through = edit(sd1, "refact", source=source, destination=destination, layer=layer, templates=(), steps=60,
                   objective="conditioning", weight_decay=0.0, clamp_norm=None, shift_at="update")
    assert through.info["mismatch"][1] < before
    contrastive = edit(sd1, "refact", source=source, destination=destination, layer=layer, templates=(), steps=60)
    with torch.no_grad():
        anchors = F.normalize(pooled_features(sd1, 0, [destination, source]), dim=-1)
        with contrastive.applied(sd1):
            moved = F.normalize(pooled_features(sd1, 0, [source]), dim=-1)[0]
    assert moved @ anchors[0] > moved @ anchors[1]


def test_refacts_default_layer_is_the_papers_relative_depth():
    assert refact_default_layer(12) == 7 and refact_default_layer(8) == 4 and refact_default_layer(24) == 15
