"""The ``emerdiff-lab`` command line: ``emerdiff-lab segment IMAGE... --out DIR`` and friends.

Every ``EmerDiffConfig`` field is an option of ``segment``; other subcommands register themselves
through :data:`SUBCOMMANDS` (a module path whose ``register(subparsers)`` adds a parser).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import sys
import traceback
import warnings
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
    "modulation_sigma": "flow models (SD3): noise level sigma in (0, 1) to modulate at, snapped "
                        "to the schedule (default: t_m by equal SNR, 281 -> 0.438)",
    "feature_sigma": "flow models (SD3): sigma of the feature pass (default: t_f by equal SNR, "
                     "1 -> 0.040)",
}


def main(argv: list[str] | None = None) -> int:
    """Runs one command. Returns the exit code: 0 success, 1 an error (one line on stderr, the
    whole traceback with ``--traceback``), 2 a usage error, 130 interrupted by Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Read before parsing, so that a Ctrl-C while the heavy modules import is covered too.
    show_traceback = "--traceback" in argv
    from .advice import command_line

    with one_line_warnings(), command_line():  # error messages give command-line advice
        try:
            return _parse_and_run(argv)
        except KeyboardInterrupt:
            if show_traceback:
                traceback.print_exc()
            # 130 = 128 + SIGINT, what shells report for a command stopped by Ctrl-C.
            print("emerdiff-lab: interrupted (Ctrl-C); results already written are kept",
                  file=sys.stderr)
            return 130
        except Exception as error:  # noqa: BLE001 - every failure becomes one line, see below
            if show_traceback:
                traceback.print_exc()
            print(f"emerdiff-lab: error: {describe_error(error)}", file=sys.stderr)
            return 1


def _parse_and_run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


# Failures of the input, the environment or the machine: their messages are meant for the user.
# Anything else is a bug, and the one line says to rerun with --traceback.
_EXPECTED_ERRORS = (ValueError, OSError, MemoryError, ImportError)


def describe_error(error: BaseException) -> str:
    """``error`` as one line: its message (whitespace folded) for an expected failure, the type
    and a request to rerun with --traceback for anything else."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, _EXPECTED_ERRORS) or type(error).__name__ == "OutOfMemoryError":
        return message
    return (f"{type(error).__name__}: {message} (unexpected; rerun with --traceback and "
            f"report it)")


@contextlib.contextmanager
def one_line_warnings():
    """Shows each warning as one ``emerdiff-lab: warning: ...`` line on stderr, not Python's
    two-line file:line form."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"emerdiff-lab: warning: {text}", file=sys.stderr)

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emerdiff-lab",
        description="EmerDiff: unsupervised image-resolution segmentation from Stable Diffusion.")
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the full Python traceback, not one line")
    subparsers = parser.add_subparsers(title="commands")
    _add_segment(subparsers)
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(subparsers)
    for subparser in subparsers.choices.values():
        # Also accepted after the command; SUPPRESS keeps a --traceback given before it.
        subparser.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                               help="on an error, show the full Python traceback")
    return parser


def add_model_options(parser: argparse.ArgumentParser, default_model: str = "tiny") -> None:
    """--model, --device, --dtype, --revision, --local-files-only: shared by every subcommand."""
    parser.add_argument("--model", default=default_model,
                        help="an offline model: 'toyworld' (trained, 64 px generated scenes), "
                             "'tiny', 'tiny-sdxl', 'tiny-pixart', 'tiny-sd3' or 'tiny-flux' "
                             "(random weights: mechanics only); a hub id such as "
                             "CompVis/stable-diffusion-v1-4, "
                             "stabilityai/stable-diffusion-xl-base-1.0, "
                             "PixArt-alpha/PixArt-XL-2-1024-MS, "
                             "stabilityai/stable-diffusion-3.5-medium or "
                             "black-forest-labs/FLUX.1-dev; or a local diffusers "
                             f"folder (default: {default_model})")
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


