"""The text-risk rules engine: contact details behind evasions, benign shop text left alone, rule files."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgaudit.errors import ConfigError
from imgaudit.rules.compile import CONTACT_INFO
from imgaudit.rules.matcher import TextHit, TextRules
from imgaudit.rules.normalise import normalise


@pytest.fixture(scope="module")
def rules() -> TextRules:
    return TextRules.load()


def contacts(rules: TextRules, *lines: str) -> set[tuple[str, str]]:
    return {(h.kind, h.value) for h in rules.scan(lines) if h.category == CONTACT_INFO}


PHONE = ("phone", "13812345678")

POSITIVES = [
    # mobile numbers and their evasions
    (["13812345678"], PHONE),
    (["联系我 138 1234 5678"], PHONE),
    (["138-1234-5678"], PHONE),
    (["138.1234.5678"], PHONE),
    (["138_1234_5678"], PHONE),
    (["138/1234/5678"], PHONE),
    (["138|1234|5678"], PHONE),
    (["1 3 8 . 1 2 3 4 . 5 6 7 8"], PHONE),
    (["138★1234★5678"], PHONE),
    (["138🔥1234🔥5678"], PHONE),
    (["1️⃣3️⃣8️⃣1️⃣2️⃣3️⃣4️⃣5️⃣6️⃣7️⃣8️⃣"], PHONE),
    (["１３８１２３４５６７８"], PHONE),
    (["1３8 1234 5６78"], PHONE),
    (["一三八一二三四五六七八"], PHONE),
    (["幺三八 幺二三四 五六七八"], PHONE),
    (["壹叁捌壹贰叁肆伍陆柒捌"], PHONE),
    (["138一二三四5678"], PHONE),
    (["一三八 1234 五六七八"], PHONE),
    (["幺三八两两三四 五六七八"], ("phone", "13822345678")),
    (["l38OO138OOO"], ("phone", "13800138000")),
    (["I38 I234 5678"], PHONE),
    (["|38 1234 5678"], PHONE),
    (["138B1234567"], ("phone", "13881234567")),
    (["+86 138 1234 5678"], PHONE),
    (["(+86)13812345678"], PHONE),
    (["0086-138-1234-5678"], PHONE),
    (["Tel13812345678"], PHONE),
    (["phone: 138 1234 5678"], PHONE),
    (["手机13812345678"], PHONE),
    (["電話：138 1234 5678"], PHONE),
    (["原价3999", "138 1234 5678"], PHONE),
    (["价格 199 13812345678"], PHONE),
    # split over two OCR lines
    (["电话 138 1234", "5678"], PHONE),
    (["138", "1234 5678 包邮"], PHONE),
    # landlines and hotlines
    (["0755-12345678"], ("landline", "075512345678")),
    (["010-87654321"], ("landline", "01087654321")),
    (["(0755) 8888-8888"], ("landline", "075588888888")),
    (["0571-1234567"], ("landline", "05711234567")),
    (["客服热线 400-123-4567"], ("landline", "4001234567")),
    (["800 820 8820"], ("landline", "8008208820")),
    # QQ, only with a cue
    (["QQ: 12345678"], ("qq", "12345678")),
    (["qq12345678"], ("qq", "12345678")),
    (["Q号 12345678"], ("qq", "12345678")),
    (["扣扣 123 456 789"], ("qq", "123456789")),
    (["企鹅：2345678"], ("qq", "2345678")),
    (["q:12345"], ("qq", "12345")),
    (["ＱＱ：一二三四五六七八"], ("qq", "12345678")),
    (["QQ/微信同号 12345678"], ("qq", "12345678")),
    (["QQ", "12345678"], ("qq", "12345678")),
    # WeChat
    (["微信：abc123"], ("wechat", "abc123")),
    (["微信号码是：abc_123"], ("wechat", "abc_123")),
    (["威信 abc123"], ("wechat", "abc123")),
    (["薇信 abc_12"], ("wechat", "abc_12")),
    (["徽信：zhangsan"], ("wechat", "zhangsan")),
    (["VX: Shop_Owner8"], ("wechat", "shop_owner8")),
    (["加V：zhangsan88"], ("wechat", "zhangsan88")),
    (["+V abc123"], ("wechat", "abc123")),
    (["V信 abc123"], ("wechat", "abc123")),
    (["wx: abc-123"], ("wechat", "abc-123")),
    (["wechat: zhang_san"], ("wechat", "zhang_san")),
    (["weixin abc123"], ("wechat", "abc123")),
    (["卫星 abc123"], ("wechat", "abc123")),
    (["加微 abc123"], ("wechat", "abc123")),
    (["微 信：abc123"], ("wechat", "abc123")),
    (["微信：", "abc123"], ("wechat", "abc123")),
    (["wxid_abc123"], ("wechat", "wxid_abc123")),
    (["VX13812345678"], ("wechat", "13812345678")),
    (["微信同号 138 1234 5678"], ("wechat", "13812345678")),
    (["wx: l38 1234 5678"], ("wechat", "13812345678")),
    (["加V信:13812345678"], ("wechat", "13812345678")),
    (["加我 vx：abc123 包邮"], ("wechat", "abc123")),
    # e-mail
    (["abc@qq.com"], ("email", "abc@qq.com")),
    (["Email me: John.Doe@Gmail.com"], ("email", "john.doe@gmail.com")),
    (["abc at qq dot com"], ("email", "abc@qq.com")),
    (["abc(at)163.com"], ("email", "abc@163.com")),
    (["abc#qq.com"], ("email", "abc@qq.com")),
    (["abc艾特qq点com"], ("email", "abc@qq.com")),
    (["ａｂｃ＠ｑｑ．ｃｏｍ"], ("email", "abc@qq.com")),
    # URLs and domains
    (["http://t.cn/A6abcd"], ("url", "t.cn/a6abcd")),
    (["Visit https://shop.example.com/item?id=3."], ("url", "shop.example.com/item?id=3")),
    (["www.example.com"], ("url", "example.com")),
    (["官网 example.com 欢迎"], ("url", "example.com")),
    (["t.cn/xyz"], ("url", "t.cn/xyz")),
    (["abc.top"], ("url", "abc.top")),
    (["shop.vip"], ("url", "shop.vip")),
    (["my-store.shop"], ("url", "my-store.shop")),
    (["abc.com.cn"], ("url", "abc.com.cn")),
    (["abc点cn"], ("url", "abc.cn")),
    (["abc dot com"], ("url", "abc.com")),
    (["4399.com"], ("url", "4399.com")),
    # Telegram and WhatsApp
    (["tg: @shop_bot"], ("telegram", "shop_bot")),
    (["telegram @abcde"], ("telegram", "abcde")),
    (["纸飞机：abc_123"], ("telegram", "abc_123")),
    (["t.me/shopbot"], ("telegram", "shopbot")),
    (["WhatsApp: +86 138 1234 5678"], ("whatsapp", "8613812345678")),
    (["wa 447911123456"], ("whatsapp", "447911123456")),
    (["wa.me/8613812345678"], ("whatsapp", "8613812345678")),
]


@pytest.mark.parametrize(("lines", "expected"), POSITIVES, ids=[" / ".join(p[0]) for p in POSITIVES])
def test_catches_contact_details(rules: TextRules, lines: list[str], expected: tuple[str, str]) -> None:
    assert expected in contacts(rules, *lines)


NEGATIVES = [
    # prices
    "¥199",
    "￥1999.00",
    "199元",
    "价格 2999",
    "$19.99",
    "原价3999现价1999",
    "容量 500ml 重量 1.5kg 价格 ¥139.9 ¥129.9 ¥99.9",
    "满199减50 折扣85%",
    "13812345678元",
    "团购价 ¥138 / ¥1234 / ¥5678",
    "涨幅 13% 81% 23% 45% 67% 8%",
    # dates and times
    "2024-05-01",
    "2024年5月1日",
    "12:30",
    "20240501",
    "2024-05-01 12:30",
    "2024.05.01-2024.06.01",
    "保质期 2024.05.01 至 2026.04.30",
    "营业时间 09:00-18:00 13:45-18:30",
    # sizes
    "XL",
    "XXL",
    "S M L XL XXL",
    "500ml",
    "42码",
    "175/92A",
    "30x40cm",
    "1.5m",
    "尺寸 120 x 60 x 75 cm",
    # models and part numbers
    "iPhone 15 Pro Max",
    "SM-G9980",
    "RTX 4090",
    "A2894",
    "ABC-12345",
    "华为 Mate 60 Pro 小米14 Redmi K70",
    "电池 5000mAh 屏幕 6.7英寸 内存 12GB+256GB",
    "型号 13812345678",
    # orders, parcels and barcodes
    "订单号 2024050112345678",
    "快递单号 SF1234567890123",
    "订单号：13812345678",
    "运单 13912345678",
    "快递单号：139 1234 5678",
    "SF13812345678",
    "6901234567892",
    "条码 6901234567892",
    "IMEI 861234567890123",
    "13812345678901",
    "订单编号 0755123456",
    # shop phrases and payment methods
    "包邮",
    "正品保证",
    "七天无理由退换",
    "假一赔十",
    "微信支付",
    "支持微信付款",
    "微信支付 / 支付宝",
    "微信扫码支付",
    "加微信领优惠券",
    "微商城",
    "客服在线",
    "Supports WeChat payment and Alipay",
    "Share to WeChat friends",
    "WeChat Pay accepted",
    "飞机 airplane model",
    "WX series 2024",
    "微信 / QQ / 电话",
    "联系方式：微信、QQ、电话均可",
    "Meet us at booth #12",
    "qq音乐 12345678",
    "企鹅玩偶 30cm",
    # numbers and lists
    "50%",
    "1/2/3",
    "x2",
    "销量 10000+ 评价 2000+",
    "第1名 第2名 第3名",
    # file names, versions, decimals
    "IMG_001.jpg",
    "photo_2024.png",
    "v1.2.3",
    "3.5",
    "3.14159",
    # ordinary descriptions
    "纯棉面料，透气舒适，适合春秋季穿着。",
    "This lightweight jacket is perfect for spring. Machine washable.",
    "Made in China.Top quality guaranteed",
    "Shenzhen ABC Technology Co.,Ltd.",
    "Contact customer service in the app for help",
    "水枪支架",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_leaves_benign_shop_text_alone(rules: TextRules, text: str) -> None:
    assert rules.scan([text]) == []


def test_an_eleven_digit_stretch_of_a_longer_number_is_no_phone(rules: TextRules) -> None:
    assert contacts(rules, "6222 0213 8123 4567 890") == set()
    assert contacts(rules, "订单 20240501 138 1234 5678 0") == set()


def test_two_numbers_in_one_run_are_both_found(rules: TextRules) -> None:
    found = contacts(rules, "138-1234-5678/139-8765-4321")
    assert found == {PHONE, ("phone", "13987654321")}


def test_a_number_line_after_a_price_line_is_read_alone(rules: TextRules) -> None:
    assert contacts(rules, "QQ 12345", "138 1234 5678") == {("qq", "12345"), PHONE}


def test_hit_fields_point_at_the_original_text(rules: TextRules) -> None:
    [hit] = rules.scan(["正品保证", "客服 １３８ 1234 5678 包邮"])
    assert hit == TextHit(
        category=CONTACT_INFO,
        kind="phone",
        severity="violate",
        value="13812345678",
        masked="138****5678",
        line=1,
        text="１３８ 1234 5678",
    )


def test_a_number_split_over_lines_starts_on_the_first(rules: TextRules) -> None:
    [hit] = rules.scan(["包邮", "客服 138 1234", "5678"])
    assert (hit.line, hit.text) == (1, "138 1234\n5678")


def test_a_cued_number_is_reported_once_under_its_cue(rules: TextRules) -> None:
    hits = rules.scan(["微信：138 1234 5678"])
    assert [(h.kind, h.value, h.text) for h in hits] == [("wechat", "13812345678", "微信：138 1234 5678")]


def test_an_email_is_not_also_a_url_or_a_phone(rules: TextRules) -> None:
    hits = rules.scan(["13812345678@163.com"])
    assert [(h.kind, h.value) for h in hits] == [("email", "13812345678@163.com")]


def test_a_sentence_with_at_is_no_email(rules: TextRules) -> None:
    assert contacts(rules, "available at target.com") == {("url", "target.com")}


def test_repeated_values_are_reported_once(rules: TextRules) -> None:
    hits = rules.scan(["13812345678", "再说一遍 138-1234-5678"])
    assert [(h.value, h.line) for h in hits] == [("13812345678", 0)]


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        ("13812345678", "138****5678"),
        ("QQ 12345678", "12****78"),
        ("abc123@qq.com", "ab***@qq.com"),
        ("微信：wxid_abc123", "wx*******23"),
        ("官网 example.com", "example.com"),
        ("减肥药", "减肥药"),
    ],
)
def test_masking(rules: TextRules, line: str, masked: str) -> None:
    [hit] = rules.scan([line])
    assert hit.masked == masked


# ---- prohibited words ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "severity"),
    [
        ("减肥药", "减肥药", "violate"),
        ("特价减肥药包邮", "减肥药", "violate"),
        ("減肥藥", "减肥药", "violate"),
        ("减 肥 药", "减肥药", "violate"),
        ("减-肥★药", "减肥药", "violate"),
        ("代開發票", "代开发票", "violate"),
        ("专业办证", "办证", "review"),
        ("高仿 包包", "高仿", "review"),
    ],
)
def test_prohibited_words_after_normalisation(rules: TextRules, text: str, value: str, severity: str) -> None:
    hits = [h for h in rules.scan([text]) if h.kind == "word"]
    assert [(h.category, h.value, h.severity) for h in hits] == [("prohibited", value, severity)]


def test_words_do_not_match_across_clause_punctuation(rules: TextRules) -> None:
    assert rules.scan(["买个水枪，支付宝付款"]) == []


def test_a_word_split_over_lines_is_found(rules: TextRules) -> None:
    [hit] = rules.scan(["纯天然减肥", "药 一盒"])
    assert (hit.value, hit.line, hit.text) == ("减肥药", 0, "减肥\n药")


def test_user_word_files(tmp_path: Path) -> None:
    drugs = tmp_path / "drugs.txt"
    drugs.write_text("# street names\n冰毒\nK粉  # ketamine\n\nViagra\n", encoding="utf-8")
    rules = TextRules.load(word_files=[drugs])
    found = {(h.category, h.value, h.severity) for h in rules.scan(["出售 k 粉，VIAGRA 特价"])}
    assert found == {("drugs", "k粉", "violate"), ("drugs", "viagra", "violate")}
    assert rules.scan(["a via grand tour"]) == []
    assert TextRules.load().scan(["出售 k 粉"]) == []


def test_latin_words_need_word_boundaries(tmp_path: Path) -> None:
    words = tmp_path / "weapons.txt"
    words.write_text("gun\n", encoding="utf-8")
    rules = TextRules.load(word_files=[words])
    assert rules.scan(["a g u n for sale"])[0].value == "gun"
    assert rules.scan(["the show has begun"]) == []


# ---- rule files ------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "team.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_rule_file_changes_one_key_of_a_built_in_rule(tmp_path: Path) -> None:
    path = write(tmp_path, '[[number]]\nname = "qq"\nseverity = "review"\n')
    [hit] = TextRules.load([path]).scan(["QQ 12345678"])
    assert (hit.kind, hit.severity) == ("qq", "review")


def test_a_rule_file_turns_a_rule_off(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pattern]]\nname = "domain"\nenabled = false\n')
    rules = TextRules.load([path])
    assert rules.scan(["example.com"]) == []
    assert contacts(rules, "https://example.com") == {("url", "example.com")}


def test_a_rule_file_adds_a_messenger_without_code(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[sets]
line = ["line id", "加line"]

[[pattern]]
name = "line"
kind = "line"
severity = "review"
cues = ["@line", "kakao"]
pattern = '[a-z][a-z0-9._-]{3,19}(?![a-z0-9._-])'
""",
    )
    rules = TextRules.load([path])
    assert contacts(rules, "LINE ID: shop_tw8") == {("line", "shop_tw8")}
    assert contacts(rules, "kakao：myshop") == {("line", "myshop")}
    assert contacts(rules, "product line: summer") == set()
    [hit] = rules.scan(["加LINE abcd"])
    assert hit.severity == "review"


