"""Tokenizers for CLIP's text tower: UTF-8 bytes (no download) or a pretrained ``tokenizer.json``.

Both give a fixed-length ``(B, context_length)`` LongTensor laid out as CLIP expects:
start-of-text, the text, end-of-text, then padding. A caption longer than the context is
truncated with a warning (its end-of-text token kept), never an error.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ByteTokenizer", "HFTokenizer", "Tokenizer", "TruncationWarning"]


class TruncationWarning(UserWarning):
    """A caption did not fit in the context and lost its end."""


class Tokenizer:
    """Strings -> ``(B, context_length)`` token ids with BOS/EOS/PAD; ``decode`` inverts it."""

    context_length: int
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"captions must be strings, got {type(bad[0]).__name__} {bad[0]!r}")
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long)

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, begin/end tokens included, at most ``context_length`` of them."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of token ``ids`` up to the end token (special tokens dropped)."""
        raise NotImplementedError


def _warn_truncated(text: str, kept: int, limit: int) -> None:
    short = text if len(text) <= 60 else text[:57] + "..."
    warnings.warn(
        f"caption {short!r} is longer than the text context ({limit} tokens with start/end); "
        f"only its first {kept} tokens are used",
        TruncationWarning,
        stacklevel=4,
    )


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255 as ids, then PAD = 256, BOS = 257, EOS = 258 (vocabulary 259).

    EOS is the largest id, as in OpenAI's CLIP vocabulary, so both pooling rules of
    ``transformers`` (first EOS, or the largest id) find it.
    """

    vocab_size = 259
    pad_id, bos_id, eos_id = 256, 257, 258

    def __init__(self, context_length: int = 48) -> None:
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (start, one byte, end), got {context_length}")
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        """``[bos, *utf-8 bytes, eos]`` as ids.

        The bytes are truncated, with a TruncationWarning, to fit the context.
        """
        data = text.encode("utf-8")
        room = self.context_length - 2
        if len(data) > room:
            # Cut on a character boundary so the kept bytes still decode.
            data = data[:room].decode("utf-8", errors="ignore").encode("utf-8")
            _warn_truncated(text, len(data), self.context_length)
        ids = [self.bos_id, *data, self.eos_id]
        return ids + [self.pad_id] * (self.context_length - len(ids))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The UTF-8 text of byte ids up to the end token (invalid bytes replaced)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def _tokenizers() -> Any:
    """The ``tokenizers`` library's ``Tokenizer`` class, or an error saying how to install it."""
    try:
        from tokenizers import Tokenizer as _Tok
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this CLIP directory has a tokenizer.json, which needs the 'tokenizers' package: "
            "pip install tokenizers"
        ) from e
    return _Tok


class HFTokenizer(Tokenizer):
    """A pretrained ``tokenizer.json`` read by the ``tokenizers`` library (``pip install tokenizers``).

    Its post-processor adds the start/end tokens, as OpenAI CLIP's does; padding uses
    ``pad_token`` (the end-of-text token for OpenAI CLIP, whose pooling takes the first one).
    """

    def __init__(self, json_text: str, context_length: int, pad_id: int, bos_id: int, eos_id: int) -> None:
        self.json_text = json_text
        self._tok = _tokenizers().from_str(json_text)
        if self._tok.padding is not None:  # a pad token stored in the JSON (see from_directory) wins
            pad_id = self._tok.padding["pad_id"]
        self._tok.no_truncation()
        self._tok.no_padding()
        self.context_length = context_length
        self.vocab_size = self._tok.get_vocab_size()
        # The tokens the post-processor wraps a text in are the tokenizer's own start/end ids; a
        # model config's may be the legacy eos_token_id = 2 of OpenAI's checkpoints (token "#"),
        # which would lose the end-of-text token on truncation and cut decode at every "#".
        wrapped = self._tok.encode("").ids
        if len(wrapped) == 2:
            bos_id, eos_id = wrapped
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    @classmethod
    def from_directory(
        cls, directory: str | Path, context_length: int, pad_id: int, bos_id: int, eos_id: int
    ) -> HFTokenizer:
        """Read ``tokenizer.json``; ``pad_token`` in ``special_tokens_map.json`` or ``tokenizer_config.json``
        overrides ``pad_id`` (OpenAI CLIP pads with its end-of-text token, as transformers'
        ``CLIPTokenizer`` does) and is written into :attr:`json_text`, so the JSON alone rebuilds it."""
        directory = Path(directory)
        text = (directory / "tokenizer.json").read_text(encoding="utf-8")
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = directory / name
            if path.is_file():
                pad = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
                pad = pad.get("content") if isinstance(pad, dict) else pad
                tok = _tokenizers().from_str(text)
                found = tok.token_to_id(pad) if isinstance(pad, str) else None
                if found is not None:
                    tok.enable_padding(pad_id=found, pad_token=pad)
                    text = tok.to_str()
                    break
        return cls(text, context_length, pad_id, bos_id, eos_id)

    def encode(self, text: str) -> list[int]:
        """``tokenizer.json``'s ids of ``text``.

        Truncated, with a TruncationWarning, to fit the context; the end token is kept.
        """
        ids = list(self._tok.encode(text).ids)
        if len(ids) > self.context_length:
            ends_with_eos = ids[-1] == self.eos_id
            ids = ids[: self.context_length - 1 if ends_with_eos else self.context_length]
            if ends_with_eos:
                ids.append(self.eos_id)
            _warn_truncated(text, len(ids), self.context_length)
        return ids + [self.pad_id] * (self.context_length - len(ids))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """``tokenizer.json``'s text of ``ids`` up to the end token."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._tok.decode(
            [i for i in ids if i not in (self.bos_id, self.pad_id)], skip_special_tokens=True
        )
