"""Where the weight files a config names are, judged without torch: ``model.path`` of ``model=sd15``,
``model.weights_cache`` of ``model=sd15_random`` and ``classifier.weights``. The entry point runs these checks
before the heavy libraries load, so a wrong path is named in about a second, not after the data is read; the
loaders run them again before they read anything."""

from __future__ import annotations

import re
from pathlib import Path

from stablesdg.errors import UserError, first_line, not_a_file

PUBLIC_SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
HOW_TO_PROVIDE = (
    "set model.path to a local diffusers folder (with unet/, vae/, text_encoder/, tokenizer/, scheduler/) "
    f"or a .safetensors checkpoint, or to the hub id {PUBLIC_SD15_HUB_ID} when online"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
SD15_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SD15_WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
# a diffusers or transformers weights file: standard, a variant (model.fp16.safetensors), sharded or its index
_WEIGHTS_FILE = re.compile(r"^(?:diffusion_pytorch_model|model|pytorch_model)(?:-\d+-of-\d+)?"
                           r"(?:\.(?:safetensors|bin)\.index)?(?:\.(?P<variant>[A-Za-z0-9_]+))?\.(?:safetensors|bin|json)$")


def sd15_location(path: str | None, variant: str | None = None) -> tuple[str, str]:
    """What ``model.path`` names: ``("folder", path)`` for a local diffusers folder with every component's
    sub-folder, ``("file", path)`` for a local ``.safetensors`` checkpoint, ``("hub", id)`` for a Hugging Face hub
    id (the path of each local one with ``~`` expanded). A one-line ``UserError`` for no path, a folder that lacks a
    component or its weights (see ``folder_weight_variants``), a pickled checkpoint (it could run code), a
    ``variant`` with a single-file checkpoint, or a path that neither exists nor reads as a hub id."""
    if not path:
        raise UserError(f"model=sd15 needs weights: {HOW_TO_PROVIDE}")
    local = Path(path).expanduser()
    if local.is_dir():
        missing = [s for s in SD15_SUBFOLDERS if not (local / s).is_dir()]
        if missing:
            raise UserError(f"model.path={path} is not a diffusers Stable Diffusion folder (missing "
                            f"{', '.join(m + '/' for m in missing)}); {HOW_TO_PROVIDE}")
        folder_weight_variants(local, variant)
        return "folder", str(local)
    if local.is_file():
        if local.suffix != ".safetensors":
            raise UserError(f"model.path={path}: only .safetensors checkpoints are loaded (pickled .ckpt/.bin files "
                            "can run code); convert it, or use a diffusers folder")
        if variant is not None:
            raise UserError(f"model.variant={variant} picks among a diffusers folder's weight files; model.path={path} "
                            "is a single-file checkpoint: leave model.variant null")
        return "file", str(local)
    if not _HUB_ID.match(str(path)) or str(path).startswith((".", "~")):
        raise UserError(f"model.path={path} does not exist; {HOW_TO_PROVIDE}")
    return "hub", str(path)


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE=1``): hub ids are read from the local cache."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def require_hub_reachable(kind: str, source: str, config: str | None) -> None:
    """Where loading a ``model.path`` of ``kind`` (``sd15_location``) would fetch files from an online hub, a one-line
    ``UserError`` within a second when the hub cannot be reached or lacks the model: a hub id's own files, or a
    single-file checkpoint's configs (``model.config``'s hub id; unset, SD1.5's, which diffusers fetches for an SD1.x
    checkpoint). Left to the loaders, a machine without a network waits minutes: huggingface_hub retries each file
    five times. Offline, or with every file local, it asks nothing."""
    if hub_offline():
        return
    if kind == "hub":  # a relative folder that is not there reads as a hub id too: say which folder was looked for
        _require_hub_model(source, f"model.path={source} (no folder {Path(source).absolute()}, so a hub id)",
                           HOW_TO_PROVIDE,
                           f"download the model where there is a network (hf download {source}) and set "
                           f"HF_HUB_OFFLINE=1 to read it from the cache, or {HOW_TO_PROVIDE}")
    elif kind == "file" and not (config and Path(config).expanduser().is_dir()):
        instead = "set model.config=<local diffusers SD1.5 folder (configs suffice)>, or model.path to a diffusers folder"
        _require_hub_model(config or PUBLIC_SD15_HUB_ID,
                           f"model.path={source} is a single-file checkpoint, whose configs diffusers fetches from "
                           f"the hub ({config or PUBLIC_SD15_HUB_ID})", instead, instead)