def test_rule_file_word_lists_with_their_own_severity_and_file(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "tobacco.txt").write_text("电子烟\n", encoding="utf-8")
    path = write(
        tmp_path,
        """
[[words]]
category = "tobacco"
severity = "review"
words = ["烟弹"]
file = "lists/tobacco.txt"
allow = ["电子烟检测"]
""",
    )
    rules = TextRules.load([path])
    found = {(h.category, h.value, h.severity) for h in rules.scan(["電子煙 烟弹"])}
    assert found == {("tobacco", "电子烟", "review"), ("tobacco", "烟弹", "review")}
    assert rules.scan(["电子烟检测报告"]) == []


def test_exclusion_words_are_data(tmp_path: Path) -> None:
    path = write(tmp_path, '[sets]\nnot_contact = ["会员号"]\n')
    rules = TextRules.load([path])
    assert contacts(rules, "会员号 13812345678") == set()
    assert contacts(rules, "订单号 13812345678") == {PHONE}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[number]]\nname = "x"\nkind = "x"\npattern = "(1["\n', "rule 'x': pattern is not a valid regular"),
        ('[[pattern]]\nname = "x"\nkind = "x"\npattern = "a"\nseverity = "block"\n', "rule 'x': severity"),
        (
            '[[pattern]]\nname = "x"\nkind = "x"\npattern = "a"\ncolour = 1\n',
            "rule 'x': unknown key(s) colour",
        ),
        ('[[pattern]]\nname = "x"\nkind = "x"\npattern = "a"\ncues = ["@nope"]\n', "unknown set '@nope'"),
        ('[[pattern]]\nkind = "x"\npattern = "a"\n', "a [[pattern]] rule has no name"),
        ('[[pattern]]\nname = "x"\npattern = "a"\n', "rule 'x': kind"),
        ('[[pattern]]\nname = "phone"\nkind = "x"\npattern = "a"\n', "rule 'phone': already defined"),
        ('[[number]]\nname = "qq"\nseverity = "review"\n[[number\n', "invalid TOML"),
        ("[rules]\n", "unknown section(s) rules"),
        ("version = 2\n", "unsupported rule file version 2"),
        ('[[words]]\nsevertiy = "review"\ncategory = "x"\n', "words 'x': unknown key(s) severtiy"),
        ('[[words]]\nwords = ["a"]\n', "category must be a non-empty string"),
        ('[digits]\nnumerals = { "十" = "10" }\n', "[digits] numerals must map"),
    ],
)
def test_malformed_rule_files_name_the_file_and_rule(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text, "broken.toml")
    with pytest.raises(ConfigError) as err:
        TextRules.load([path])
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read rule file"):
        TextRules.load([tmp_path / "absent.toml"])
    with pytest.raises(ConfigError, match="cannot read word file"):
        TextRules.load(word_files=[tmp_path / "absent.txt"])


