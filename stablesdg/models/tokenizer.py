"""The real 49,408-token CLIP BPE tokenizer of Stable Diffusion 1.x, built offline.

The vocabulary ships with ``open_clip_torch`` (``bpe_simple_vocab_16e6.txt.gz``); the
resulting ``transformers.CLIPTokenizer`` gives the same ids as SD1.5's tokenizer.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


def _open_clip_vocab_file() -> Path:
    """open_clip's copy of the BPE vocabulary, found without importing open_clip (which imports timm: seconds)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the CLIP vocabulary ships with open_clip_torch, which is not installed: "
                                  "pip install open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations))) / _VOCAB_FILE


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    with gzip.open(_open_clip_vocab_file(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1])
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A fresh SD1.5-compatible ``CLIPTokenizer`` (49,408 tokens; ``<|endoftext|>`` pads)."""
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
