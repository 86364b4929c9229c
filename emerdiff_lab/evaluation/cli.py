"""``emerdiff-lab evaluate``: the paper's protocols on a dataset folder, resumable, multi-GPU.

Registered through ``emerdiff_lab.cli.SUBCOMMANDS``; see ``docs/evaluation.md`` for commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import (add_compile_option, add_config_options, add_model_options,
                   check_args_before_work, config_from_args, load_model_from_args)
from .datasets import DATASETS
from .runner import PROTOCOLS

DEFAULT_CLIP = "openai/clip-vit-base-patch16"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score EmerDiff and the bilinear baseline on a segmentation dataset",
        description="Segment every image of a dataset with EmerDiff and score the paper's "
                    "protocols for EmerDiff and the naive bilinear baseline. Per-image records "
                    "go to OUT/records as they are produced: the same command resumes a killed "
                    "run. Writes OUT/summary.json and OUT/summary.md. Run under "
                    "'accelerate launch' or 'torchrun' to split the images between processes.")
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout")
    parser.add_argument("--root", required=True, type=Path, help="dataset folder")
    parser.add_argument("--split", default="val", choices=["val", "train"],
                        help="dataset split (default: val)")
    parser.add_argument("--protocol", nargs="+", default=["hungarian", "modified", "traditional"],
                        choices=PROTOCOLS, metavar="PROTOCOL",
                        help=f"one or more of {', '.join(PROTOCOLS)} "
                             f"(default: hungarian modified traditional)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (resumable)")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate the first N images (id order); a larger N later computes "
                             "only the new ones")
    parser.add_argument("--image-size", type=int, default=512,
                        help="side of the square the model sees; scoring happens at this size "
                             "(default: 512)")
    parser.add_argument("--ignore-index", type=int, default=255,
                        help="folder dataset: label value of unlabelled pixels (default: 255)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="folder dataset: number of classes (default: inferred from labels)")
    parser.add_argument("--class-names", type=Path, default=None,
                        help="folder dataset: text file, one class name per line (open-vocab)")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP,
                        help=f"open-vocab: CLIPModel hub id or folder (default: {DEFAULT_CLIP})")
    parser.add_argument("--clip-size", type=int, default=448,
                        help="open-vocab: side of CLIP's input in pixels (default: 448)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(parser)
    add_compile_option(parser)
    add_config_options(parser)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from .datasets import open_dataset
    from .runner import close_process_group, make_state

    check_args_before_work(args)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {args.limit}")
    names = None
    if args.class_names is not None:
        if not args.class_names.is_file():
            raise FileNotFoundError(f"--class-names file not found: {str(args.class_names)!r}")
        names = tuple(line.strip() for line in args.class_names.read_text().splitlines()
                      if line.strip())
    dataset = open_dataset(args.dataset, args.root, split=args.split,
                           ignore_index=args.ignore_index, num_classes=args.num_classes,
                           class_names=names)
    state = make_state(args.device)
    try:
        return _evaluate_in_state(args, dataset, state)
    finally:
        close_process_group()


def _evaluate_in_state(args: argparse.Namespace, dataset, state) -> int:
    """The part of ``run_evaluate`` that runs inside the (possibly distributed) ``state``."""
    from ..io import check_free_space, prepare_output_dir
    from .runner import evaluate

    if state.is_main_process:
        prepare_output_dir(args.out)
        # A record holds about four S x S label maps; a full disk fails before the first one.
        check_free_space(args.out, 16 * args.image_size ** 2, "one record")
    if args.device is None:
        # Under accelerate/torchrun each process owns one device (cuda:LOCAL_RANK or cpu).
        args.device = str(state.device)
    clip = None
    if "open-vocab" in args.protocol:  # first: it fails faster than the diffusion model loads
        from .openvocab import DenseCLIP

        clip = _load_clip(DenseCLIP, args)
    model = load_model_from_args(args)
    cfg = config_from_args(args, model.default_config)
    summary = evaluate(model, dataset, cfg, args.out, image_size=args.image_size,
                       protocols=args.protocol, limit=args.limit, clip=clip,
                       clip_id=args.clip_model, progress=not args.quiet, state=state)
    if summary is not None:
        print((args.out / "summary.md").read_text())
        recomputed = summary["recomputed"]
        print(f"world_size={state.num_processes} images={summary['dataset']['num_images']} "
              f"computed_this_run={summary['computed_this_run']} "
              f"recomputed_stale={recomputed['stale']} recomputed_corrupt={recomputed['corrupt']} "
              f"out={args.out}")
    return 0


def _load_clip(dense_clip, args: argparse.Namespace):
    """``DenseCLIP.from_pretrained`` for --clip-model, after a hub look-up with a timeout: when
    the hub cannot be reached, only the local cache is tried (transformers alone retries for
    minutes), and a failure says how to work offline, with advice for a CLIP model."""
    from huggingface_hub import constants

    from .. import advice
    from ..models import hub_problem

    local_only, problem = args.local_files_only, None
    is_folder = Path(args.clip_model).expanduser().is_dir()
    if not local_only and not is_folder:
        problem = hub_problem(args.clip_model)
        local_only = problem is not None
    if (local_only or constants.is_offline_mode()) and not is_folder and \
            not advice.is_cached(args.clip_model, "clip"):
        raise OSError(advice.offline_advice(args.clip_model, problem, "clip") if problem
                      else advice.not_cached(args.clip_model, "clip"))
    try:
        return dense_clip.from_pretrained(args.clip_model, device=args.device,
                                          input_size=args.clip_size, local_files_only=local_only)
    except OSError as error:
        if problem is None:
            raise
        raise OSError(advice.offline_advice(args.clip_model, problem, "clip")) from error