# ---- normalisation ---------------------------------------------------------------------------------


def test_normalise_folds_width_case_script_and_keeps_offsets() -> None:
    text = "ＶＸ：減 肥 藥"
    norm, index = normalise(text)
    assert norm == "vx:减肥药"
    assert len(index) == len(norm)
    assert [text[i] for i in index] == ["Ｖ", "Ｘ", "：", "減", "肥", "藥"]


def test_normalise_drops_invisible_characters_but_keeps_latin_spaces() -> None:
    norm, index = normalise("a\u200bb c")
    assert (norm, index) == ("ab c", [0, 2, 3, 4])


def test_rules_are_immutable(rules: TextRules) -> None:
    with pytest.raises(AttributeError):
        rules._set.gap_max = 0  # type: ignore[misc]


def test_a_rule_file_turns_a_built_in_word_list_off(tmp_path: Path) -> None:
    path = write(tmp_path, '[[words]]\nname = "prohibited_review"\nenabled = false\n')
    rules = TextRules.load([path])
    assert rules.scan(["高仿包包"]) == []
    assert [h.value for h in rules.scan(["减肥药"])] == ["减肥药"]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("Q8006160", "qq", "8006160"),
        ("Q：7788115244", "qq", "7788115244"),
        ("电话13么67二五六五04", "phone", "13167256504"),  # OCR reads 幺 as 么
    ],
)
def test_forms_seen_on_the_overlay_benchmark(text: str, kind: str, value: str) -> None:
    hits = TextRules.load().scan([text])
    assert [(h.kind, h.value) for h in hits] == [(kind, value)]


