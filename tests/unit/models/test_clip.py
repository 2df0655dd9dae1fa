"""The CLIP ONNX encoder on tiny generated towers and tokenizer files (no weights downloaded)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgaudit.errors import ModelError
from imgaudit.models.clip import CLIP_MEAN, CLIP_STD, ClipEncoder
from imgaudit.models.clip_tokenizer import ClipTokenizer
from imgaudit.testing.clip import TinyClip, make_tiny_clip
from imgaudit.testing.fakes import textured_image

RED, GREEN, BLUE = (220, 20, 30), (30, 200, 40), (20, 40, 230)
COLOURS = {"red": RED, "green": GREEN, "blue": BLUE}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    return make_tiny_clip(tmp_path_factory.mktemp("clip"), colours=COLOURS)


@pytest.fixture(scope="module")
def tiny_cn(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    return make_tiny_clip(
        tmp_path_factory.mktemp("cnclip"),
        tokenizer="bert-wordpiece",
        colours={"红": RED, "绿": GREEN, "蓝": BLUE},
    )


def solid(rgb: tuple[int, int, int], w: int = 60, h: int = 40) -> np.ndarray:
    return np.full((h, w, 3), rgb, np.uint8)


def photos() -> list[np.ndarray]:
    return [np.asarray(textured_image(seed, (96, 64)).convert("RGB")) for seed in range(5)]


# --- loading and signatures ----------------------------------------------------------------------------


def test_loads_lazily_and_discovers_the_signature(tiny: TinyClip) -> None:
    enc = tiny.encoder()
    assert enc.model_id.startswith("clip-onnx/image/crop32/")  # computed without loading
    assert enc._text_sig is None
    sig = enc.signature()
    assert sig["dim"] == enc.dim == 32
    assert sig["image"].feed == {"pixel_values": "pixels"} and sig["image"].output == "image_embeds"
    text = sig["text"]
    assert text.feed == {"input_ids": "ids", "attention_mask": "mask"}
    assert text.output == "text_embeds"  # the (N, D) output, not the 3-D last_hidden_state
    assert text.batch == 0 and text.ids_dtype == "int64"


def test_chinese_clip_style_export_fits(tmp_path: Path) -> None:
    """Chinese-CLIP's own export: inputs image / text (int ids, no mask, batch fixed at 1), outputs
    unnorm_*_features."""
    tc = make_tiny_clip(
        tmp_path,
        tokenizer="bert-wordpiece",
        fixed_batch=True,
        image_input_name="image",
        image_output_name="unnorm_image_features",
        text_ids_name="text",
        text_mask_name=None,
        text_output_name="unnorm_text_features",
        text_ids_dtype=np.int32,
    )
    enc = tc.encoder(batch_size=8)
    sig = enc.signature()
    assert sig["image"].batch == 1 and sig["text"].batch == 1 and sig["text"].ids_dtype == "int32"
    assert sig["text"].feed == {"text": "ids"} and sig["text"].output == "unnorm_text_features"
    ref = make_tiny_clip(tmp_path / "ref", tokenizer="bert-wordpiece").encoder()  # same seed, dynamic batch
    texts = ["红色连衣裙", "a black bag", "手机"]
    np.testing.assert_allclose(enc.encode_texts(texts), ref.encode_texts(texts), atol=1e-6)
    np.testing.assert_allclose(enc.encode_images(photos()), ref.encode_images(photos()), atol=1e-6)


def test_missing_files_and_unknown_tokenizer_are_clear(tiny: TinyClip, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"text_model .* is not a file"):
        ClipEncoder.from_files(tiny.image_model, tmp_path / "nope.onnx", vocab=tiny.vocab, merges=tiny.merges)
    with pytest.raises(ModelError, match="cannot tell the tokenizer"):
        ClipTokenizer.from_files(tiny.image_model)
    with pytest.raises(ModelError, match="unknown tokenizer"):
        ClipTokenizer("sentencepiece", vocab=tiny.vocab)  # type: ignore[arg-type]


# --- mismatched models ---------------------------------------------------------------------------------


def test_towers_of_different_sizes(tmp_path: Path) -> None:
    enc = make_tiny_clip(tmp_path, text_dim=16).encoder()
    with pytest.raises(
        ModelError, match=r"towers disagree: the image tower gives 32-d .* the text tower 16-d"
    ):
        enc.encode_texts(["red"])


def test_channels_last_image_tower(tmp_path: Path) -> None:
    enc = make_tiny_clip(tmp_path, image_nhwc=True).encoder()
    with pytest.raises(ModelError) as info:
        enc.encode_images([solid(RED)])
    message = info.value.message
    assert "the image tower does not fit" in message
    assert "Found inputs ['pixel_values']" in message and "(N, 3, 32, 32)" in message


def test_wrong_image_size(tiny: TinyClip) -> None:
    with pytest.raises(ModelError, match="image_size 64"):
        tiny.encoder(image_size=64).encode_images([solid(RED)])


def test_image_tower_given_as_text_tower(tiny: TinyClip) -> None:
    enc = ClipEncoder.from_files(
        tiny.image_model, tiny.image_model, vocab=tiny.vocab, merges=tiny.merges, image_size=32
    )
    with pytest.raises(ModelError, match=r"the text tower does not fit: .*Found inputs \['pixel_values'\]"):
        enc.encode_texts(["red"])


def test_named_output_must_exist(tiny: TinyClip) -> None:
    with pytest.raises(ModelError, match="no 2-D output 'pooler_output'"):
        tiny.encoder(text_output="pooler_output").encode_texts(["red"])


# --- encoding ------------------------------------------------------------------------------------------


def test_batched_equals_one_by_one_and_unit_norm(tiny: TinyClip) -> None:
    enc = tiny.encoder(batch_size=3)
    images = [*photos(), solid(RED)]
    texts = ["a photo of a red shoe", "blue", "the black dog and the white cat", "bag", "phone"]
    batched_i, batched_t = enc.encode_images(images), enc.encode_texts(texts)
    single_i = np.concatenate([enc.encode_images([im]) for im in images])
    single_t = np.concatenate([enc.encode_texts([t]) for t in texts])
    assert batched_i.shape == (6, 32) and batched_t.shape == (5, 32)
    assert batched_i.dtype == np.float32 and batched_t.dtype == np.float32
    np.testing.assert_allclose(batched_i, single_i, atol=1e-6)
    np.testing.assert_allclose(batched_t, single_t, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(batched_i, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched_t, axis=1), 1.0, atol=1e-5)
    assert enc.encode_images([]).shape == (0, 32) and enc.encode_texts([]).shape == (0, 32)


def test_deterministic_and_model_id_follows_the_files(tiny: TinyClip, tmp_path: Path) -> None:
    a, b = tiny.encoder(), tiny.encoder(batch_size=1)
    np.testing.assert_array_equal(a.encode_texts(["red dress"]), b.encode_texts(["red dress"]))
    np.testing.assert_array_equal(a.encode_images(photos()[:2]), b.encode_images(photos()[:2]))
    assert a.model_id == b.model_id
    moved = tmp_path / "moved"
    shutil.copytree(tiny.directory, moved)
    copy = ClipEncoder.from_files(
        moved / "image.onnx", moved / "text.onnx", vocab=moved / "vocab.json", merges=moved / "merges.txt",
        image_size=32,
    )  # fmt: skip
    assert copy.model_id == a.model_id  # same contents elsewhere: same space, no rebuild
    other = make_tiny_clip(tmp_path / "other", seed=1).encoder()
    assert other.model_id != a.model_id
    assert tiny.encoder(framing="squash").model_id != a.model_id
    assert len(a.model_id) <= 128


def test_preprocessing_crops_or_squashes(tiny: TinyClip) -> None:
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, :] = BLUE
    wide[:, 30:90] = RED  # the centre square (40:80) and a margin are red, the sides blue
    red = (np.array(RED) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    cropped = tiny.encoder().preprocess(wide)
    assert cropped.shape == (3, 32, 32) and cropped.dtype == np.float32
    np.testing.assert_allclose(cropped[:, 16, 16], red, atol=0.02)
    np.testing.assert_allclose(cropped[:, 0, 0], red, atol=0.05)
    squashed = tiny.encoder(framing="squash").preprocess(wide)
    assert squashed[2, 16, 1] > 1.5 > squashed[2, 16, 16]  # blue at the left edge, red in the middle
    with pytest.raises(ValueError, match="RGB"):
        tiny.encoder().preprocess(np.zeros((8, 8), np.uint8))


# --- tokenizers ----------------------------------------------------------------------------------------


def test_clip_bpe_ids_and_truncation(tiny: TinyClip) -> None:
    table = json.loads(tiny.vocab.read_text("utf-8"))
    tok = ClipTokenizer.from_files(tiny.vocab, tiny.merges)
    assert tok.kind == "clip-bpe" and tok.context_length == 77
    ids, mask = tok.encode(["  A Photo\tof   the RED shoes!"])
    words = ["a", "photo", "of", "the", "red", "shoes", "!"]
    expected = [table["<|startoftext|>"], *(table[w + "</w>"] for w in words), table["<|endoftext|>"]]
    assert ids.dtype == np.int64 and ids.shape == (1, 77)
    assert ids[0, : len(expected)].tolist() == expected
    assert mask[0].sum() == len(expected) and not ids[0, len(expected) :].any()  # padded with 0
    long_ids, long_mask = tok.encode(["red " * 200])
    assert long_mask.sum() == 77 and long_ids[0, 0] == table["<|startoftext|>"]
    assert long_ids[0, -1] == table["<|endoftext|>"] and long_ids[0, -2] == table["red</w>"]
    assert tok.encode(["&amp; red"])[0][0, 1] == table["&</w>"]  # HTML entities unescaped, as open_clip


def test_merges_only_file_builds_the_same_vocabulary(tiny: TinyClip, tmp_path: Path) -> None:
    """open_clip ships only ``bpe_simple_vocab_16e6.txt.gz``; the vocabulary is derived as OpenAI does."""
    merges = tiny.merges.read_text("utf-8").splitlines()[1:]
    gz = tmp_path / "bpe_simple_vocab_tiny.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write('"bpe_simple_vocab_tiny.txt#version: 0.2\n' + "\n".join(merges) + "\n")
    from_json = ClipTokenizer.from_files(tiny.vocab, tiny.merges)
    from_gz = ClipTokenizer.from_files(gz)
    texts = ["a photo of the red shoes", "Yellow bag & phone 42", "unknown words here"]
    np.testing.assert_array_equal(from_json.encode(texts)[0], from_gz.encode(texts)[0])


def test_bert_wordpiece_for_chinese(tiny_cn: TinyClip) -> None:
    vocab = tiny_cn.vocab.read_text("utf-8").splitlines()
    tok = ClipTokenizer.from_files(tiny_cn.vocab)
    assert tok.kind == "bert-wordpiece" and tok.context_length == 52
    assert tok.tokens("红色连衣裙 RED Shoes 猫龙") == [
        "[CLS]", "红", "色", "连", "衣", "裙", "red", "shoes", "猫", "[UNK]", "[SEP]",
    ]  # fmt: skip
    ids, mask = tok.encode(["红色连衣裙", ""])
    assert ids[0, :7].tolist() == [vocab.index(t) for t in ["[CLS]", "红", "色", "连", "衣", "裙", "[SEP]"]]
    assert mask.sum(axis=1).tolist() == [7, 2] and ids[0, 7:].tolist() == [vocab.index("[PAD]")] * 45
    long_ids, long_mask = tok.encode(["红" * 100])
    assert long_mask.sum() == 52 and long_ids[0, -1] == vocab.index("[SEP]")


# --- fusion: text finds the image it was built to find -------------------------------------------------


def test_text_to_image_retrieval_ranks_the_matching_colour_first(tiny: TinyClip) -> None:
    enc = tiny.encoder()
    gallery = [solid(BLUE), *photos()[:2], solid(RED, 80, 50), solid(GREEN, 30, 90)]
    scores = enc.encode_texts(["red", "green", "blue"]) @ enc.encode_images(gallery).T
    assert np.argmax(scores, axis=1).tolist() == [3, 4, 0]
    assert scores[0, 3] > 0.99


def test_chinese_text_to_image_retrieval(tiny_cn: TinyClip) -> None:
    enc = tiny_cn.encoder()
    gallery = [solid(GREEN), solid(BLUE), *photos()[:2], solid(RED)]
    scores = enc.encode_texts(["红", "绿", "蓝"]) @ enc.encode_images(gallery).T
    assert np.argmax(scores, axis=1).tolist() == [4, 0, 1]
