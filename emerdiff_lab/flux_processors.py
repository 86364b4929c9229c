"""EmerDiff's processor for FLUX.1's attention (diffusers' ``FluxAttention``), both block kinds.

FLUX joins the text tokens *before* the image tokens, [text, image] (the reverse of SD3's
[image, text]), and rotates queries and keys of the joined sequence with a 3-axis RoPE (text ids
(0, 0, 0), image ids (0, row, col)). This processor follows diffusers' ``FluxAttnProcessor``
(per-head RMS q/k norms, then RoPE with diffusers' own ``apply_rotary_emb``) and adds EmerDiff's
hooks on the image tokens:

- **double-stream blocks** (``transformer_blocks.i.attn``): text and image arrive apart
  (``encoder_hidden_states`` and ``hidden_states``) and leave apart, the image through
  ``to_out`` and the text through ``to_add_out``. Features: ``to_q`` of the image tokens before
  the q norm and RoPE, (B, image tokens, inner). The offset goes on the image tokens' output
  after ``to_out`` (or before it), which the block then multiplies by its AdaLN gate
  ``gate_msa``, as in SD3.
- **single-stream blocks** (``single_transformer_blocks.i.attn``): one joined sequence arrives
  (the block concatenated [text, image] and normed it) and the attention has no ``to_out``: its
  output is concatenated with the MLP branch and goes through the block's ``proj_out`` and gate.
  The image tokens are the slice ``[:, text_tokens:]``; the text length is not in the
  processor's inputs, so :func:`carry_text_length` sets it before every call (the FLUX
  architecture does). Features: the image slice of ``to_q``'s output. The offset can only go on
  the attention output before ``proj_out`` (``offset_placement="before_projection"``); the
  default ``"after_projection"`` has no place here and is refused with a ValueError.
- attention injection over the whole joined sequence: probabilities (heads, N, N), N = text +
  image tokens, of the unmodulated element applied to every element's values, as for SD3.
"""

from __future__ import annotations

import torch

from .processors import (INJECT_FROM_FIRST, INJECT_NONE, INJECT_RECORD, INJECT_REPLAY,
                         EmerDiffAttnProcessor, _apply_probs_to_every_element)


class EmerDiffFluxAttnProcessor(EmerDiffAttnProcessor):
    """FLUX attention with EmerDiff's hooks (see the module docstring).

    Attributes:
        text_tokens: text tokens at the front of a single-stream block's sequence, set by
            :func:`carry_text_length` before each transformer call (None until then: a
            single-stream call that needs it raises).
    """

    text_tokens: int | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        control = self.control
        double = encoder_hidden_states is not None
        text_len = encoder_hidden_states.shape[1] if double else self._text_len()
        captured = self.name in control.capture_layers
        replay = control.injection == INJECT_REPLAY
        # With injection from element 0 only its queries and keys are used; replay needs none.
        first_only = control.injection == INJECT_FROM_FIRST and not captured

        value = attn.to_v(hidden_states)                               # (B, S, inner)
        if double:
            value = torch.cat([attn.add_v_proj(encoder_hidden_states), value], dim=1)
        query = key = None
        if captured or not replay:
            tokens = hidden_states[:1] if first_only else hidden_states
            query = attn.to_q(tokens)
            if captured:  # the image tokens' queries, before the q norm and RoPE
                control.captured[self.name] = (query if double else query[:, text_len:]).detach()
            query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))  # (B, S, H, D)
            key = attn.norm_k(attn.to_k(tokens).unflatten(-1, (-1, attn.head_dim)))
            if double:
                texts = encoder_hidden_states[:1] if first_only else encoder_hidden_states
                text_query = attn.norm_added_q(
                    attn.add_q_proj(texts).unflatten(-1, (-1, attn.head_dim)))
                text_key = attn.norm_added_k(
                    attn.add_k_proj(texts).unflatten(-1, (-1, attn.head_dim)))
                query, key = torch.cat([text_query, query], 1), torch.cat([text_key, key], 1)
            if image_rotary_emb is not None:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        out = self._attend_joined(attn, query, key, value, attention_mask)  # (B, S, inner)
        offset = control.offsets.get(self.name)
        if not double:
            if offset is None:
                return out
            if control.offset_placement != "before_projection":
                raise ValueError(f"{self.name} is a single-stream block's attention: it has no "
                                 f"to_out, so the offset can only go on its output before the "
                                 f"block's proj_out; set offset_placement='before_projection' "
                                 f"or modulate a double-stream block (transformer_blocks.i.attn)")
            return torch.cat([out[:, :text_len], out[:, text_len:] + offset.to(out.dtype)], 1)
        text_out, image_out = out[:, :text_len], out[:, text_len:]
        if offset is not None and control.offset_placement == "before_projection":
            image_out = image_out + offset.to(image_out.dtype)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        if offset is not None and control.offset_placement == "after_projection":
            image_out = image_out + offset.to(image_out.dtype)
        return image_out, attn.to_add_out(text_out.contiguous())

    def _text_len(self) -> int:
        if self.text_tokens is None:
            raise ValueError(f"{self.name}: a single-stream FLUX block's processor needs the text "
                             f"length (carry_text_length(transformer, tokens) before the call; "
                             f"the FLUX architecture's predict does it)")
        return self.text_tokens

    def _attend_joined(self, attn, query, key, value, attention_mask):
        """Attention over the joined sequence: query/key (B or 1, S, heads, head_dim) or None
        (replay), value (B, S, inner) -> (B, S, inner).

        Without injection: diffusers' ``dispatch_attention_fn``, as the stock processor. With
        it, the probabilities of one element are materialised (:func:`joined_probabilities`)
        and applied to every element's values; a recorded pass applies them the same way, so
        that replaying them at lambda = 0 gives the recorded pass's output bit for bit.
        """
        mode = self.control.injection
        if mode == INJECT_NONE:
            from diffusers.models.attention_dispatch import dispatch_attention_fn

            out = dispatch_attention_fn(query, key, value.unflatten(-1, (-1, attn.head_dim)),
                                        attn_mask=attention_mask)
            return out.flatten(2, 3).to(query.dtype)
        if attention_mask is not None:
            raise ValueError("attention injection on FLUX takes no attention mask (the FLUX "
                             "pipeline passes none)")
        if mode == INJECT_REPLAY:
            return _apply_probs_to_every_element(attn, self.control.recorded[self.name], value)
        if mode == INJECT_RECORD and query.shape[0] != 1:
            raise ValueError(f"recording attention probabilities takes one batch element, got "
                             f"{query.shape[0]}")
        probs = joined_probabilities(query[:1], key[:1]).to(value.dtype)
        if mode == INJECT_RECORD:
            self.control.recorded[self.name] = probs
        return _apply_probs_to_every_element(attn, probs, value)


def joined_probabilities(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) of one element: (1, S, heads, head_dim) x2 ->
    (heads, S, S), computed in float32 (the SDPA kernels accumulate in float32 too)."""
    q, k = query[0].transpose(0, 1).float(), key[0].transpose(0, 1).float()  # (heads, S, D)
    scores = torch.bmm(q, k.transpose(1, 2)) * q.shape[-1] ** -0.5
    return scores.softmax(dim=-1)


def carry_text_length(transformer: torch.nn.Module, tokens: int) -> None:
    """Tells every installed :class:`EmerDiffFluxAttnProcessor` of ``transformer`` that its
    sequences start with ``tokens`` text tokens (diffusers passes a single-stream block's
    attention only the joined sequence)."""
    for processor in transformer.attn_processors.values():
        if isinstance(processor, EmerDiffFluxAttnProcessor):
            processor.text_tokens = tokens
