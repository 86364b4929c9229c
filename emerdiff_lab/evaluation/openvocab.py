"""Open-vocabulary segmentation with EmerDiff masks (the paper's Table 3).

Any per-pixel text-aligned embedding (D, h, w) is averaged inside each mask and the mask is
classified against the text embeddings of the class names. :class:`DenseCLIP` gives such
embeddings from a transformers ``CLIPModel`` the MaskCLIP way (Zhou et al., ECCV 2022).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

# OpenAI CLIP's input normalisation (CLIPImageProcessor's image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
                     "a photo of a large {}.", "there is a {} in the scene.")


def pool_in_masks(dense: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean embedding inside each mask.

    Args:
        dense: (D, h, w) per-pixel embeddings at any resolution; upsampled bilinearly to the
            labels' size first.
        labels: (H, W) int64 mask ids in [0, K).

    Returns:
        (K, D) float32; rows of masks with no pixel are zero.
    """
    if dense.ndim != 3 or labels.ndim != 2:
        raise ValueError(f"dense must be (D, h, w) and labels (H, W); got {tuple(dense.shape)} "
                         f"and {tuple(labels.shape)}")
    dense = F.interpolate(dense[None].float(), size=tuple(labels.shape), mode="bilinear",
                          align_corners=False)[0]
    flat = dense.flatten(1).T                                  # (H*W, D)
    ids = labels.reshape(-1).long().to(flat.device)
    count = int(ids.max()) + 1
    sums = torch.zeros(count, flat.shape[1], device=flat.device).index_add_(0, ids, flat)
    sizes = torch.bincount(ids, minlength=count).clamp(min=1).unsqueeze(1)
    return sums / sizes


def classify_masks(dense: torch.Tensor, labels: torch.Tensor,
                   text_embeddings: torch.Tensor) -> torch.Tensor:
    """(D, h, w) embeddings, (H, W) masks, (C, D) class texts -> (H, W) int64 class ids.

    Each mask takes the class whose text embedding has the largest cosine similarity with the
    mask's mean embedding; all its pixels get that class.
    """
    pooled = F.normalize(pool_in_masks(dense, labels), dim=-1)
    mask_class = (pooled @ F.normalize(text_embeddings.float(), dim=-1).T).argmax(dim=1)
    return mask_class[labels.long()]


def classify_pixels(dense: torch.Tensor, text_embeddings: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
    """The dense model on its own (Table 3's reference): per-pixel argmax at ``size`` (H, W)."""
    logits = torch.einsum("dhw,cd->chw", F.normalize(dense.float(), dim=0),
                          F.normalize(text_embeddings.float(), dim=-1))
    logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    return logits.argmax(dim=0)


class DenseCLIP:
    """MaskCLIP-style dense, text-aligned embeddings from a transformers ``CLIPModel`` (ViT).

    In the last vision block the attention between tokens is skipped: each patch token's value
    embedding goes through the output projection (plus the block's residual and MLP, as in
    MaskCLIP's code), then the post-layernorm and the visual projection that CLIP applies to
    its class token. The patch grid is thus in the same space as the text embeddings.

    Args:
        model: a ``transformers.CLIPModel`` with a ViT vision tower.
        tokenizer: a CLIP tokenizer (``CLIPTokenizer.from_pretrained(folder)``).
        input_size: side in pixels of the square fed to CLIP; positional embeddings are
            interpolated when it differs from the model's 224 (None: the model's own size).
    """

    def __init__(self, model, tokenizer, input_size: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        vision = model.config.vision_config
        self.patch_size = vision.patch_size
        self.input_size = input_size or vision.image_size
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size must be a multiple of the patch size "
                             f"({self.patch_size} px), got {self.input_size}")

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device=None, dtype=torch.float32,
                        input_size: int | None = None, local_files_only: bool = False,
                        revision: str | None = None) -> DenseCLIP:
        """Loads a hub id (e.g. ``openai/clip-vit-base-patch16``) or a local folder."""
        from transformers import CLIPModel, CLIPTokenizer

        try:
            model = CLIPModel.from_pretrained(name_or_path, **{_dtype_keyword(): dtype},
                                              revision=revision,
                                              local_files_only=local_files_only)
            tokenizer = CLIPTokenizer.from_pretrained(name_or_path, revision=revision,
                                                      local_files_only=local_files_only)
        except OSError as error:
            from ..advice import on_command_line

            option = " (--clip-model)" if on_command_line() else ""
            raise OSError(f"cannot load the CLIP model {name_or_path!r}{option}: "
                          f"{error}. It must be in the local Hugging Face cache or a local "
                          f"folder when offline.") from error
        if device is not None:
            model = model.to(device)
        return cls(model, tokenizer, input_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def text_embeddings(self, class_names, templates=DEFAULT_TEMPLATES) -> torch.Tensor:
        """(C, D) float32 L2-normalised text embeddings, each the mean over ``templates``."""
        if not class_names:
            raise ValueError("class_names must name at least one class")
        rows = []
        for name in class_names:
            tokens = self.tokenizer([t.format(name) for t in templates], padding=True,
                                    return_tensors="pt").to(self.device)
            features = self.model.get_text_features(**tokens)
            # transformers 5 returns an output object; 4.x a tensor.
            features = getattr(features, "pooler_output", features)
            rows.append(F.normalize(F.normalize(features.float(), dim=-1).mean(0), dim=0))
        return torch.stack(rows)

    @torch.no_grad()
    def dense_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float in [0, 1] -> (D, h, w) float32 L2-normalised, h = w = input/patch."""
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(f"pixels must be (3, H, W), got {tuple(pixels.shape)}")
        vision = self.model.vision_model
        dtype = next(self.model.parameters()).dtype
        x = F.interpolate(pixels[None].float(), size=(self.input_size, self.input_size),
                          mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.device, dtype)
        hidden = vision.embeddings(x, interpolate_pos_encoding=True)
        hidden = vision.pre_layrnorm(hidden)
        layers = vision.encoder.layers
        for layer in layers[:-1]:
            hidden = run_clip_encoder_layer(layer, hidden)
        last = layers[-1]
        value = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(hidden)))
        hidden = hidden + value
        hidden = hidden + last.mlp(last.layer_norm2(hidden))
        patches = self.model.visual_projection(vision.post_layernorm(hidden[:, 1:]))[0]
        side = self.input_size // self.patch_size
        return F.normalize(patches.float(), dim=-1).T.reshape(-1, side, side)


def run_clip_encoder_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One unmasked CLIP encoder layer, (1, tokens, D) -> (1, tokens, D), on every supported
    transformers: before 5.0 ``forward`` also takes a required ``causal_attention_mask`` and
    returns a tuple; from 5.0 it takes only ``attention_mask`` and returns the tensor."""
    parameters = inspect.signature(layer.forward).parameters
    masks = {"attention_mask": None}
    if "causal_attention_mask" in parameters:
        masks["causal_attention_mask"] = None
    out = layer(hidden, **masks)
    return out[0] if isinstance(out, tuple) else out


def _dtype_keyword() -> str:
    """transformers 4.56 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (the old name
    is deprecated after it, unknown before it): the one this transformers takes."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
