"""EmerDiff's processor for joint text-image attention (SD3 / SD3.5's ``JointTransformerBlock``).

The block joins the image tokens and the text tokens into one sequence, [image, text], and
attends over all of them at once; the image part leaves through ``to_out``, the text part
through ``to_add_out`` (absent in the last block, whose text output is dropped). This processor
follows diffusers' ``JointAttnProcessor2_0`` (per-head RMS q/k norms of SD3.5 included, applied to
the image and the text projections separately) and adds EmerDiff's hooks on the image tokens:

- feature capture: ``to_q`` of the image tokens (before the q norm), (B, image tokens, inner);
- the offset c * M on the image tokens' output, after ``to_out`` (or before it); in the block it
  is then multiplied by the AdaLN gate ``gate_msa`` (per channel and timestep) before it joins
  the residual stream, which a UNet's cross-attention does not have (docs/architectures.md);
- attention injection over the whole joint sequence: the probabilities (heads, N, N) of the
  unmodulated pass, N = image + text tokens, applied to every element's values.
"""

from __future__ import annotations

import torch

from .processors import (INJECT_FROM_FIRST, INJECT_RECORD, INJECT_REPLAY, EmerDiffAttnProcessor,
                         _apply_probs_to_every_element, _qk_norm)


class EmerDiffJointAttnProcessor(EmerDiffAttnProcessor):
    """Joint attention with EmerDiff's hooks (see the module docstring); ``attention_mask`` is
    not used, as in diffusers' processor."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 *args, **kwargs):
        control = self.control
        batch, image_tokens = hidden_states.shape[:2]
        captured = self.name in control.capture_layers
        replay = control.injection == INJECT_REPLAY
        # With injection from element 0 only its queries and keys are used (see the UNet
        # processor); replayed probabilities need none.
        first_only = control.injection == INJECT_FROM_FIRST and not captured
        images = hidden_states[:1] if first_only else hidden_states
        texts = None
        if encoder_hidden_states is not None:
            texts = encoder_hidden_states[:1] if first_only else encoder_hidden_states
        query = key = None
        if captured or not replay:
            image_query = attn.to_q(images)
            if captured:
                control.captured[self.name] = image_query.detach()
            query = _qk_norm(attn.norm_q, image_query, attn.heads)
            key = _qk_norm(attn.norm_k, attn.to_k(images), attn.heads)
            if texts is not None:
                query = torch.cat([query, _qk_norm(attn.norm_added_q, attn.add_q_proj(texts),
                                                   attn.heads)], dim=1)
                key = torch.cat([key, _qk_norm(attn.norm_added_k, attn.add_k_proj(texts),
                                               attn.heads)], dim=1)
        value = attn.to_v(hidden_states)
        if encoder_hidden_states is not None:
            value = torch.cat([value, attn.add_v_proj(encoder_hidden_states)], dim=1)

        out = self._attend(attn, query, key, value, None).expand(batch, -1, -1)
        image_out, text_out = out[:, :image_tokens], out[:, image_tokens:]
        offset = control.offsets.get(self.name)
        if offset is not None and control.offset_placement == "before_projection":
            image_out = image_out + offset.to(image_out.dtype)
        image_out = attn.to_out[1](attn.to_out[0](image_out))
        if offset is not None and control.offset_placement == "after_projection":
            image_out = image_out + offset.to(image_out.dtype)
        if encoder_hidden_states is None:
            return image_out
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        return image_out, text_out

    def _attend(self, attn, query, key, value, attention_mask):
        """As the UNet processor's, except that a recorded pass of one element applies its
        probabilities as a replay does, so that replaying them at lambda = 0 gives the recorded
        pass's output bit for bit (the reference path's lambda = 0 invariant)."""
        if self.control.injection == INJECT_RECORD and value.shape[0] == 1:
            probs = attn.get_attention_scores(attn.head_to_batch_dim(query),
                                              attn.head_to_batch_dim(key), None)
            self.control.recorded[self.name] = probs
            return _apply_probs_to_every_element(attn, probs, value)
        return super()._attend(attn, query, key, value, attention_mask)
