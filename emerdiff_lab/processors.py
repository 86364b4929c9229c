"""Attention processors that read features, add the modulation offset and inject attention.

Every behaviour EmerDiff needs inside the UNet goes through diffusers' attention-processor
mechanism, installed by :func:`installed_processors` for the length of a ``with`` block and always
restored, also after an exception. What a call reads and changes is held on one
:class:`AttentionControl` shared by the processors (diffusers forwards ``cross_attention_kwargs``
only to processors that name them, so per-call state lives on the objects instead).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

INJECT_NONE = "none"
INJECT_FROM_FIRST = "from_first"  # batched path: element 0 is the unmodulated reference
INJECT_RECORD = "record"          # reference pass: store the probabilities
INJECT_REPLAY = "replay"          # modulated passes reuse the stored probabilities
INJECTION_MODES = (INJECT_NONE, INJECT_FROM_FIRST, INJECT_RECORD, INJECT_REPLAY)


@dataclass
class AttentionControl:
    """What the EmerDiff processors do during the next UNet call(s).

    Attributes:
        capture_layers: layers whose ``to_q`` output is stored in ``captured`` (B, tokens, C).
        offsets: per layer, an offset (B, tokens, 1) added to the attention output (broadcast
            over channels); only present during the modulated step.
        offset_placement: "after_projection" (after ``to_out``) or "before_projection".
        injection: one of ``INJECTION_MODES``.
        recorded: per layer, attention probabilities (heads, queries, keys) of the reference pass
            (``INJECT_RECORD`` fills it, ``INJECT_REPLAY`` applies it to every element).
    """

    capture_layers: frozenset = frozenset()
    captured: dict = field(default_factory=dict)
    offsets: dict = field(default_factory=dict)
    offset_placement: str = "after_projection"
    injection: str = INJECT_NONE
    recorded: dict = field(default_factory=dict)


class EmerDiffAttnProcessor:
    """Attention for one layer, following diffusers' ``AttnProcessor2_0`` plus EmerDiff's hooks.

    Probabilities are materialised only when injection needs them; otherwise attention runs in
    fused SDPA. With ``INJECT_FROM_FIRST`` only element 0 (the unmodulated reference) computes
    its probabilities P, and every element's output is P @ V of its own values: the modulated
    passes keep the reference's attention pattern, as the paper's attention injection asks.
    """

    def __init__(self, name: str, control: AttentionControl):
        self.name = name
        self.control = control

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        control = self.control
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, _, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        # With injection from element 0 only element 0's queries and keys are ever used, so the
        # others' are not computed; replayed probabilities need no queries or keys at all. In
        # cross-attention the values come from the prompt, which every element of a batch
        # shares: with one set of probabilities all outputs are equal, computed once.
        captured = self.name in control.capture_layers
        replay = control.injection == INJECT_REPLAY
        first_only = control.injection == INJECT_FROM_FIRST and not captured
        shared_output = (first_only or replay) and encoder_hidden_states is not None
        query = key = None
        if captured or not replay:
            query = attn.to_q(hidden_states[:1] if first_only else hidden_states)
            if captured:
                control.captured[self.name] = query.detach()
            query = _qk_norm(attn.norm_q, query, attn.heads)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        if not replay:
            key = _qk_norm(attn.norm_k, attn.to_k(context[:1] if first_only else context),
                           attn.heads)
        value = attn.to_v(context[:1] if shared_output else context)

        out = self._attend(attn, query, key, value, attention_mask)  # (B or 1, queries, inner)
        offset = control.offsets.get(self.name)
        if offset is not None and control.offset_placement == "before_projection":
            out = out.expand(batch, -1, -1) + offset.to(out.dtype)
        out = attn.to_out[1](attn.to_out[0](out)).expand(batch, -1, -1)
        if offset is not None and control.offset_placement == "after_projection":
            out = out + offset.to(out.dtype)

        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _attend(self, attn, query, key, value, attention_mask):
        mode = self.control.injection
        if mode == INJECT_NONE:
            return _sdpa(attn, query, key, value, attention_mask)
        if mode == INJECT_FROM_FIRST:
            mask0 = None if attention_mask is None else attention_mask[:attn.heads]
            probs = attn.get_attention_scores(attn.head_to_batch_dim(query[:1]),
                                              attn.head_to_batch_dim(key[:1]), mask0)
            return _apply_probs_to_every_element(attn, probs, value)
        if mode == INJECT_RECORD:
            probs = attn.get_attention_scores(attn.head_to_batch_dim(query),
                                              attn.head_to_batch_dim(key), attention_mask)
            self.control.recorded[self.name] = probs
        else:  # INJECT_REPLAY: one recorded P for every element of the batch
            return _apply_probs_to_every_element(attn, self.control.recorded[self.name], value)
        return attn.batch_to_head_dim(torch.bmm(probs, attn.head_to_batch_dim(value)))


def _qk_norm(norm, x, heads):
    """diffusers' query/key normalisation (``attn.norm_q``/``norm_k``, e.g. PixArt-Sigma's or
    SD3's) on x (B, tokens, inner): per head, as ``AttnProcessor2_0`` applies it, unless the norm
    spans all heads at once (diffusers' ``*_across_heads`` variants)."""
    if norm is None:
        return x
    width = getattr(norm, "normalized_shape", None) or getattr(norm, "dim", None)
    if width is not None and int(torch.Size(width).numel()) == x.shape[-1] and heads > 1:
        return norm(x)
    return norm(x.unflatten(-1, (heads, -1))).flatten(-2)


def _sdpa(attn, query, key, value, attention_mask):
    """Fused scaled-dot-product attention, (B, queries, inner) -> (B, queries, inner)."""
    batch, head_dim = query.shape[0], query.shape[-1] // attn.heads

    def heads_first(x):
        return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    if attention_mask is not None:
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    out = F.scaled_dot_product_attention(heads_first(query), heads_first(key), heads_first(value),
                                         attn_mask=attention_mask, scale=attn.scale)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


def _apply_probs_to_every_element(attn, probs, value):
    """P (heads, queries, keys) of one element applied to V (B, keys, inner) of all B elements.

    One bmm over (heads, keys, B * head_dim) instead of B separate products.
    """
    batch, keys, inner = value.shape
    heads, head_dim = attn.heads, inner // attn.heads
    stacked = value.view(batch, keys, heads, head_dim).permute(2, 1, 0, 3)
    stacked = stacked.reshape(heads, keys, batch * head_dim)
    out = torch.bmm(probs.to(value.dtype), stacked)  # (heads, queries, B * head_dim)
    out = out.view(heads, -1, batch, head_dim).permute(2, 1, 0, 3)
    return out.reshape(batch, -1, inner)


@contextlib.contextmanager
def installed_processors(unet: torch.nn.Module, layers: list[str] | None,
                         control: AttentionControl):
    """Installs :class:`EmerDiffAttnProcessor` on ``layers`` (None: every attention layer), or
    :class:`~emerdiff_lab.joint_processors.EmerDiffJointAttnProcessor` on joint attention
    (:class:`~emerdiff_lab.flux_processors.EmerDiffFluxAttnProcessor` on FLUX's).

    The UNet's own processors (including attention slicing or any custom ones) are restored when
    the block exits, also after an exception. Yields ``control``.
    """
    original = dict(unet.attn_processors)
    names = [key.removesuffix(".processor") for key in original]
    chosen = set(names) if layers is None else set(layers)
    unknown = chosen - set(names)
    if unknown:
        raise ValueError(f"unknown attention layer(s) {sorted(unknown)}; this UNet's attention "
                         f"layers are e.g. {names[:3]}")
    from .flux_processors import EmerDiffFluxAttnProcessor
    from .joint_processors import EmerDiffJointAttnProcessor
    from .layers import is_flux_attention, is_joint_attention

    # Installed module by module (diffusers' set_attn_processor refuses a partial dict), only
    # where chosen. Joint text-image attention gets the joint processor, and so does an
    # image-only attention that diffusers drives with its joint processor (SD3.5's attn2), so
    # that a whole MM-DiT records and replays probabilities one way.
    modules = {name: unet.get_submodule(name) for name in names if name in chosen}
    saved = {name: module.processor for name, module in modules.items()}
    try:
        for name, module in modules.items():
            joint = is_joint_attention(module) or "Joint" in type(saved[name]).__name__
            kind = EmerDiffJointAttnProcessor if joint else EmerDiffAttnProcessor
            if is_flux_attention(module):  # FLUX's own attention class, both block kinds
                kind = EmerDiffFluxAttnProcessor
            module.set_processor(kind(name, control))
        yield control
    finally:
        for name, module in modules.items():
            module.set_processor(saved[name])
