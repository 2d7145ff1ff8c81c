"""The learned token embedding ``v_d`` of textual inversion: placeholder tokens, training rows, files.

A placeholder string (``<unknown>``, ``defect``, ``patches``) is learned as *new* tokens, one
per token the string tokenizes to, initialised from those tokens' embeddings: ``<unknown>``
(three CLIP tokens) becomes ``<unknown> <unknown>_1 <unknown>_2``; ``defect`` becomes
``<defect>``, so the base vocabulary is never touched. The naming is diffusers'
multi-vector convention, so ``pipe.load_textual_inversion(learned_embeds.safetensors)``
restores exactly these tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from stablesdg.atomic_files import save_safetensors_atomic
from stablesdg.errors import UserError

EMBEDS_FILE = "learned_embeds.safetensors"


@dataclass(frozen=True)
class Placeholder:
    """``token`` (the name in prompts and files), the new ``tokens`` and the ids that initialise them."""

    token: str
    tokens: tuple[str, ...]
    init_ids: tuple[int, ...]

    def expand(self, prompt: str) -> str:
        """``prompt`` with ``token`` replaced by all its vector tokens (as diffusers' ``maybe_convert_prompt``)."""
        return prompt.replace(self.token, " ".join(self.tokens))


def make_placeholder(tokenizer, text: str) -> Placeholder:
    """The placeholder for ``text``: new tokens named after it, initialised from its own tokens."""
    text = str(text).strip()
    init_ids = tuple(tokenizer(text, add_special_tokens=False).input_ids)
    if not text or not init_ids:
        raise UserError(f"stage.placeholder={text!r} tokenizes to nothing; use a word or a string such as <unknown>")
    token = text if text.startswith("<") and text.endswith(">") else f"<{text}>"
    tokens = (token,) + tuple(f"{token}_{i}" for i in range(1, len(init_ids)))
    return Placeholder(token, tokens, init_ids)


def add_tokens(tokenizer, text_encoder: nn.Module, tokens: tuple[str, ...], vectors: torch.Tensor) -> list[int]:
    """Add ``tokens`` to the tokenizer and append their ``vectors`` as new embedding rows; return their ids."""
    if tokenizer.add_tokens(list(tokens)) != len(tokens):
        raise UserError(f"tokens {list(tokens)} already exist in the tokenizer; choose another stage.placeholder")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[ids] = vectors.to(text_encoder.get_input_embeddings().weight)
    return ids


class PlaceholderEmbedding(nn.Module):
    """The token-embedding table with its last rows (the placeholder tokens) replaced by trainable vectors.

    The base table stays frozen, so every other row is bit-identical to the base model by
    construction (diffusers' example restores those rows after every step to the same end), and
    the optimiser sees only the placeholder vectors.
    """

    def __init__(self, base: nn.Embedding, first_id: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.first_id = int(first_id)
        self.learned = nn.Parameter(base.weight[self.first_id :].detach().clone().float())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)
        offset = input_ids - self.first_id
        learned = self.learned[offset.clamp(min=0)].to(embeds.dtype)
        return torch.where((offset >= 0).unsqueeze(-1), learned, embeds)

    def merged(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` whose placeholder rows hold the learned vectors."""
        with torch.no_grad():
            self.base.weight[self.first_id :] = self.learned.to(self.base.weight.dtype)
        return self.base


def save_learned_embeds(path: Path, placeholder: Placeholder, vectors: torch.Tensor) -> None:
    """Write ``{token: vectors (n×dim)}`` in diffusers' textual-inversion format (atomically)."""
    save_safetensors_atomic(path, {placeholder.token: vectors.float()})


def read_learned_embeds(path: Path) -> tuple[str, torch.Tensor]:
    """``(token, vectors)`` from a ``learned_embeds.safetensors``; a clear error for a bad file."""
    try:
        state = load_file(str(path))
    except FileNotFoundError as err:
        raise UserError(f"{path} does not exist") from err
    except Exception as err:  # safetensors raises its own types for truncated or tampered files
        raise UserError(f"{path} is not a readable safetensors file ({err}); rerun the stage that wrote it") from err
    if len(state) != 1:
        raise UserError(f"{path} should hold one token embedding, found keys {sorted(state)}")
    (token, vectors), = state.items()
    return token, vectors.reshape(-1, vectors.shape[-1])
