"""Token ids for a CLIP text tower: OpenAI CLIP's byte-level BPE or Chinese-CLIP's BERT WordPiece, built
with HF ``tokenizers`` from local files (imgaudit never downloads a vocabulary).

Kept apart from the encoder (``imgaudit.models.clip``): what a text becomes is the tokenizer's business,
how the towers run is the encoder's.
"""

from __future__ import annotations

import gzip
import html
import json
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from imgaudit.errors import ModelError
from imgaudit.models.file_fingerprint import file_fingerprint

CLIP_CONTEXT = 77
"""OpenAI CLIP / open_clip text context length."""

BERT_CONTEXT = 52
"""Chinese-CLIP text context length."""

OPENAI_MERGES = 49152 - 256 - 2
"""Merges OpenAI CLIP keeps from its merges-only ``bpe_simple_vocab_16e6.txt.gz`` (vocabulary 49408)."""

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_BPE_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

TokenizerKind = Literal["clip-bpe", "bert-wordpiece"]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character table, in CLIP's vocabulary order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _read_merges(path: Path) -> list[tuple[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ModelError(f"cannot read BPE merges {path}: {exc}") from exc
    merges = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or (number == 1 and "#version" in line):  # header of merges.txt and OpenAI's .gz
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ModelError(f"{path}:{number}: a merge is two symbols separated by a space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class ClipTokenizer:
    """Token ids for a CLIP text tower, built with HF ``tokenizers`` from local files on first use.

    - ``clip-bpe``: OpenAI CLIP's byte-level BPE (``vocab.json`` + ``merges.txt`` as in HF exports, or only
      the merges file, e.g. open_clip's ``bpe_simple_vocab_16e6.txt.gz``, from which the vocabulary is
      derived as OpenAI does). Lower-cased, ``<|startoftext|> ... <|endoftext|>``, padded with 0 (the text
      tower pools at the end token, so the pad id does not matter), context 77.
    - ``bert-wordpiece``: Chinese-CLIP's BERT WordPiece (``vocab.txt``): lower-cased, Chinese characters
      split one per token, ``[CLS] ... [SEP]``, padded with ``[PAD]``, context 52.

    Texts longer than the context are truncated, keeping the end token last, as the references do.
    """

    def __init__(
        self,
        kind: TokenizerKind,
        *,
        vocab: Path | None = None,
        merges: Path | None = None,
        context_length: int | None = None,
        lowercase: bool = True,
    ) -> None:
        if kind not in ("clip-bpe", "bert-wordpiece"):
            raise ModelError(f"unknown tokenizer {kind!r}: expected clip-bpe or bert-wordpiece")
        if kind == "clip-bpe" and merges is None:
            raise ModelError(
                "the CLIP BPE tokenizer needs a merges file (merges.txt or bpe_simple_vocab_*.gz)"
            )
        if kind == "bert-wordpiece" and vocab is None:
            raise ModelError("the BERT WordPiece tokenizer needs a vocab.txt")
        self.kind: TokenizerKind = kind
        self.vocab = None if vocab is None else Path(vocab)
        self.merges = None if merges is None else Path(merges)
        default = CLIP_CONTEXT if kind == "clip-bpe" else BERT_CONTEXT
        self.context_length = int(context_length or default)
        if self.context_length < 3:
            raise ModelError(f"context_length {self.context_length} leaves no room for text")
        self.lowercase = lowercase
        self._tokenizer: Any = None
        self._pad_id = 0
        self._lock = threading.Lock()

    @classmethod
    def from_files(
        cls,
        vocab: Path | None = None,
        merges: Path | None = None,
        *,
        kind: str = "auto",
        context_length: int | None = None,
    ) -> ClipTokenizer:
        """``kind="auto"``: a merges file (or a ``.json`` / ``.gz`` vocabulary) means CLIP BPE; a lone
        ``.txt`` vocabulary means BERT WordPiece."""
        if kind == "auto":
            if merges is not None:
                kind = "clip-bpe"
            elif vocab is not None and Path(vocab).name.endswith(".gz"):
                vocab, merges, kind = None, vocab, "clip-bpe"
            elif vocab is not None and Path(vocab).suffix == ".txt":
                kind = "bert-wordpiece"
            else:
                raise ModelError(
                    "cannot tell the tokenizer from the files: give vocab.json + merges.txt (CLIP) or "
                    "vocab.txt (Chinese-CLIP), or set the tokenizer kind"
                )
        # A kind given by name reaches __init__ as a plain str; __init__ refuses any but a TokenizerKind.
        return cls(kind, vocab=vocab, merges=merges, context_length=context_length)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        files = [p for p in (self.vocab, self.merges) if p is not None]
        return "/".join([self.kind, str(self.context_length), *(file_fingerprint(p) for p in files)])

    @property
    def pad_id(self) -> int:
        self._load()
        return self._pad_id

    def _load(self) -> Any:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = (
                        self._build_bpe() if self.kind == "clip-bpe" else self._build_wordpiece()
                    )
        return self._tokenizer

    def _build_bpe(self) -> Any:
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

        assert self.merges is not None
        merges = _read_merges(self.merges)
        if self.vocab is not None:
            try:
                vocab = json.loads(self.vocab.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot read the BPE vocabulary {self.vocab}: {exc}") from exc
        else:  # merges only: the vocabulary is every byte, every byte ending a word, each merge, specials
            merges = merges[:OPENAI_MERGES]
            symbols = list(bytes_to_unicode().values())
            symbols += [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
            vocab = {s: i for i, s in enumerate(symbols)}
        missing = [t for t in (SOT, EOT) if t not in vocab]
        if missing:
            raise ModelError(
                f"the BPE vocabulary {self.vocab} lacks {', '.join(missing)}: not a CLIP vocabulary"
            )
        tok = Tokenizer(
            models.BPE(
                vocab=vocab,
                merges=merges,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=EOT,
            )
        )
        steps = [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " ")]
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Lowercase()] if self.lowercase else steps)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_BPE_SPLIT), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.post_processor = processors.TemplateProcessing(
            single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])]
        )
        tok.enable_truncation(max_length=self.context_length)
        self._pad_id = 0
        return tok

    def _build_wordpiece(self) -> Any:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

        assert self.vocab is not None
        try:
            lines = self.vocab.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelError(f"cannot read the WordPiece vocabulary {self.vocab}: {exc}") from exc
        vocab: dict[str, int] = {}
        for i, token in enumerate(lines):
            vocab.setdefault(token.rstrip("\n"), i)
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
        if missing:
            raise ModelError(f"the WordPiece vocabulary {self.vocab} lacks {', '.join(missing)}")
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=self.lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        tok.enable_truncation(max_length=self.context_length)
        self._pad_id = vocab["[PAD]"]
        return tok

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)``, both int64 ``(len(texts), context_length)``; mask is 1 on real tokens."""
        tok = self._load()
        cleaned = [self._clean(t) for t in texts]
        encodings = tok.encode_batch(cleaned) if cleaned else []
        ids = np.full((len(texts), self.context_length), self._pad_id, np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
        return ids, mask

    def tokens(self, text: str) -> list[str]:
        """The token strings of one text (for debugging a vocabulary)."""
        return list(self._load().encode(self._clean(text)).tokens)

    def _clean(self, text: str) -> str:
        if self.kind == "clip-bpe":  # as open_clip's basic_clean (less ftfy's mojibake repair)
            return html.unescape(html.unescape(text)).strip()
        return text.strip()
