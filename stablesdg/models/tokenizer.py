"""The real 49,408-token CLIP BPE tokenizer of Stable Diffusion 1.x, built offline.

The vocabulary ships with ``open_clip_torch`` (``bpe_simple_vocab_16e6.txt.gz``); the
resulting ``transformers.CLIPTokenizer`` gives the same ids as SD1.5's tokenizer.
"""

from __future__ import annotations

import gzip
from functools import lru_cache

from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as handle:
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
