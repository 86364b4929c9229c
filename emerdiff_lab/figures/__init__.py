"""The paper's figures, made by the notebooks in ``notebooks/``; what more than one of them needs.

- :mod:`.context`: :func:`setup` (model, settings, output folder from the papermill parameters)
  and the images that fit the model (:func:`labelled_examples`, :func:`photo_examples`).
- :mod:`.experiments`: EmerDiff against its baselines per image and per class
  (:func:`compare_methods`), the ablation sweeps with paired differences to the default
  (:func:`ablation_table`, :func:`paired_to_default`) and Figure 8's :func:`failure_stats`.
- :mod:`.runner`: ``emerdiff-lab figures``, which executes every notebook with papermill.
"""

from __future__ import annotations

from ..evaluation.metrics import hungarian_miou
from .context import (
    PHOTO_ON_TOYWORLD,
    QUICK_ABLATION_STEPS,
    QUICK_IMAGE_SIZE,
    QUICK_MAX_MASKS,
    SMOKE_IMAGES,
    Example,
    FigureContext,
    find_voc14,
    labelled_examples,
    photo_examples,
    scene_examples,
    setup,
    voc_examples,
    weights_fingerprint,
)
from .experiments import (
    COLOUR,
    CONTROL,
    EMERDIFF,
    MASKS,
    METHODS,
    NAIVE,
    Maps,
    Showcase,
    ablation_conclusions,
    ablation_settings,
    ablation_table,
    class_names,
    compare_methods,
    conclusions,
    emerdiff_maps,
    failure_stats,
    method_labels,
    method_summary,
    paired_to_default,
    random_control,
    select_showcase,
)
from .runner import (
    NOTEBOOKS,
    NOTEBOOKS_DIR,
    NotebookRun,
    _current_python_kernel,
    notebook_parameters,
    register,
    run_notebooks,
    select_notebooks,
)


__all__ = [
    "COLOUR", "CONTROL", "EMERDIFF", "Example", "FigureContext", "MASKS", "METHODS", "Maps",
    "NAIVE", "NOTEBOOKS", "NOTEBOOKS_DIR", "NotebookRun", "PHOTO_ON_TOYWORLD",
    "QUICK_ABLATION_STEPS", "QUICK_IMAGE_SIZE", "QUICK_MAX_MASKS", "SMOKE_IMAGES", "Showcase",
    "_current_python_kernel", "ablation_conclusions", "ablation_settings", "ablation_table",
    "class_names", "compare_methods", "conclusions", "emerdiff_maps", "failure_stats",
    "find_voc14", "hungarian_miou", "labelled_examples", "method_labels", "method_summary",
    "notebook_parameters", "paired_to_default", "photo_examples", "random_control",
    "register", "run_notebooks", "scene_examples", "select_notebooks",
    "select_showcase", "setup", "voc_examples", "weights_fingerprint",
]