@pytest.mark.parametrize(
    "text", ["Q3 2024", "Q1 sales up 12%", "Q版公仔 28cm", "IQ 1234567", "为什么 2024年"]
)
def test_bare_q_and_mo_do_not_overreach(text: str) -> None:
    assert TextRules.load().scan([text]) == []


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("shop-37@163.c0m", "email", "shop-37@163.com"),  # OCR reads the o of .com as a zero
        ("wap.le-92.c0m", "url", "wap.le-92.com"),
        ("vxliyuetian44505", "wechat", "liyuetian44505"),  # cue glued to the id
        ("扣扣群：40792065", "qq", "40792065"),
        ("+86一九三五六四四二○一四", "phone", "19356442014"),  # a circle for 〇
    ],
)
def test_ocr_forms_from_the_benchmark(text: str, kind: str, value: str) -> None:
    assert [(h.kind, h.value) for h in TextRules.load().scan([text])] == [(kind, value)]


@pytest.mark.parametrize("text", ["vxga1080", "wxga 1366x768", "XPS 13 9343\n€ 248,99"])
def test_glued_cues_and_model_numbers_stay_clear(text: str) -> None:
    assert TextRules.load().scan(text.split("\n")) == []


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("QQ咨询:417850047", "qq", "417850047"),
        ("bit.ly/NrUwsn", "url", "bit.ly/nruwsn"),
        ("点击进入:https:/fashion-an.com", "url", "fashion-an.com"),  # OCR dropped a slash
        ("V♥：haohaomei51", "wechat", "haohaomei51"),
        ("wxli-4473", "wechat", "li-4473"),
    ],
)
def test_more_forms_from_the_unseen_overlays(text: str, kind: str, value: str) -> None:
    assert [(h.kind, h.value) for h in TextRules.load().scan([text])] == [(kind, value)]


@pytest.mark.parametrize("text", ["V8 engine", "V neck", "size V 38", "v1.2.3 release", "V 2.0"])
def test_a_bare_v_needs_an_id_like_value(text: str) -> None:
    assert TextRules.load().scan([text]) == []
