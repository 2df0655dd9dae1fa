"""A tiny CLIP in the shape of real exports, generated on the spot with onnx's helper API (no torch, no
download), for tests here and in code that builds on imgaudit's ClipEncoder.

- image tower: ``pixel_values`` (N, 3, S, S) -> 4x4 average pool -> flatten (48) -> MatMul ->
  ``image_embeds``;
- text tower: ``input_ids`` (N, L) [+ ``attention_mask``] -> embedding Gather -> mean over real tokens ->
  the same MatMul -> ``text_embeds`` (plus a 3-D ``last_hidden_state``, as HF exports have);
- a CLIP byte-level BPE ``vocab.json`` / ``merges.txt`` (merges trained on a few English words with HF
  ``tokenizers``) and a BERT ``vocab.txt`` with those words and a few Chinese characters.

Both towers share the 48 -> D projection, so a word whose embedding row is set to a colour's pooled
feature (``colours=``) lands exactly on images of that colour: a retrieval sanity check with known answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgaudit.models.clip import CLIP_MEAN, CLIP_STD, ClipEncoder
from imgaudit.models.clip_tokenizer import EOT, SOT, bytes_to_unicode

GRID = 4
FEATURES = 3 * GRID * GRID
OPSET = 17

TINY_WORDS = (
    "a", "photo", "of", "the", "red", "green", "blue", "black", "white", "yellow",
    "shoe", "shoes", "dress", "bag", "phone", "cat", "dog", "and",
)  # fmt: skip
TINY_CHINESE = "一张的照片红绿蓝黑白黄色鞋子连衣裙包手机猫狗和"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_clip_bpe(directory: Path, words: Sequence[str] = TINY_WORDS) -> tuple[Path, Path]:
    """``vocab.json`` and ``merges.txt`` laid out as OpenAI CLIP's: 256 byte symbols, the same with
    ``</w>``, one symbol per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (the two highest ids).
    Every word of ``words`` is one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    trainer_tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        min_frequency=1,
    )
    trainer_tok.train_from_iterator(list(words), trainer=trainer)  # one word per item: no spaces
    raw = json.loads(trainer_tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw]
    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    seen = set(symbols)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            symbols.append(a + b)
    symbols += [SOT, EOT]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab_path.write_text(json.dumps({s: i for i, s in enumerate(symbols)}, ensure_ascii=False), "utf-8")
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8")
    return vocab_path, merges_path


def write_bert_vocab(directory: Path, words: Sequence[str] = TINY_WORDS, chinese: str = TINY_CHINESE) -> Path:
    """A BERT ``vocab.txt``: specials first ([PAD] = 0), whole English words, ``##s``, Chinese characters,
    digits and a little punctuation."""
    tokens = [*BERT_SPECIALS, *dict.fromkeys(words), "##s", *dict.fromkeys(chinese), *"0123456789", *".,!?"]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", "utf-8")
    return path


def colour_feature(rgb: Sequence[int], mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """What the tiny image tower pools from a one-colour image: the normalised colour, per grid cell."""
    x = (np.asarray(rgb, np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.repeat(x, GRID * GRID).astype(np.float32)  # channel-major, as Flatten lays (3, 4, 4) out


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any], name: str) -> Any:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="imgaudit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def image_tower(
    path: Path,
    weights: np.ndarray,
    *,
    image_size: int,
    input_name: str = "pixel_values",
    output_name: str = "image_embeds",
    fixed_batch: bool = False,
    nhwc: bool = False,
) -> Path:
    """Pool to a 4x4 grid, flatten, project with ``weights`` (48, D). ``nhwc`` makes a mismatched tower."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if image_size % GRID:
        raise ValueError(f"image_size must be a multiple of {GRID}")
    k = image_size // GRID
    batch: int | str = 1 if fixed_batch else "N"
    shape = [batch, image_size, image_size, 3] if nhwc else [batch, 3, image_size, image_size]
    nodes = []
    source = input_name
    if nhwc:
        nodes.append(helper.make_node("Transpose", [input_name], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    nodes += [
        helper.make_node("AveragePool", [source], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], [output_name]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, weights.shape[1]])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")],
        "tiny_image_tower",
    )
    onnx.save(model, str(path))
    return path


def text_tower(
    path: Path,
    embeddings: np.ndarray,
    weights: np.ndarray,
    *,
    pad_id: int = 0,
    ids_name: str = "input_ids",
    mask_name: str | None = "attention_mask",
    output_name: str = "text_embeds",
    ids_dtype: Any = np.int64,
    fixed_batch: bool = False,
) -> Path:
    """Mean of the token embeddings over real tokens (the mask input, or ids != pad without one),
    projected with ``weights`` (48, D). Any context length."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.INT32 if np.dtype(ids_dtype) == np.int32 else TensorProto.INT64
    batch: int | str = 1 if fixed_batch else "N"
    inputs = [helper.make_tensor_value_info(ids_name, elem, [batch, "L"])]
    inits = [
        numpy_helper.from_array(embeddings.astype(np.float32), "E"),
        numpy_helper.from_array(weights.astype(np.float32), "W"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [helper.make_node("Gather", ["E", ids_name], ["hidden"], axis=0)]
    if mask_name:
        inputs.append(helper.make_tensor_value_info(mask_name, elem, [batch, "L"]))
        nodes.append(helper.make_node("Cast", [mask_name], ["m"], to=TensorProto.FLOAT))
    else:
        inits.append(numpy_helper.from_array(np.array(pad_id, np.dtype(ids_dtype)), "pad"))
        nodes += [
            helper.make_node("Equal", [ids_name, "pad"], ["is_pad"]),
            helper.make_node("Not", ["is_pad"], ["is_token"]),
            helper.make_node("Cast", ["is_token"], ["m"], to=TensorProto.FLOAT),
        ]
    nodes += [
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["hidden", "m3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["m", "axis1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["denominator"]),
        helper.make_node("Div", ["summed", "denominator"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "W"], [output_name]),
        helper.make_node("Identity", ["hidden"], ["last_hidden_state"]),
    ]
    outputs = [
        helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, [batch, "L", embeddings.shape[1]]
        ),
        helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, weights.shape[1]]),
    ]
    onnx.save(_model(nodes, inputs, outputs, inits, "tiny_text_tower"), str(path))
    return path


