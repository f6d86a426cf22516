"""The states causal tracing restores, one at a time, and the token roles that group text positions.

- Denoiser states (group `unet`): the output of every resnet, self-attention, cross-attention and feed-forward
  module of every down / mid / up block of a UNet (`Model.unet_components`, execution order); for a DiT, each
  block's image-stream and text-stream outputs (kinds `image`, `text`; sites `block.K.*`, `single.K.*`).
  Restored in every CFG half at every denoising step of the step range.
- Text-encoder states: the self-attention and MLP outputs (before the residual add) of every layer of every
  text encoder, at one token position of the prompt (start token to end token), plus one state for the whole
  padding span after the end token. Restored in the conditional half (the unconditional prompt is empty).

Token roles, for averaging positions over prompts of different lengths: `start` (CLIP's start token),
`before` (prompt tokens before the attribute), `attribute` (the attribute's tokens but its last),
`attribute_last`, `after`, `end` (the end-of-text token), `padding`.
"""

from __future__ import annotations

from dataclasses import dataclass

from causal_tracing.settings import DIT_KINDS, TEXT_KINDS, UNET_KINDS
from localize.model import DIT_BLOCK_LISTS, Model
from localize.tokens import token_ids

TOKEN_ROLES = ("start", "before", "attribute", "attribute_last", "after", "end", "padding")


@dataclass(frozen=True)
class State:
    """One restorable state. `group`: `unet` or `text_encoder`. `kind`: a UNet component kind or a text sublayer.

    `location`: the UNet block (`down_blocks.0`, `mid_block`, `up_blocks.2`) or `text_encoder.E`. `layer`: the
    UNet component's index (execution order) or the text-encoder layer's index. `tokens`: the restored token
    positions (text states only), `token_role` their role.
    """

    site: str
    group: str
    kind: str
    location: str
    layer: int
    tokens: tuple[int, ...] | None = None
    token_role: str | None = None

    @property
    def key(self) -> str:
        """What effects are averaged over: the site, and for text states the token role."""
        return self.site if self.tokens is None else f"{self.site}@{self.token_role}"


def denoiser_kinds(model: Model) -> tuple[str, ...]:
    """The state kinds of the model's denoiser."""
    return UNET_KINDS if model.spec.denoiser == "unet" else DIT_KINDS


def unet_states(model: Model, kinds=None) -> list[State]:
    """The denoiser's states of `kinds` (None: all its kinds); kinds the model does not have are an error."""
    valid = denoiser_kinds(model)
    kinds = valid if kinds is None else tuple(kinds)
    foreign = [kind for kind in kinds if kind not in valid]
    if foreign:
        raise ValueError(f"state kind(s) {foreign} do not exist in the {model.family} family's "
                         f"{type(model.denoiser).__name__}; its kinds: {', '.join(valid)}")
    if model.spec.denoiser == "unet":
        return [State(f"unet.{c.name}", "unet", c.kind, c.block, c.index)
                for c in model.unet_components if c.kind in kinds]
    return [State(f"{kind}.{k}.{stream}", "unet", stream, c.block, c.index)  # a DiT: each block's streams
            for kind in DIT_BLOCK_LISTS.values() for k, c in enumerate(model.dit_blocks(kind)) for stream in kinds
            if not (stream == "text" and getattr(c.module, "context_pre_only", False))]  # SD3's last: no text out


def token_roles(tokenizer, prompt: str, attribute_positions: list[int], length: int) -> list[str]:
    """The role of each of the `length` encoded positions of `prompt`."""
    ids = token_ids(tokenizer, prompt, limit=length)
    first, last = attribute_positions[0], attribute_positions[-1]
    roles = []
    for position in range(length):
        if position >= len(ids):
            roles.append("padding")
        elif position == len(ids) - 1 and ids[position] == tokenizer.eos_token_id:
            roles.append("end")
        elif position == 0 and ids[0] == tokenizer.bos_token_id:
            roles.append("start")
        elif position < first:
            roles.append("before")
        elif position < last:
            roles.append("attribute")
        elif position == last:
            roles.append("attribute_last")
        else:
            roles.append("after")
    return roles


def text_states(model: Model, roles_by_encoder: list[list[str]], kinds=TEXT_KINDS) -> list[State]:
    """Every (encoder, layer, kind) at each prompt position, and once for the padding span.

    `roles_by_encoder[e]`: the roles of encoder e's positions (`token_roles` with its tokenizer).
    """
    states = []
    for layer in model.text_encoder_layers:
        roles = roles_by_encoder[layer.encoder]
        padding = tuple(p for p, role in enumerate(roles) if role == "padding")
        for kind in kinds:
            site = f"text_encoder.{layer.encoder}.layers.{layer.index}.{kind}"
            location = f"text_encoder.{layer.encoder}"
            states += [
                State(site, "text_encoder", kind, location, layer.index, (p,), role)
                for p, role in enumerate(roles) if role != "padding"
            ]
            if padding:
                states.append(State(site, "text_encoder", kind, location, layer.index, padding, "padding"))
    return states
