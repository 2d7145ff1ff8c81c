"""Refusing, in one line, an adapter (a TI embedding, a LoRA) learned on another model than the one a run loads it
into: ``model=tiny``'s TI read by ``model=sd15``, or an SD1.5 LoRA by an SD2 folder. diffusers and peft would stop
with a stack trace, or, for an embedding, a message without its numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from stablesdg import artifacts
from stablesdg.adaptation.placeholder import read_learned_embeds
from stablesdg.commands import shell_word, stage_command
from stablesdg.errors import UserError


def model_words(model: Mapping[str, Any]) -> str:
    """The settings that choose ``model`` (a ``model`` config, or one a result recorded), as a shell command gives them:
    ``model=tiny``, ``model=sd15 model.path=/weights/sd15``."""
    words = [shell_word("model", model.get("name", "?"))]
    if model.get("path"):
        words.append(shell_word("model.path", model["path"]))
    return " ".join(words)


def adapter_does_not_fit(cfg: DictConfig, directory: Path, detail: str) -> UserError:
    """The one line for a finished stage folder's adapter that ``cfg.model`` cannot take (``detail``: what differs):
    the model it was made with, and how to make it again with this one."""
    result = artifacts.read_result(directory)
    made = model_words((result.get("config") or {}).get("model") or {})
    now = model_words(OmegaConf.to_container(cfg.model, resolve=True))
    again = stage_command(str(result.get("stage", directory.name)), str(result.get("dataset", cfg.dataset.name)),
                          str(result.get("category")), str(result.get("variant")))
    return UserError(f"{directory} was made with {made}, which this run's {now} does not fit ({detail}); make it again "
                     f"with this model: {again}, or run with {made}")


def require_embedding_fits(cfg: DictConfig, path: Path, text_encoder) -> None:
    """A one-line ``UserError`` where the learned vectors of the ``learned_embeds.safetensors`` at ``path`` are not as
    wide as ``text_encoder``'s token embeddings."""
    vectors_dim = read_learned_embeds(path)[1].shape[1]
    width = text_encoder.get_input_embeddings().embedding_dim
    if vectors_dim != width:
        raise adapter_does_not_fit(cfg, path.parent, f"its vectors have {vectors_dim} values, this model's token "
                                                     f"embeddings {width}")
