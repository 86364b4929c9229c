"""The ``emerdiff-lab`` command line: ``emerdiff-lab segment IMAGE... --out DIR`` and friends.

Every ``EmerDiffConfig`` field is an option of ``segment``; other subcommands register themselves
through :data:`SUBCOMMANDS` (a module path whose ``register(subparsers)`` adds a parser).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

from .config import EmerDiffConfig

# Subcommands that live in their own modules; each module has register(subparsers).
SUBCOMMANDS: tuple[str, ...] = ("emerdiff_lab.figures", "emerdiff_lab.evaluation.cli")

_FIELD_HELP = {
    "num_masks": "K, number of k-means masks (default: the model's; 30 for SD)",
    "feature_timestep": "t_f, timestep at which features are read (paper: 1)",
    "modulation_timestep": "t_m, timestep of the modulation, on the schedule (paper: 281)",
    "modulation_strength": "lambda, size of the offset (paper: 10)",
    "num_inference_steps": "length of the DDPM schedule (paper: 50)",
    "feature_layer": "module path of the feature layer (default: resolved by structure)",
    "modulation_layer": "module path of the modulated cross-attention (default: resolved)",
    "offset_placement": "add the offset after or before the output projection",
    "attention_injection": "inject the unmodulated pass's attention probabilities (on/off)",
    "blur_sigma": "Gaussian sigma in pixels applied to each difference map (0: none)",
    "normalize_maps": "divide each difference map by its maximum before the argmax (on/off)",
    "feature_normalization": "normalisation of features before k-means",
    "prompt": "text prompt of every UNet call (paper: empty)",
    "seed": "seed of the inversion noise, feature noise and k-means",
    "batch_size": "elements per UNet call, the reference included (default: automatic)",
    "decode_batch_size": "images decoded by the VAE at once (default: automatic)",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except (ValueError, OSError) as error:
        print(f"emerdiff-lab: error: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emerdiff-lab",
        description="EmerDiff: unsupervised image-resolution segmentation from Stable Diffusion.")
    subparsers = parser.add_subparsers(title="commands")
    _add_segment(subparsers)
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def add_model_options(parser: argparse.ArgumentParser, default_model: str = "tiny") -> None:
    """--model, --device, --dtype, --revision, --local-files-only: shared by every subcommand."""
    parser.add_argument("--model", default=default_model,
                        help="'tiny' (offline, random weights), a hub id such as "
                             "CompVis/stable-diffusion-v1-4, or a local diffusers folder "
                             f"(default: {default_model})")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="precision of the networks (default: float32)")
    parser.add_argument("--revision", default=None, help="hub revision of the weights")
    parser.add_argument("--local-files-only", action="store_true",
                        help="never try the network; use the local cache only")


def add_compile_option(parser: argparse.ArgumentParser) -> None:
    """--compile, for the subcommands that run many images through one loaded model."""
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet's ResNet blocks and the VAE decoder "
                             "(compiling costs tens of seconds once; measured no faster on a "
                             "CPU, not yet measured on a GPU: see BENCHMARKS.md)")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per EmerDiffConfig field (--num-masks, --modulation-timestep, ...)."""
    group = parser.add_argument_group("EmerDiff hyperparameters (default: the model's own)")
    for field in dataclasses.fields(EmerDiffConfig):
        flag = "--" + field.name.replace("_", "-")
        help_text = _FIELD_HELP.get(field.name, field.name)
        if field.type in ("bool", bool):
            group.add_argument(flag, dest=field.name, default=None, choices=["on", "off"],
                               help=help_text)
        elif field.name == "offset_placement":
            group.add_argument(flag, default=None, choices=["after_projection",
                                                            "before_projection"], help=help_text)
        elif field.name == "feature_normalization":
            group.add_argument(flag, default=None, choices=["l2", "none"], help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(field.type).split(" ")[0], str)
            if field.name in ("batch_size", "decode_batch_size"):
                kind = int
            group.add_argument(flag, type=kind, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, base: EmerDiffConfig) -> EmerDiffConfig:
    """``base`` with every option the user gave on the command line."""
    changes = {}
    for field in dataclasses.fields(EmerDiffConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            changes[field.name] = (value == "on") if value in ("on", "off") else value
    return base.replace(**changes)


def load_model_from_args(args: argparse.Namespace):
    from .models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype,
                       revision=args.revision, local_files_only=args.local_files_only)
    if getattr(args, "compile", False):
        from .compilation import compile_model

        compile_model(model)
    return model


def _add_segment(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment images; writes label PNG, overlay PNG and .npz per image",
        description="Segment each IMAGE with EmerDiff. Per image, OUT gets STEM_labels.png "
                    "(palette PNG, one colour per mask), STEM_overlay.png (labels blended over "
                    "the photo) and STEM.npz + STEM.json (arrays, config, provenance).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to segment")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the square the model sees, a multiple of 64 for SD "
                             "(default: the model's native size: 512 for SD 1.x, 64 for toyworld)")
    parser.add_argument("--model-resolution", action="store_true",
                        help="write labels at model resolution instead of the input's size")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_options(parser)
    add_compile_option(parser)
    add_config_options(parser)
    parser.set_defaults(handler=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .io import save_label_png, save_overlay_png
    from .images import open_image
    from .segmentation import segment

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {missing}")
    model = load_model_from_args(args)
    cfg = config_from_args(args, model.default_config)
    args.out.mkdir(parents=True, exist_ok=True)
    for image_path in tqdm(args.images, desc="segment", unit="image", disable=args.quiet):
        photo = open_image(Path(image_path)).convert("RGB")
        seg = segment(model, photo, cfg, image_size=args.image_size,
                      original_size=not args.model_resolution, progress=not args.quiet)
        stem = args.out / Path(image_path).stem
        seg.save(stem)
        save_label_png(seg.labels, stem.with_name(stem.name + "_labels.png"))
        save_overlay_png(photo, seg.labels, stem.with_name(stem.name + "_overlay.png"))
        for note in seg.notes:
            tqdm.write(f"{image_path}: {note}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