def _require_hub_model(repo_id: str, what: str, if_missing: str, if_unreachable: str) -> None:
    from huggingface_hub import model_info
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        model_info(repo_id)
    except RepositoryNotFoundError as err:
        raise UserError(f"{what}: the Hugging Face hub has no model {repo_id} that this machine may read (a gated "
                        f"or private one needs `hf auth login`); {if_missing}") from err
    except Exception as err:  # the network's own errors (httpx's; requests' in older huggingface_hub releases)
        raise UserError(f"{what}: cannot reach the Hugging Face hub ({first_line(err)}); {if_unreachable}") from err


def folder_weight_variants(folder: Path, variant: str | None = None) -> dict[str, str | None]:
    """Which weights of a diffusers folder's ``unet/``, ``vae/`` and ``text_encoder/`` to read, as the ``variant``
    argument of ``from_pretrained``: ``variant`` for each when given (``model.variant``); else ``None`` (the standard
    files) where a component has them, otherwise the one variant its folder holds (a download of only
    ``*.fp16.safetensors``). A one-line ``UserError`` for a component with no weights, without the asked variant, or
    with several variants and no standard weights."""
    chosen = {}
    for component in SD15_WEIGHT_COMPONENTS:
        held = {found or None for f in sorted((folder / component).iterdir())
                if (found := weights_file_variant(f.name)) is not None}
        names = ", ".join(sorted(v or "standard" for v in held))
        if not held:
            raise UserError(f"model.path={folder}: {component}/ holds no weights (diffusion_pytorch_model.safetensors "
                            f"or model.safetensors, or a variant such as *.fp16.safetensors); {HOW_TO_PROVIDE}")
        if variant is not None and variant not in held:
            raise UserError(f"model.variant={variant}: {folder}/{component}/ holds no {variant} weights, only {names}"
                            "; set model.variant to one of them, or null for the standard weights")
        if variant is None and None not in held and len(held) > 1:
            raise UserError(f"model.path={folder}: {component}/ holds the weight variants {names} and no standard "
                            "weights; choose one with model.variant=<variant>")
        chosen[component] = variant if variant is not None else (None if None in held else held.pop())
    return chosen


def weights_file_variant(name: str) -> str | None:
    """The weight variant of the file called ``name`` where it is a diffusers or transformers weights file (or a
    sharded one's index): ``""`` for the standard weights, ``fp16`` for ``*.fp16.safetensors``; None for any other
    file (a config, a tokenizer's vocabulary)."""
    match = _WEIGHTS_FILE.match(name)
    return None if match is None else match.group("variant") or ""


def require_classifier_weights(path: str | Path) -> Path:
    """``classifier.weights`` as a ``Path`` when it is a file; else a one-line ``UserError`` (ImageNet weights are
    never downloaded)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"classifier.weights={path} {not_a_file(path)} (ImageNet weights are never downloaded; "
                        "give a local .safetensors or .pth file)")
    return path


def make_weights_cache(path: str | Path) -> Path:
    """``model.weights_cache`` as a ``Path``, the folder made if it was not there; a one-line ``UserError`` when it
    cannot be (a file in the way, a read-only disk), found before a minute of drawing weights that could not be
    saved."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"model.weights_cache: cannot write {folder} (not a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"model.weights_cache: cannot write {folder} ({err.strerror or err})") from err
    return folder
