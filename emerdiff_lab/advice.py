"""What an error message advises: fitted to the kind of model that failed (a diffusion model or
the CLIP model of the open-vocabulary protocol) and to where the user is (the command line gets
``--model tiny``, Python gets ``emerdiff_lab.load_model('tiny')``).

``emerdiff_lab.cli.main`` runs every command inside :func:`command_line`; anything else is
Python. A context variable, not a global, so that a notebook calling ``cli.main`` in one thread
does not change the messages of another.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_COMMAND_LINE = contextvars.ContextVar("emerdiff_lab_command_line", default=False)

# What to say about each kind of model: what it is, what a local folder of it is written by,
# and the command-line option / Python argument that names it.
_KINDS = {
    "diffusion": {"what": "Stable Diffusion weights", "they": "they", "them": "them",
                  "are": "are", "option": "--model",
                  "folder": "a diffusers pipeline's save_pretrained (e.g. "
                            "StableDiffusionPipeline.save_pretrained)", "file": "model_index.json"},
    "clip": {"what": "the CLIP model", "they": "it", "them": "it", "are": "is",
             "option": "--clip-model",
             "folder": "CLIPModel.save_pretrained and CLIPTokenizer.save_pretrained",
             "file": "config.json"},
}


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Messages raised inside the block give command-line advice."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def on_command_line() -> bool:
    return _COMMAND_LINE.get()


def kind_of(kind: str) -> dict:
    """The description of ``kind`` ("diffusion" or "clip"): what, option, folder, file."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    return _KINDS[kind]


def local_files_only() -> str:
    return "--local-files-only" if on_command_line() else "local_files_only=True"


def without_weights(kind: str) -> str:
    """The sentence on running without these weights at all."""
    if kind == "clip":
        return ("Without a CLIP model, leave out the open-vocab protocol (the other protocols "
                "need none)." if on_command_line() else
                "Without a CLIP model, evaluate without the 'open-vocab' protocol (the other "
                "protocols need none).")
    return ("For an offline run without weights use --model tiny (random weights)."
            if on_command_line() else
            "For an offline run without weights use emerdiff_lab.load_model('tiny') (random "
            "weights).")


def local_folder(kind: str) -> str:
    """The clause on passing a local folder instead of a hub id."""
    about = kind_of(kind)
    if on_command_line():
        return f"pass a folder written by {about['folder']}: {about['option']} /path/to/folder"
    return f"pass the path of a folder written by {about['folder']}"


def offline_advice(model_id: str, problem: str, kind: str = "diffusion") -> str:
    """The message when the hub cannot be reached and ``model_id`` is not in the local cache
    (HF_HUB_OFFLINE=1 only helps once the weights are cached, so the advice says so)."""
    about = kind_of(kind)
    they, them, are = about["they"], about["them"], about["are"]
    return (f"Could not load {about['what']} for {model_id!r}: {problem}, and {they} {are} not "
            f"in the local Hugging Face cache either. To work offline: download {them} once "
            f"where the hub is reachable (downloads go to the cache), then "
            f"set HF_HUB_OFFLINE=1 before "
            f"starting Python (or pass {local_files_only()}); or {local_folder(kind)}. Behind "
            f"a proxy, set HTTPS_PROXY. {without_weights(kind)}")


def not_cached(model_id: str, kind: str = "diffusion") -> str:
    """The message when offline mode is on and ``model_id`` is not in the local cache."""
    about = kind_of(kind)
    them = about["them"]
    return (f"Could not load {about['what']} for {model_id!r}: not in the local Hugging Face "
            f"cache, and offline mode (HF_HUB_OFFLINE=1 or {local_files_only()}) forbids "
            f"downloading {them}; download {them} once where the hub is reachable, or "
            f"{local_folder(kind)}. {without_weights(kind)}")


def is_cached(model_id: str, kind: str = "diffusion", *, revision: str | None = None,
              cache_dir=None) -> bool:
    """Whether the local Hugging Face cache holds ``model_id``'s main file (model_index.json
    for a diffusion model, config.json for CLIP)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, kind_of(kind)["file"], cache_dir=cache_dir,
                                   revision=revision)
    return isinstance(found, str)
