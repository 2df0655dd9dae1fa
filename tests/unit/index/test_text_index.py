"""BM25 text search: analysis (Chinese, Traditional, English), query syntax, filters, snippets, upkeep,
and agreement of the tantivy index with the exact pure-Python reference."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jieba
import pytest

from imgaudit.errors import StoreError
from imgaudit.index.tantivy_index import META_FILE, TantivyTextIndex
from imgaudit.index.text_analysis import analyze, analyze_field, parse_query
from imgaudit.index.text_base import MemoryTextIndex, TextDoc, TextFilters, TextIndex


def doc(
    image_id: int,
    ocr: str = "",
    caption: str = "",
    tags: str = "",
    *,
    source: str = "shop",
    decision: str | None = "unique",
    moderation: str | None = "pass",
    created: int | None = None,
) -> TextDoc:
    when = 1_700_000_000 + image_id if created is None else created
    return TextDoc(image_id, ocr, caption, tags, source, decision, moderation, bool(ocr), when)


CORPUS = [
    doc(1, "红色连衣裙特价 扫码加微信领红包", "Red summer dresses", "连衣裙, 红色, 有文字"),
    doc(2, "", "蓝色 连衣裙 女装", "连衣裙, 蓝色", source="forum", decision="duplicate"),
    doc(3, "卖家微信号abc123 私聊", "phone case", "qr, 二维码, 有文字", moderation="review"),
    doc(4, "", "Running shoes for men", "shoe, sports", source="forum"),
    doc(5, "【包邮】紅色 連衣裙 <限时>", "", "", moderation="violate"),
    doc(6, "连衣裙 本店不卖红色", "Dress in green", "", decision=None, moderation=None),
]

Make = Callable[[], TextIndex]
BACKENDS = [pytest.param(TantivyTextIndex, id="tantivy"), pytest.param(MemoryTextIndex, id="reference")]


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest) -> TextIndex:
    ix = request.param()
    ix.add(CORPUS)
    ix.commit()
    return ix


def found(ix: TextIndex, query: str, **kw) -> list[int]:
    return [h.image_id for h in ix.search(query, 10, **kw)]


# ---- analysis --------------------------------------------------------------------------------------


def test_documents_get_cut_for_search_sub_words_at_their_words_position() -> None:
    text = "女士真皮手提包 红色连衣裙特价"
    terms = {t.term for t in analyze(text)}
    assert {w for w in jieba.cut_for_search(text) if w.strip()} <= terms
    pos = {t.term: t.position for t in analyze(text)}
    assert pos["连衣"] == pos["衣裙"] == pos["连衣裙"] == pos["红色"] + 1
    # Queries are cut plainly: no sub-words.
    assert [t.term for t in analyze("红色连衣裙", search=False)] == ["红色", "连衣裙"]


def test_platform_words_survive_segmentation() -> None:
    # jieba alone reads 加微/信领 and 微/信号: the vocabulary and straddling words keep 微信 findable.
    for text in ["扫码加微信领红包", "卖家微信号abc123", "加微信号私聊"]:
        assert "微信" in {t.term for t in analyze(text)}, text


def test_normalisation_traditional_full_width_case_and_stemming() -> None:
    assert [t.term for t in analyze("連衣裙", search=False)] == ["连衣裙"]
    assert [t.term for t in analyze("ＤＲＥＳＳＥＳ Running", search=False)] == ["dress", "run"]
    # Codes are neither stemmed nor split apart from their digits.
    assert [t.term for t in analyze("iphones15 wxid_abc123", search=False)] == ["iphones15", "wxid", "abc123"]
    # Spans point into the original text, whatever normalisation did.
    text = "【包邮】紅色　ＤＲＥＳＳ"
    assert [text[t.start : t.end] for t in analyze(text, search=False)] == ["包邮", "紅色", "ＤＲＥＳＳ"]
    assert analyze("") == [] and analyze("  ") == [] and analyze("😀!!") == []
    assert analyze("x" * 41) == []  # over-long terms are dropped, as tantivy's tokenizers do


def test_tags_are_segmented_one_by_one() -> None:
    tokens = analyze_field("tags", "有文字,二维码、has text")
    by_term = {t.term: t for t in tokens}
    assert "有文字" in by_term and "二维码" in by_term
    assert by_term["二维码"].position > by_term["有文字"].position + 1  # a gap: no phrase across tags
    assert by_term["text"].position == by_term["has"].position + 1


# ---- search behaviour, the same for both backends ----------------------------------------------------


def test_chinese_word_finds_it_inside_longer_text(index: TextIndex) -> None:
    assert 1 in found(index, "连衣裙")
    assert set(found(index, "连衣裙")) == {1, 2, 5, 6}
    assert found(index, "連衣裙") == found(index, "连衣裙")  # Traditional query
    assert 5 in found(index, "连衣裙")  # Traditional document
    assert set(found(index, "微信")) == {1, 3}


def test_english_stemming(index: TextIndex) -> None:
    assert set(found(index, "dress")) == {1, 6}
    assert set(found(index, "DRESSES")) == {1, 6}
    assert found(index, "run shoe") == [4]


def test_more_matching_terms_rank_higher(index: TextIndex) -> None:
    # In captions, 2 has 连衣裙 only; 6 ("Dress in green") has dress only; 1 has red and dresses.
    assert found(index, "red dress 连衣裙", fields=["caption"])[0] == 1


def test_phrase_query(index: TextIndex) -> None:
    # 6 has both words but apart; 5 has them adjacent in Traditional with a space between.
    assert set(found(index, '"红色 连衣裙"')) == {1, 5}
    assert set(found(index, "“红色连衣裙”")) == {1, 5}  # Chinese quotes, no space
    assert found(index, '"dresses red"') == []
    assert found(index, '"summer dress"') == [1]


def test_field_restriction(index: TextIndex) -> None:
    assert set(found(index, "ocr:微信")) == {1, 3}
    assert set(found(index, "OCR：微信")) == set(found(index, "ｏｃｒ:微信")) == {1, 3}  # case, full width
    assert found(index, "caption:微信") == []
    assert set(found(index, "caption:连衣裙")) == {2}
    assert set(found(index, 'ocr:"红色 连衣裙"')) == {1, 5}
    assert set(found(index, "连衣裙", fields=["tags"])) == {1, 2}
    assert set(found(index, "caption:连衣裙", fields=["tags"])) == {2}  # an explicit field wins
    with pytest.raises(ValueError):
        index.search("x", 5, fields=["title"])


def test_required_and_excluded_terms(index: TextIndex) -> None:
    assert set(found(index, "连衣裙 -红色")) == {2}
    assert set(found(index, "+微信 连衣裙")) == {1, 3}
    assert found(index, "-连衣裙") == []


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (TextFilters(source="forum"), {2}),
        (TextFilters(source=["shop", "forum"]), {1, 2, 5, 6}),
        (TextFilters(source=[]), set()),
        (TextFilters(decision="duplicate"), {2}),
        (TextFilters(moderation=["pass", "violate"]), {1, 2, 5}),
        (TextFilters(has_text=True), {1, 5, 6}),
        (TextFilters(has_text=False), {2}),
        (TextFilters(created_from=1_700_000_002, created_to=1_700_000_006), {2, 5}),  # [from, to)
        (TextFilters(created_to=1_700_000_002), {1}),
        (TextFilters(source="shop", has_text=True, moderation="pass"), {1}),
    ],
)
def test_filters_select_without_scoring(index: TextIndex, filters: TextFilters, expected: set[int]) -> None:
    hits = index.search("连衣裙", 10, filters=filters)
    assert {h.image_id for h in hits} == expected
    unfiltered = {h.image_id: h.score for h in index.search("连衣裙", 10)}
    for h in hits:
        assert h.score == pytest.approx(unfiltered[h.image_id])


def test_snippets_mark_matches_per_field(index: TextIndex) -> None:
    hits = {h.image_id: h.field_hits for h in index.search("微信 dress", 10)}
    assert hits[3] == {"ocr": "卖家<b>微信</b>号abc123 私聊"}
    assert hits[1] == {
        "ocr": "红色连衣裙特价 扫码加<b>微信</b>领红包",
        "caption": "Red summer <b>dresses</b>",
    }
    # Original text (Traditional), HTML escaped; phrase terms marked where all of them occur.
    (hit,) = [h for h in index.search('ocr:"红色 连衣裙"', 10) if h.image_id == 5]
    assert hit.field_hits == {"ocr": "【包邮】<b>紅色</b> <b>連衣裙</b> &lt;限时&gt;"}


def test_plain_snippets_and_long_text_windows() -> None:
    ix = MemoryTextIndex(html_snippets=False)
    long_ocr = "前言" * 60 + "这里有微信号" + "结尾" * 60
    ix.add([doc(1, long_ocr, "<b>caption</b>")])
    ix.commit()
    (hit,) = ix.search("微信 caption", 5)
    assert hit.field_hits["caption"] == "<b>【caption】</b>"
    ocr = hit.field_hits["ocr"]
    assert ocr.startswith("…") and ocr.endswith("…") and "【微信】" in ocr and len(ocr) <= 84


@pytest.mark.parametrize(
    "query",
    ['"', '""', "ocr:", "ocr:\"", "caption:(", "(((", ")", "AND", "OR NOT", "*", "?", "~2", "^3",
     "title:x", ":", "::", "+", "-", "+-", "\\", "[1 TO 5]", "{}", "😀", "👗连衣裙", "\x00", "'",
     "a" * 100_000, "连衣裙 " * 5_000, "ocr:微信 AND (caption:\"red", "\u200b微\u200b信"],
)  # fmt: skip
def test_malformed_queries_never_raise(index: TextIndex, query: str) -> None:
    hits = index.search(query, 5)
    assert isinstance(hits, list) and len(hits) <= 5


def test_malformed_queries_fall_back_to_their_words(index: TextIndex) -> None:
    assert set(found(index, 'ocr:微信 AND (caption:"red')) >= {1, 3}
    assert set(found(index, "👗连衣裙")) == {1, 2, 5, 6}
    assert set(found(index, "\u200b微\u200b信")) == {1, 3}  # invisible characters dropped
    assert len(parse_query("连衣裙 " * 5_000)) == 1
    assert len(parse_query(" ".join(f"w{i}" for i in range(500)))) == 64


def test_empty_index_and_degenerate_calls() -> None:
    for ix in (TantivyTextIndex(), MemoryTextIndex()):
        assert len(ix) == 0 and ix.ids() == [] and ix.search("连衣裙", 5) == []
        ix.add(CORPUS)
        ix.commit()
        assert ix.search("连衣裙", 0) == [] and ix.search("", 5) == [] and ix.search("   ", 5) == []


# ---- upkeep ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [TantivyTextIndex, MemoryTextIndex])
def test_upsert_remove_clear_and_commit_visibility(make: Make) -> None:
    ix = make()
    ix.add(CORPUS)
    assert len(ix) == 0  # nothing is visible before commit
    ix.commit()
    assert len(ix) == 6 and ix.ids() == [1, 2, 3, 4, 5, 6]
    ix.add([doc(1, "绿色外套"), doc(9, "绿色外套"), doc(9, "黑色外套")])  # re-added ids replace
    ix.commit()
    assert len(ix) == 7
    assert 1 not in found(ix, "微信") and set(found(ix, "外套")) == {1, 9}
    assert found(ix, "绿色") == [1] and found(ix, "黑色") == [9]
    ix.remove([1, 2, 12345])
    ix.commit()
    assert ix.ids() == [3, 4, 5, 6, 9] and found(ix, "绿色") == []
    ix.clear()
    ix.commit()
    assert len(ix) == 0 and found(ix, "外套") == []


def test_persists_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "text"
    extra = doc(7, "未提交的微信")
    with TantivyTextIndex(path) as ix:
        ix.add(CORPUS)
        ix.commit()
        ix.add([extra])  # close() commits what is pending
    in_memory = TantivyTextIndex()
    in_memory.add([*CORPUS, extra])
    in_memory.commit()
    with TantivyTextIndex(path) as again:
        assert again.ids() == [1, 2, 3, 4, 5, 6, 7]
        assert again.search("连衣裙 微信", 10) == in_memory.search("连衣裙 微信", 10)
        again.remove([7])
    assert TantivyTextIndex(path).ids() == [1, 2, 3, 4, 5, 6]


def test_an_index_from_another_analyzer_must_be_rebuilt(tmp_path: Path) -> None:
    with TantivyTextIndex(tmp_path / "t") as ix:
        ix.add(CORPUS[:1])
    (tmp_path / "t" / META_FILE).write_text('{"analyzer": 0}')
    with pytest.raises(StoreError, match="rebuild"):
        TantivyTextIndex(tmp_path / "t")


def test_jieba_loads_quietly() -> None:
    code = "from imgaudit.index.text_analysis import analyze; assert analyze('红色连衣裙')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr == ""


# ---- conformance with the reference ------------------------------------------------------------------

WORDS = [
    "红色", "蓝色", "黑色", "白色", "连衣裙", "外套", "手提包", "运动鞋", "手机壳", "二维码", "微信",
    "包邮", "特价", "正品", "高仿", "夏季", "新款", "纯棉", "真皮", "儿童",
    "dress", "dresses", "shoes", "running", "leather", "bag", "phone", "case", "summer", "cotton", "kids",
    "sale",
]  # fmt: skip
QUERIES = [
    "连衣裙", "红色 连衣裙", "微信", "手提包 真皮", "dress", "running shoes", "summer sale 特价", "二维码",
    '"红色 连衣裙"', "ocr:微信", "caption:dress", "高仿 -正品", "儿童 外套 kids", "phone case 手机壳",
]  # fmt: skip


def _random_corpus(seed: int, n: int, max_words: int) -> list[TextDoc]:
    rng = random.Random(seed)

    def text(sep: str = "") -> str:
        return sep.join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words)))

    return [doc(i, text(), text(" "), text(", "), source=rng.choice(["a", "b"])) for i in range(1, n + 1)]


def _both(docs: list[TextDoc]) -> tuple[TantivyTextIndex, MemoryTextIndex]:
    ix, ref = TantivyTextIndex(), MemoryTextIndex()
    for x in (ix, ref):
        x.add(docs)
        x.commit()
    return ix, ref


def test_short_documents_score_exactly_like_the_reference() -> None:
    # Up to 8 words a field: tantivy's field lengths are exact, so BM25 must agree to float precision.
    ix, ref = _both(_random_corpus(1, 60, 8))
    for q in QUERIES:
        got, want = ix.search(q, 10), ref.search(q, 10)
        assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-5), q
        # Ids agree except in the order of equal scores, which tantivy breaks the same way (by id).
        assert [h.image_id for h in got] == [h.image_id for h in want], q
        assert [h.field_hits for h in got] == [h.field_hits for h in want], q


@pytest.mark.parametrize("churn", [False, True], ids=["long", "long-with-deletions"])
def test_long_documents_rank_like_the_reference(churn: bool) -> None:
    # Long fields (tantivy quantises their lengths) and replaced or deleted documents (tantivy counts them
    # in its statistics until a merge): scores drift by up to ~10 %, so only near-ties may swap.
    ix, ref = _both(_random_corpus(2, 80, 60))
    if churn:
        replaced = _random_corpus(3, 30, 60)
        for x in (ix, ref):
            x.add(replaced)
            x.remove(range(70, 81))
            x.commit()
    for q in QUERIES:
        got, want = ix.search(q, 5), ref.search(q, 5)
        assert len(got) == len(want), q
        if not want:
            continue
        near_tie = len(want) > 1 and want[1].score > 0.98 * want[0].score
        assert near_tie or got[0].image_id == want[0].image_id, q
        assert len({h.image_id for h in got} & {h.image_id for h in want}) >= len(want) - 1, q