def check_args_before_work(args: argparse.Namespace) -> None:
    """Validates the hyperparameters and --image-size the user gave, before a model is loaded
    or anything computed (the model's own defaults are checked when it is loaded)."""
    from .images import check_model_size

    config_from_args(args, EmerDiffConfig())
    if getattr(args, "image_size", None) is not None:
        check_model_size(args.image_size, "--image-size")


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
                    "the photo) and STEM.npz + STEM.json (arrays, config, provenance). STEM is "
                    "the file name without its suffix; inputs sharing one are told apart by "
                    "their folders (a__x, b__x). No output may replace an input file. A bad image "
                    "is reported and skipped; the exit code is then 1.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files to segment, or folders of them (their image files; "
                             "subfolders are not entered)")
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

    from .io import check_outputs, prepare_output_dir, segment_outputs, unique_output_stems
    from .segmentation import check_segment_settings

    images, failures = _expand_folders(args.images)  # failures: folders without images
    images = _existing_unique_images(images)
    inputs = len(images) + len(failures)
    check_args_before_work(args)
    stems, notes = unique_output_stems(images)
    prepare_output_dir(args.out)
    outputs = [segment_outputs(args.out, stem) for stem in stems]
    check_outputs(images, outputs)  # before the model loads, so that nothing is written
    for note in notes:
        print(f"emerdiff-lab: {note}", file=sys.stderr)
    if not images:  # only folders without images: nothing to load a model for
        return _report(failures, inputs)
    model = load_model_from_args(args)
    cfg = config_from_args(args, model.default_config)
    image_size = check_segment_settings(model, cfg, args.image_size)
    _check_space_for_one_result(args.out, cfg, image_size)
    for image_path, files in tqdm(list(zip(images, outputs)), desc="segment", unit="image",
                                  disable=args.quiet):
        try:
            photo, seg = _segment_one(model, image_path, cfg, args)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - one bad image must not stop the others
            if getattr(args, "traceback", False):
                traceback.print_exc()
            failures.append(f"{image_path}: {describe_error(error)}")
            tqdm.write(f"emerdiff-lab: skipped {failures[-1]}", file=sys.stderr)
            continue
        _write_results(seg, photo, files)  # a write failure ends the run: see there
        for note in seg.notes:
            tqdm.write(f"{image_path}: {note}")
    return _report(failures, inputs)


def _report(failures: list[str], inputs: int) -> int:
    """The exit code, after naming every failed input (``inputs``: how many were given)."""
    if not failures:
        return 0
    print(f"emerdiff-lab: error: {len(failures)} of {inputs} image(s) failed:", file=sys.stderr)
    for failure in failures:
        print(f"  {failure}", file=sys.stderr)
    return 1


# What a folder among the IMAGE arguments is expanded to (the formats Pillow reads, in practice).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _expand_folders(paths: list[str]) -> tuple[list[str], list[str]]:
    """The IMAGE arguments with each folder replaced by its image files (by suffix, sorted;
    hidden files and subfolders are not entered), and one failure line per folder without any,
    to be reported with the bad images at the end."""
    files, failures = [], []
    for path in paths:
        if not Path(path).is_dir():
            files.append(path)
            continue
        found = sorted(p for p in Path(path).iterdir() if p.is_file()
                       and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not found:
            failures.append(f"{path}: a folder without image files ({', '.join(IMAGE_SUFFIXES)})")
            print(f"emerdiff-lab: skipped {failures[-1]}", file=sys.stderr)
        files += [str(p) for p in found]
    return files, failures


def _existing_unique_images(paths: list[str]) -> list[Path]:
    """The IMAGE arguments as paths, each file once; all must exist (checked before any work)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {missing}")
    first_of_each: dict[Path, Path] = {}
    for path in paths:
        first_of_each.setdefault(Path(path).resolve(), Path(path))
    unique = list(first_of_each.values())
    if len(unique) < len(paths):
        print(f"emerdiff-lab: {len(paths) - len(unique)} image(s) given more than once are "
              f"segmented once", file=sys.stderr)
    return unique


def _check_space_for_one_result(out: Path, cfg: EmerDiffConfig, image_size: int) -> None:
    """A full disk fails before the first image is computed: the .npz of one result holds up to
    K float32 maps and two int64 label maps at S x S (less once compressed)."""
    from .io import check_free_space

    needed = image_size * image_size * (4 * cfg.num_masks + 8 * 2)
    check_free_space(out, needed, f"one result at {image_size} px with {cfg.num_masks} masks")


def _segment_one(model, image_path: Path, cfg: EmerDiffConfig, args: argparse.Namespace):
    """(the photo as RGB PIL, its Segmentation)."""
    from .images import open_image
    from .segmentation import segment

    photo = open_image(image_path).convert("RGB")
    seg = segment(model, photo, cfg, image_size=args.image_size,
                  original_size=not args.model_resolution, progress=not args.quiet)
    return photo, seg


def _write_results(seg, photo, files: dict[str, Path]) -> None:
    """The files of :func:`emerdiff_lab.io.segment_outputs`. A failure here (full or read-only
    disk) would fail for every later image too, so it ends the run with an error that names
    the file, instead of being skipped like a bad input."""
    from .io import save_label_png, save_overlay_png

    try:
        seg.save(files["arrays"])  # the .npz name itself, so a stem ending in .npz stays whole
        save_label_png(seg.labels, files["labels"])
        save_overlay_png(photo, seg.labels, files["overlay"])
    except OSError as error:
        raise OSError(f"cannot write the results for {files['arrays'].stem!r} in "
                      f"{str(files['arrays'].parent)!r}: {error}") from error


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