@dataclass(frozen=True)
class TinyClip:
    """Paths of a generated tiny CLIP and what it was made with."""

    directory: Path
    image_model: Path
    text_model: Path
    vocab: Path
    merges: Path | None
    tokenizer: str
    image_size: int
    dim: int
    framing: str

    def encoder(self, **kwargs: Any) -> ClipEncoder:
        options: dict[str, Any] = {"image_size": self.image_size, "framing": self.framing, "batch_size": 4}
        options.update(kwargs)
        return ClipEncoder.from_files(
            self.image_model, self.text_model, vocab=self.vocab, merges=self.merges, **options
        )


def make_tiny_clip(
    directory: Path,
    *,
    tokenizer: str = "clip-bpe",
    dim: int = 32,
    image_size: int = 32,
    seed: int = 0,
    colours: Mapping[str, Sequence[int]] | None = None,
    text_dim: int | None = None,
    **tower_options: Any,
) -> TinyClip:
    """Write a tiny CLIP (towers + tokenizer files) into ``directory``.

    ``tokenizer``: ``clip-bpe`` (English words) or ``bert-wordpiece`` (Chinese-CLIP style, with Chinese
    characters). ``colours`` maps a word (BPE) or token (WordPiece, e.g. ``"红"``) to an RGB colour: its
    embedding row is set so that the word retrieves images of that colour. ``text_dim`` different from
    ``dim`` makes mismatched towers. ``tower_options`` go to both tower builders where they apply
    (``fixed_batch``), or by prefix: ``image_nhwc``, ``text_ids_dtype``, ``text_mask_name``...
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if tokenizer == "clip-bpe":
        vocab, merges = write_clip_bpe(directory)
        table: dict[str, int] = json.loads(vocab.read_text("utf-8"))
        specials = [table[SOT], table[EOT]]
        pad_id, framing = 0, "crop"

        def token_id(word: str) -> int:
            return table[word.lower() + "</w>"]
    elif tokenizer == "bert-wordpiece":
        vocab, merges = write_bert_vocab(directory), None
        lines = vocab.read_text("utf-8").splitlines()
        table = {t: i for i, t in enumerate(lines)}
        specials = [table[t] for t in BERT_SPECIALS]
        pad_id, framing = table["[PAD]"], "squash"

        def token_id(word: str) -> int:
            return table[word.lower()]
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}")
    embeddings = rng.normal(size=(len(table), FEATURES)).astype(np.float32)
    embeddings[specials] = 0.0  # start/end/pad tokens carry no meaning: only the words count
    for word, rgb in (colours or {}).items():
        embeddings[token_id(word)] = colour_feature(rgb)
    weights = (rng.normal(size=(FEATURES, dim)) / np.sqrt(FEATURES)).astype(np.float32)
    text_weights = (
        weights
        if text_dim in (None, dim)
        else (rng.normal(size=(FEATURES, int(text_dim))) / np.sqrt(FEATURES)).astype(np.float32)
    )
    shared = {k: v for k, v in tower_options.items() if k == "fixed_batch"}
    image_opts = {k[6:]: v for k, v in tower_options.items() if k.startswith("image_")}
    text_opts = {k[5:]: v for k, v in tower_options.items() if k.startswith("text_")}
    image_path = image_tower(directory / "image.onnx", weights, image_size=image_size, **shared, **image_opts)
    text_path = text_tower(
        directory / "text.onnx", embeddings, text_weights, pad_id=pad_id, **shared, **text_opts
    )
    return TinyClip(directory, image_path, text_path, vocab, merges, tokenizer, image_size, dim, framing)
