"""Deterministic generator of the contact-info overlay set used by ``bench/moderation.py``.

Every image starts from a dev photo (``transforms.load_photos``), scaled to a listing-photo size
(longest side 720-1280 px). Three groups are written:

- ``violate``: contact information drawn on the photo, balanced over six kinds: ``phone`` (plain,
  spaced, dashed, dotted, full-width, Chinese numerals, mixed, with or without a prefix), ``wechat``,
  ``qq`` (always with a cue word), ``url``, ``email`` and ``qr`` (a QR code made with segno);
- ``pass`` overlays: benign commercial text that looks like numbers or IDs (prices, sizes, dates,
  model and order numbers, brand-like words, payment mentions without an ID, ...);
- ``pass`` clean photos: no overlay at all.

Text varies in font (several CJK faces and weights), size (from about 2.5 % of the image height, never
below 16 px, up to banners), colour (including low contrast), position, rotation (-20..20 degrees),
opacity (0.55-1), background box / outline / none and line count. Every rendering is checked for
legibility (contrast between the glyphs and what surrounds them) and redrawn with a stronger style if
it fails, so a miss is the detector's, not an unreadable label. Finally the image is treated like a
user upload: sometimes downscaled, then saved as JPEG (q 50-92), sometimes PNG or WebP.

Two variants share the generator but not their fonts or templates: ``default`` (what rules are tuned
on) and ``unseen`` (held out: other font families, other cue words and number formats, a few harder
geometries such as 90-degree text), to check the rules did not overfit.

Everything is a pure function of (photos, seed, variant, sizes): per-item random generators are seeded
from the item id. Layout of ``out_dir``::

    labels.jsonl       one JSON object per image (see ``build_set``)
    meta.json          the parameters the set was built with (a different request rebuilds it)
    images/v0000.jpg   violating, images/b0000.jpg benign overlay, images/c0000.jpg clean photo

Run ``python bench/overlays.py --photos DIR --out OUT_DIR [--variant unseen] [--sheet N]`` to build a
set alone (``--sheet`` also writes a contact sheet of the first N items of each group for eyeballing).
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import io
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import segno
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transforms import KNOWN_CJK_FONTS, font_has_cjk, load_photos, near_duplicate_groups, open_photo

GENERATOR_VERSION = 1
VARIANTS = ("default", "unseen")
VIOLATE_KINDS = ("phone", "wechat", "qq", "url", "email", "qr")
BENIGN_KINDS = ("price", "promo", "size", "date", "model", "order", "brand", "payment")
FONT_PACKAGES = ("fonts-noto-cjk", "fonts-wqy-microhei")  # downloaded only when no CJK font exists
UNSEEN_FONT_PACKAGES = ("fonts-wqy-zenhei",)  # the held-out variant's own face, fetched if missing
BASE_LONG_SIDE = (720, 1280)
MIN_TEXT_PX = 16  # em size in the final image; smaller text is not something a person reads either

# Font families of each variant. The default takes Noto SC faces (Sans and Serif, every weight present)
# and WenQuanYi Micro Hei; the held-out variant takes other families only.
DEFAULT_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Serif CJK SC",
    "WenQuanYi Micro Hei",
    "Source Han Sans SC",
    "Source Han Serif SC",
    "Droid Sans Fallback",
)
UNSEEN_FAMILIES = (
    "WenQuanYi Zen Hei",
    "WenQuanYi Zen Hei Sharp",
    "Noto Sans Mono CJK SC",
    "Noto Sans CJK TC",
    "Noto Serif CJK JP",
)
UNSEEN_LATIN_FAMILIES = ("DejaVu Sans", "DejaVu Serif", "Liberation Sans", "Liberation Serif")
LATIN_STYLES = ("Book", "Regular", "Bold", "Oblique", "Italic")  # no ExtraLight / Condensed cuts

Colour = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# Fonts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """One face of a font file (a .ttc holds several)."""

    path: str
    index: int
    family: str
    style: str
    cjk: bool

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}"


def _fc_files(pattern: str) -> list[str]:
    if shutil.which("fc-list") is None:
        return []
    try:
        out = subprocess.run(
            ["fc-list", pattern, "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})


def _faces_of(path: str) -> list[Face]:
    faces = []
    for index in range(32):
        try:
            font = ImageFont.truetype(path, 24, index=index)
        except OSError:
            break
        family, style = font.getname()
        faces.append(Face(path, index, family or Path(path).stem, style or "Regular", font_has_cjk(font)))
        if not path.lower().endswith((".ttc", ".otc")):
            break
    return faces


def discover_faces(font_cache: Path) -> list[Face]:
    """Every face of the installed CJK fonts, the Latin fonts the held-out variant uses, and the fonts
    unpacked under ``font_cache``; sorted so the choice is the same on every run."""
    files = set(_fc_files(":lang=zh")) | {p for p in KNOWN_CJK_FONTS if Path(p).is_file()}
    for family in UNSEEN_LATIN_FAMILIES:
        files |= set(_fc_files(f":family={family}"))
    if font_cache.is_dir():
        files |= {str(p) for p in font_cache.rglob("*") if p.suffix.lower() in (".ttc", ".ttf", ".otf")}
    faces = [f for path in sorted(files) for f in _faces_of(path)]
    return sorted(set(faces), key=lambda f: (f.family, f.style, f.path, f.index))


def download_font_package(package: str, font_cache: Path) -> Path:
    """``apt-get download`` one Debian font package and unpack it under ``font_cache/package``."""
    target = font_cache / package
    if target.is_dir() and any(target.rglob("*.tt[cf]")):
        return target
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"cannot fetch {package}: {tool} not found (install a CJK font instead)")
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            ["apt-get", "download", package],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        debs = list(Path(tmp).glob("*.deb"))
        if got.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download {package} failed: {got.stderr.strip()[-400:]}")
        unpack = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpack)], check=True, timeout=600)
        fonts = [p for p in unpack.rglob("*") if p.suffix.lower() in (".ttc", ".ttf", ".otf")]
        if not fonts:
            raise RuntimeError(f"{package} holds no font files")
        target.mkdir(parents=True, exist_ok=True)
        for p in fonts:
            shutil.copy2(p, target / p.name)
    print(f"fonts: unpacked {package} into {target}", file=sys.stderr)
    return target


def _pick(faces: Sequence[Face], families: Sequence[str]) -> list[Face]:
    return [f for f in faces if f.cjk and f.family in families]


def faces_for_variant(variant: str, font_cache: Path) -> tuple[list[Face], list[Face]]:
    """(CJK faces, Latin-only faces) of a variant, downloading a Debian font package if needed."""
    faces = discover_faces(font_cache)
    if not any(f.cjk for f in faces):
        errors = []
        for package in FONT_PACKAGES:
            try:
                download_font_package(package, font_cache)
                break
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
        faces = discover_faces(font_cache)
        if not any(f.cjk for f in faces):
            raise SystemExit(
                "no CJK font: install fonts-noto-cjk or fonts-wqy-microhei (the automatic download "
                f"failed: {'; '.join(errors)})"
            )
    if variant == "default":
        chosen = _pick(faces, DEFAULT_FAMILIES) or [
            f for f in faces if f.cjk and f.family not in UNSEEN_FAMILIES
        ]
        return chosen or [f for f in faces if f.cjk], []
    if not any(f.family.startswith("WenQuanYi Zen Hei") for f in faces):
        for package in UNSEEN_FONT_PACKAGES:
            try:
                download_font_package(package, font_cache)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"warning: {exc}; the unseen variant uses the other faces", file=sys.stderr)
        faces = discover_faces(font_cache)
    chosen = _pick(faces, UNSEEN_FAMILIES)
    if not chosen:
        print(
            "warning: none of the held-out font families is available; reusing the default faces",
            file=sys.stderr,
        )
        chosen = faces_for_variant("default", font_cache)[0]
    latin = [f for f in faces if f.family in UNSEEN_LATIN_FAMILIES and f.style in LATIN_STYLES]
    return chosen, latin


@functools.lru_cache(maxsize=1024)
def _font(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, max(6, size), index=index)


@functools.lru_cache(maxsize=64)
def _tofu(path: str, index: int) -> tuple[object, bytes]:
    mask = _font(path, index, 32).getmask("\U0010fffd")
    return mask.getbbox(), bytes(mask)


@functools.lru_cache(maxsize=65536)
def _has_glyph(path: str, index: int, ch: str) -> bool:
    if ch.isspace():
        return True
    mask = _font(path, index, 32).getmask(ch)
    return bool(mask.getbbox()) and (mask.getbbox(), bytes(mask)) != _tofu(path, index)


def covers(face: Face, text: str) -> bool:
    return all(_has_glyph(face.path, face.index, ch) for ch in set(text))


def choose_face(rng: random.Random, text: str, cjk: Sequence[Face], latin: Sequence[Face]) -> Face:
    """A random face of the variant that has every glyph of ``text`` (Latin faces only for ASCII)."""
    pool = list(cjk) + (list(latin) if text.isascii() and latin else [])
    usable = [f for f in pool if covers(f, text)]
    if not usable:
        usable = [f for f in cjk if covers(f, text.replace("♥", "").replace("☎", ""))] or list(cjk)
    return rng.choice(usable)


# --------------------------------------------------------------------------------------------
# Texts. Each maker returns (text, format); "\n" separates lines.
# --------------------------------------------------------------------------------------------

MOBILE_PREFIXES = (
    *range(130, 140), 145, 147, 149, 150, 151, 152, 153, 155, 156, 157, 158, 159, 162, 165, 166,
    *range(170, 179), *range(180, 190), 191, 193, 195, 196, 197, 198, 199,
)  # fmt: skip
SYLLABLES = (
    "xiao", "mei", "li", "wang", "zhang", "chen", "hao", "huo", "tao", "dian", "jia", "fang", "ke", "fu",
    "le", "yue", "qing", "ming", "an", "na", "lin", "yu", "tian", "xin", "hong", "bao", "shi", "jing",
)  # fmt: skip
WORDS = (
    "shop", "mall", "lily", "best", "sale", "amy", "jack", "coco", "nana", "sunny", "happy", "star",
    "king", "vip", "home", "style", "love", "fashion", "beauty", "daily", "good", "top", "super", "mia",
)  # fmt: skip
CN_DIGITS = "零一二三四五六七八九"
CN_FINANCIAL = "零壹贰叁肆伍陆柒捌玖"
FULLWIDTH = str.maketrans("0123456789-.: ", "０１２３４５６７８９－．：\u3000")


def _mobile(rng: random.Random) -> str:
    return f"{rng.choice(MOBILE_PREFIXES)}{rng.randrange(10**8):08d}"


def _handle(rng: random.Random, *, min_len: int = 6) -> str:
    """A WeChat-ID-like handle: starts with a letter, letters/digits/underscore/hyphen, 6-20 chars."""
    while True:
        if rng.random() < 0.5:
            stem = rng.choice(WORDS)
        else:
            stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
        sep = rng.choice(["", "", "_", "-"])
        tail = str(rng.randint(1, 10 ** rng.randint(2, 5)))
        if rng.random() < 0.15:
            tail = rng.choice(["520", "888", "666", "1314", "2024", "2025", "8888"])
        out = f"{stem}{sep}{tail}"
        if rng.random() < 0.1:
            out = out.capitalize()
        if min_len <= len(out) <= 20:
            return out


def _qq_number(rng: random.Random) -> str:
    return str(rng.randint(1, 9)) + "".join(
        str(rng.randrange(10)) for _ in range(rng.choice([6, 7, 8, 8, 9, 9, 10]))
    )


def _cue(rng: random.Random, cues: Sequence[str], seps: Sequence[str] = (":", "：", " ", "")) -> str:
    cue = rng.choice(cues)
    sep = rng.choice(seps)
    if sep == "" and cue[-1:].isascii() and cue[-1:].isalnum():
        sep = " "  # "QQ12345678" reads as one token; real overlays put a gap or a colon
    return cue + sep


def _digits_spoken(number: str, table: str, rng: random.Random, *, yao: float = 0.0, zero: str = "") -> str:
    out = []
    for ch in number:
        if ch == "1" and rng.random() < yao:
            out.append("幺")
        elif ch == "0" and zero:
            out.append(zero)
        else:
            out.append(table[int(ch)])
    return "".join(out)


def phone_text(rng: random.Random, unseen: bool) -> tuple[str, str]:
    number = _mobile(rng)
    a, b, c = number[:3], number[3:7], number[7:]
    if not unseen:
        fmt = rng.choice(["plain", "spaced", "dashed", "dotted", "fullwidth", "cn_numerals", "mixed"])
        if fmt == "plain":
            body = number
        elif fmt == "spaced":
            body = f"{a} {b} {c}"
        elif fmt == "dashed":
            body = f"{a}-{b}-{c}"
        elif fmt == "dotted":
            body = f"{a}.{b}.{c}"
        elif fmt == "fullwidth":
            body = rng.choice([number, f"{a} {b} {c}", f"{a}-{b}-{c}"]).translate(FULLWIDTH)
        elif fmt == "cn_numerals":
            body = _digits_spoken(number, CN_DIGITS, rng, yao=0.3, zero=rng.choice(["零", "〇"]))
        else:  # mixed: Arabic and Chinese digits in one number, "幺" for 1 sometimes
            while True:
                body = "".join(
                    ch if rng.random() < 0.5 else _digits_spoken(ch, CN_DIGITS, rng, yao=0.5) for ch in number
                )
                if 3 <= sum(ch.isascii() for ch in body) <= 8:
                    break
        prefixes = ["电话", "手机", "Tel", "call", "+86"]
    else:
        fmt = rng.choice(
            ["intl", "slash", "grouped_443", "landline", "financial", "spaced_each", "fullwidth_dashed"]
        )
        if fmt == "intl":
            body = rng.choice(
                [f"+86-{a}-{b}-{c}", f"(+86){number}", f"0086 {number}", f"+86 {a} {b} {c}", f"86-{number}"]
            )
        elif fmt == "slash":
            body = f"{a}/{b}/{c}"
        elif fmt == "grouped_443":
            body = f"{number[:4]} {number[4:8]} {number[8:]}"
        elif fmt == "landline":
            area = rng.choice(["010", "021", "020", "0755", "0571", "028", "027", "0512", "025"])
            local = str(rng.randint(2, 8)) + "".join(
                str(rng.randrange(10)) for _ in range(7 if len(area) == 3 else 6 + rng.randint(0, 1))
            )
            body = rng.choice([f"{area}-{local}", f"({area}){local}", f"{area} {local[:4]} {local[4:]}"])
        elif fmt == "financial":
            body = _digits_spoken(number, CN_FINANCIAL, rng)
        elif fmt == "spaced_each":
            body = " ".join(number)
        else:
            body = f"{a}-{b}-{c}".translate(FULLWIDTH)
        prefixes = [
            "联系电话",
            "咨询热线",
            "TEL.",
            "Phone",
            "Mobile",
            "☎",
            "来电咨询",
            "手机号码",
            "订购热线",
        ]
    if fmt != "intl" and rng.random() < 0.65:
        body = _cue(rng, prefixes) + body
        fmt += "+prefix"
    return body, fmt


def wechat_text(rng: random.Random, unseen: bool) -> tuple[str, str]:
    if not unseen:
        cues = ["微信", "VX", "v信", "加薇", "wechat", "微信号", "V信", "vx", "WeChat"]
    else:
        cues = ["威信", "wx", "WX号", "薇信", "加V", "卫星", "WeiXin", "V♥", "徽信", "加我vx", "微 信"]
    cue = _cue(rng, cues)
    handle = _handle(rng)
    fmt = "cue+id"
    if unseen and rng.random() < 0.25:
        handle = _mobile(rng)  # phone number used as the WeChat ID ("微信同号")
        fmt = "cue+phone_id"
    return cue + handle, fmt


def qq_text(rng: random.Random, unseen: bool) -> tuple[str, str]:
    number = _qq_number(rng)
    if not unseen:
        cues = ["QQ", "扣扣", "QQ号", "qq", "Q"]
        return _cue(rng, cues) + number, "cue+number"
    cues = ["企鹅", "QQ群", "扣扣群", "Q号", "球球", "Q Q", "QQ咨询"]
    if rng.random() < 0.3:
        number = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
        return _cue(rng, cues) + number, "cue+grouped"
    return _cue(rng, cues) + number, "cue+number"


def _domain(rng: random.Random, tlds: Sequence[str]) -> str:
    name = rng.choice(
        [_handle(rng, min_len=3).lower().replace("_", ""), rng.choice(WORDS) + rng.choice(SYLLABLES)]
    )
    if rng.random() < 0.3:
        name = f"{rng.choice(WORDS)}-{rng.choice(SYLLABLES)}{rng.choice(['', str(rng.randint(1, 99))])}"
    return f"{name}.{rng.choice(tlds)}"


def url_text(rng: random.Random, unseen: bool) -> tuple[str, str]:
    if not unseen:
        fmt = rng.choice(["www", "bare", "tme", "https", "http_path"])
        tlds = ["com", "cn", "net", "com.cn", "shop"]
        if fmt == "www":
            body = "www." + _domain(rng, tlds)
        elif fmt == "bare":
            body = _domain(rng, tlds)
        elif fmt == "tme":
            body = "t.me/" + _handle(rng, min_len=5)
        elif fmt == "https":
            body = "https://" + rng.choice(["", "www."]) + _domain(rng, tlds)
        else:
            page = f"{rng.choice(['item', 'shop', 'p', 'goods'])}/{rng.randint(10, 99999)}"
            body = f"http://{_domain(rng, tlds)}/{page}"
        if rng.random() < 0.3:
            body = _cue(rng, ["网址", "官网", "Web", "店铺"]) + body
        return body, fmt
    fmt = rng.choice(["upper", "shortener", "new_tld", "subdomain", "cue_https", "dot_cn_word"])
    tlds = ["top", "xyz", "vip", "cc", "store", "co"]
    if fmt == "upper":
        body = ("WWW." + _domain(rng, ["COM", "CN", "NET"])).upper()
    elif fmt == "shortener":
        code = "".join(
            rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6)
        )
        body = f"{rng.choice(['bit.ly', 'dwz.cn', 'url.cn', 'tinyurl.com'])}/{code}"
    elif fmt == "new_tld":
        body = _domain(rng, tlds)
    elif fmt == "subdomain":
        body = f"{rng.choice(['m', 'shop', 'h5', 'wap'])}.{_domain(rng, ['com', 'cn', 'net'])}"
    elif fmt == "cue_https":
        body = _cue(rng, ["访问", "链接", "点击进入", "主页"]) + "https://" + _domain(rng, [*tlds, "com"])
    else:  # the dot written as a word
        body = _domain(rng, ["com"]).replace(".com", rng.choice(["点com", "點com", " dot com"]))
    return body, fmt


def email_text(rng: random.Random, unseen: bool) -> tuple[str, str]:
    local = _handle(rng, min_len=4).lower()
    domains = ["163.com", "126.com", "gmail.com", "outlook.com", "sina.com", "foxmail.com", "yeah.net"]
    if rng.random() < 0.3:
        local, domain = _qq_number(rng), "qq.com"
    elif rng.random() < 0.3:
        local, domain = (
            rng.choice(["sales", "service", "kefu", "info", "shop"]),
            _domain(rng, ["com", "cn", "net"]),
        )
    else:
        domain = rng.choice(domains)
    if not unseen:
        body = f"{local}@{domain}"
        fmt = "plain"
        if rng.random() < 0.4:
            body = _cue(rng, ["邮箱", "Email", "E-mail", "mail"]) + body
            fmt = "cue+plain"
        return body, fmt
    fmt = rng.choice(["at_word", "hash", "upper", "cue_plain"])
    if fmt == "at_word":
        body = f"{local}{rng.choice(['[at]', '(at)', ' at '])}{domain}"
    elif fmt == "hash":
        body = f"{local}#{domain}（#换成@）"
    elif fmt == "upper":
        body = f"{local}@{domain}".upper()
    else:
        body = _cue(rng, ["联系邮箱", "Mail to", "投稿邮箱", "Contact"]) + f"{local}@{domain}"
    return body, fmt


TEXT_MAKERS: dict[str, Callable[[random.Random, bool], tuple[str, str]]] = {
    "phone": phone_text,
    "wechat": wechat_text,
    "qq": qq_text,
    "url": url_text,
    "email": email_text,
}

BRAND_WORDS = (
    "LUXE", "Premium Quality", "ORGANIC", "Handmade", "Best Seller", "Made in China", "SUMMER SALE",
    "100% Cotton", "NEW ARRIVAL", "FREE SHIPPING", "Classic", "Urban Style", "HOT SALE", "No.1 销量冠军",
)  # fmt: skip
BRAND_WORDS_UNSEEN = (
    "VINTAGE", "Limited Edition", "Eco Friendly", "Since 1998", "Original Design", "PURE NATURAL",
    "Ver 2.0", "Vol.3 Collection", "Exclusive", "GREEN LIFE", "Top Rated", "Pro Series",
)  # fmt: skip


def benign_text(kind: str, rng: random.Random, unseen: bool) -> str:
    r = rng.randint
    if kind == "price":
        if not unseen:
            return rng.choice(
                [
                    f"¥{r(9, 999)}",
                    f"￥{r(99, 9999)}.00",
                    f"原价{(p := r(300, 9999))} 现价{p * r(3, 8) // 10}",
                    f"${r(5, 199)}.{rng.choice(['99', '49', '00'])}",
                    f"特价 ¥{r(9, 499)}.{rng.choice(['9', '90', '80'])}",
                    f"券后价 ¥{r(19, 899)}",
                ]
            )
        return rng.choice(
            [
                f"到手价 ¥{r(19, 999)}",
                f"满{(m := r(2, 9) * 100) - 1}减{m // 10 * r(1, 3)}",
                "第二件半价",
                f"日常价 ¥{(p := r(100, 999))} 活动价 ¥{p * 2 // 3}",
                f"€ {r(5, 299)},{rng.choice(['90', '99', '00'])}",
                f"HK$ {r(50, 3999)}",
            ]
        )
    if kind == "promo":
        pool = (
            [
                "包邮",
                "正品保证",
                "七天无理由退换",
                "假一赔十",
                "限时特价",
                "新品上市",
                "买一送一",
                "官方旗舰店",
                "全国包邮",
                "爆款热卖",
                "厂家直销",
            ]
            if not unseen
            else [
                "顺丰包邮",
                "正品行货 全国联保",
                "15天价保",
                "破损包赔",
                "客服在线 9:00-21:00",
                "销量 10万+",
                "好评率 99.8%",
                "48小时发货",
                "支持7天无理由",
            ]
        )
        return rng.choice(pool)
    if kind == "size":
        if not unseen:
            return rng.choice(
                [
                    rng.choice(["XL", "XXL", "S/M/L/XL"]),
                    f"{rng.choice([250, 330, 500, 750])}ml",
                    f"{r(35, 46)}码",
                    f"{r(2, 9) * 10}x{r(3, 12) * 10}cm",
                    f"净含量 {r(1, 9) * 50}g",
                ]
            )
        return rng.choice(
            [
                "S M L XL XXL",
                f"{r(1, 5)}.{r(0, 9)}L",
                f"{r(34, 38)}-{r(40, 45)}码",
                f"{r(4, 9) * 10}*{r(6, 20) * 10}cm",
                f"净重 {r(1, 9)}.{r(0, 9)}kg",
                f"{r(20, 80)}寸",
            ]
        )
    if kind == "date":
        y, m, d = r(2019, 2026), r(1, 12), r(1, 28)
        if not unseen:
            return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{y}年{m}月{d}日", f"生产日期 {y}.{m:02d}.{d:02d}"])
        return rng.choice(
            [
                f"{y}/{m:02d}/{d:02d}",
                f"{m:02d}月{d:02d}日 上新",
                f"保质期 {r(6, 36)}个月",
                f"{d:02d}.{m:02d}.{y}",
            ]
        )
    if kind == "model":
        if not unseen:
            return rng.choice(
                [
                    "iPhone 15 Pro Max",
                    f"SM-G{r(9000, 9999)}",
                    f"RTX {rng.choice([3060, 4070, 4090])}",
                    f"型号 KD-{r(43, 85)}X{r(8000, 9500)}H",
                    f"Mate {r(40, 70)} Pro",
                ]
            )
        return rng.choice(
            [
                f"Galaxy S{r(21, 25)} Ultra",
                "ThinkPad X1 Carbon",
                "MacBook Air M3",
                f"XPS 13 {r(9300, 9350)}",
                f"型号：XR-{r(1000, 9999)}",
                f"Redmi Note {r(10, 14)}",
            ]
        )
    if kind == "order":
        if not unseen:
            return rng.choice(
                [
                    f"订单号 {r(2019, 2026)}{r(1, 12):02d}{r(1, 28):02d}{r(10**7, 10**8 - 1)}",
                    f"货号 A{r(2019, 2026)}-{r(100, 9999):04d}",
                    f"条码 69{r(10**10, 10**11 - 1)}",
                ]
            )
        return rng.choice(
            [
                f"运单号 SF{r(10**11, 10**12 - 1)}{r(0, 9)}",
                f"批号 {r(2019, 2026)}{r(1, 12):02d}{r(1, 28):02d}A",
                f"SKU {r(10000, 99999)}-{r(1, 99):02d}",
                f"款号 {r(100000, 999999)}",
            ]
        )
    if kind == "brand":
        return rng.choice(BRAND_WORDS_UNSEEN if unseen else BRAND_WORDS)
    if kind == "payment":
        pool = (
            ["微信支付", "支持支付宝", "支持微信/支付宝付款", "可开发票", "微信 支付宝 均可"]
            if not unseen
            else ["支持花呗分期", "可用微信支付", "支付宝 微信 银联", "货到付款", "支持信用卡"]
        )
        return rng.choice(pool)
    raise ValueError(kind)


def qr_payload(rng: random.Random, unseen: bool) -> tuple[str, str]:
    code = "".join(
        rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ0123456789_-")
        for _ in range(rng.randint(10, 22))
    )
    if not unseen:
        fmt = rng.choice(["weixin", "wechat_https", "https"])
        if fmt == "weixin":
            path = rng.choice(["dl/business/?t=", "wxpay/bizpayurl?pr=", "contacts/profile/"])
            return f"weixin://{path}{code}", fmt
        if fmt == "wechat_https":
            return f"https://u.wechat.com/{code}", fmt
        return f"https://{_domain(rng, ['com', 'cn'])}/{code[:8]}", fmt
    fmt = rng.choice(["qq_group", "alipay", "tme", "plain_id"])
    if fmt == "qq_group":
        return f"https://qm.qq.com/q/{code}", fmt
    if fmt == "alipay":
        return f"https://qr.alipay.com/{code.lower()}", fmt
    if fmt == "tme":
        return f"https://t.me/{_handle(rng)}", fmt
    return f"wxid_{code.lower()[:14]}", fmt


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def luma(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _hsv(rng: random.Random, v: tuple[float, float], s: tuple[float, float] = (0.5, 1.0)) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v))
    return round(r * 255), round(g * 255), round(b * 255)


def _colour_with_luma(rng: random.Random, target: float) -> Colour:
    """A saturated-ish colour whose luma is close to ``target`` (grey when impossible)."""
    best: Colour = (round(target),) * 3  # type: ignore[assignment]
    for _ in range(40):
        c = _hsv(rng, (0.2, 1.0), (0.2, 0.9))
        if abs(luma(c) - target) < 12:
            return c
        if abs(luma(c) - target) < abs(luma(best) - target):
            best = c
    return best


@dataclass
class Style:
    face: Face
    size: int  # em size in render pixels
    colour: Colour
    alpha: float
    background: str  # box | stroke | none
    box_colour: Colour
    box_alpha: float
    angle: float
    position: str
    contrast_mode: str  # high | low


def _text_tile(lines: Sequence[str], st: Style) -> tuple[Image.Image, Image.Image]:
    """(RGBA tile with box/stroke/text, L mask of the glyph fill only), unrotated."""
    font = _font(st.face.path, st.face.index, st.size)
    stroke = max(1, round(st.size / 12)) if st.background == "stroke" else 0
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    boxes = [probe.textbbox((0, 0), ln, font=font, stroke_width=stroke) for ln in lines]
    gap = round(st.size * 0.25)
    widths = [b[2] - b[0] for b in boxes]
    heights = [max(b[3] - b[1], round(st.size * 0.8)) for b in boxes]
    pad = round(st.size * (0.35 if st.background == "box" else 0.15)) + 2
    w = max(widths) + 2 * pad
    h = sum(heights) + gap * (len(lines) - 1) + 2 * pad
    tile = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    mask = Image.new("L", (w, h), 0)
    d, dm = ImageDraw.Draw(tile), ImageDraw.Draw(mask)
    if st.background == "box":
        d.rounded_rectangle(
            (0, 0, w - 1, h - 1),
            radius=round(st.size * 0.2),
            fill=(*st.box_colour, round(255 * st.box_alpha)),
        )
    text_a = round(255 * st.alpha)
    stroke_fill = (*st.box_colour, text_a)
    y = pad
    for ln, (x0, y0, _, _), lw, lh in zip(lines, boxes, widths, heights, strict=True):
        x = pad + (max(widths) - lw) // 2
        d.text(
            (x - x0, y - y0),
            ln,
            font=font,
            fill=(*st.colour, text_a),
            stroke_width=stroke,
            stroke_fill=stroke_fill,
        )
        dm.text((x - x0, y - y0), ln, font=font, fill=255)  # the glyph body only, not its outline
        y += lh + gap
    return tile, mask


def _rotate(img: Image.Image, angle: float) -> Image.Image:
    if angle == 0:
        return img
    if abs(abs(angle) - 90) < 1e-6:
        return img.transpose(Image.Transpose.ROTATE_90 if angle > 0 else Image.Transpose.ROTATE_270)
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def _place(
    size: tuple[int, int], tile: tuple[int, int], position: str, rng: random.Random
) -> tuple[int, int]:
    (w, h), (tw, th) = size, tile
    m = round(min(w, h) * rng.uniform(0.02, 0.06))
    xs = {"l": m, "c": (w - tw) // 2, "r": w - tw - m}
    ys = {"t": m, "c": (h - th) // 2, "b": h - th - m}
    if position == "random":
        x, y = rng.randint(0, max(0, w - tw)), rng.randint(0, max(0, h - th))
    else:
        key = {
            "tl": "lt",
            "tr": "rt",
            "bl": "lb",
            "br": "rb",
            "centre": "cc",
            "bottom": "cb",
            "top": "ct",
            "left": "lc",
            "right": "rc",
        }[position]
        x, y = xs[key[0]], ys[key[1]]
    return max(0, min(x, w - tw)), max(0, min(y, h - th))


def legibility(after: np.ndarray, glyphs: np.ndarray, size: int) -> tuple[float, float, float]:
    """(contrast, confusable share, ring spread) of rendered text, in luma levels / shares.

    contrast: |median luma of the glyph pixels - median luma of a ring around them| in the composite;
    confusable share: part of the ring whose luma is within max(contrast / 2, 25) of the glyphs' (busy
    backgrounds that swallow the strokes); ring spread: standard deviation of the ring's luma.
    """
    lum = after[..., 0] * 0.299 + after[..., 1] * 0.587 + after[..., 2] * 0.114
    inside = glyphs > 160
    if inside.sum() < 10:
        return 0.0, 1.0, 0.0
    k = max(3, round(size / 5)) | 1
    dilated = Image.fromarray((glyphs > 40).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(k))
    ring = (np.asarray(dilated) > 0) & (glyphs <= 40)
    if ring.sum() < 10:
        return 0.0, 1.0, 0.0
    g, rv = float(np.median(lum[inside])), lum[ring]
    contrast = abs(g - float(np.median(rv)))
    confusable = float(np.mean(np.abs(rv - g) < max(contrast / 2, 25)))
    return contrast, confusable, float(rv.std())


def is_legible(contrast: float, confusable: float, spread: float) -> bool:
    """Readable by a person at a glance: clear contrast, little of the surround looks like the strokes."""
    return contrast >= 60 and confusable <= 0.15 and contrast >= 1.2 * spread


def _local_luma(img: Image.Image, box: tuple[int, int, int, int]) -> float:
    region = np.asarray(img.crop(box).convert("L"), dtype=np.float32)
    return float(region.mean()) if region.size else 128.0


def _style(rng: random.Random, face: Face, size: int, attempt: int, *, banner: bool) -> Style:
    """A random style (colours still neutral: see ``_colour``); later attempts, after an illegible
    rendering, are progressively safer: no low contrast from the third, a box or outline from the third,
    a box from the fourth."""
    background = rng.choices(["box", "stroke", "none"], weights=[0.3, 0.25, 0.45])[0]
    if banner or attempt >= 3:
        background = "box"
    elif attempt >= 2 and background == "none":
        background = rng.choice(["box", "stroke"])
    low = background == "none" and attempt <= 1 and rng.random() < 0.35
    alpha = 1.0 if rng.random() < 0.55 else rng.uniform(0.55, 1.0)
    if attempt >= 2:
        alpha = max(alpha, 0.85)
    box_alpha = rng.uniform(0.55, 1.0) if background == "box" else 1.0
    mode = "low" if low else "high"
    return Style(face, size, (255, 255, 255), alpha, background, (0, 0, 0), box_alpha, 0.0, "", mode)


def _colour(style: Style, rng: random.Random, bg_luma: float) -> None:
    """Text (and box / outline) colours for a background of luma ``bg_luma``."""
    if style.background == "box":
        box = rng.choice([(0, 0, 0), (255, 255, 255), (200, 20, 30), (255, 200, 0), _hsv(rng, (0.3, 0.9))])
        base = luma(box) * style.box_alpha + bg_luma * (1 - style.box_alpha)
        style.box_colour, style.colour = box, _contrasting(rng, base, low=False)
        return
    style.colour = _contrasting(rng, bg_luma, low=style.contrast_mode == "low")
    if style.background == "stroke":
        style.box_colour = (0, 0, 0) if luma(style.colour) > 110 else (255, 255, 255)


def _contrasting(rng: random.Random, base: float, *, low: bool) -> Colour:
    if low:  # readable but not shouting: 70-110 luma levels away from the background
        delta = rng.uniform(70, 110)
        target = base + delta if (base + delta <= 255 and (base < 128 or base - delta < 0)) else base - delta
        return _colour_with_luma(rng, min(255.0, max(0.0, target)))
    if base < 110:
        return rng.choice(
            [(255, 255, 255), (255, 230, 0), (255, 255, 255), _hsv(rng, (0.9, 1.0), (0.2, 0.8))]
        )
    if base > 160:
        return rng.choice([(0, 0, 0), (220, 20, 30), (20, 20, 20), _hsv(rng, (0.2, 0.45), (0.6, 1.0))])
    return rng.choice([(255, 255, 255), (0, 0, 0)])


@dataclass
class Rendered:
    image: Image.Image
    info: dict[str, object]


def render_text(
    img: Image.Image,
    text: str,
    rng: random.Random,
    cjk: Sequence[Face],
    latin: Sequence[Face],
    *,
    final_scale: float,
    unseen: bool,
) -> Rendered:
    """Draw ``text`` on ``img`` with a random legible style; ``final_scale`` is the later downscale, so
    sizes are chosen in final-image pixels."""
    w, h = img.size
    lines = text.split("\n")
    face = choose_face(rng, text, cjk, latin)
    position = rng.choices(
        ["tl", "tr", "bl", "br", "centre", "bottom", "top", "random", "banner"],
        weights=[1, 1, 1, 1, 1.2, 1.2, 0.6, 2, 1],
    )[0]
    banner = position == "banner"
    final_h = h * final_scale
    min_px = max(MIN_TEXT_PX, 0.025 * final_h)
    bucket = rng.choices(["small", "medium", "large"], weights=[0.35, 0.4, 0.25])[0]
    frac = {"small": (0.025, 0.04), "medium": (0.04, 0.075), "large": (0.075, 0.14)}[bucket]
    if banner:
        frac = (0.045, 0.09)
    final_px = max(min_px, final_h * rng.uniform(*frac))
    angle = 0.0
    if not banner and rng.random() < 0.45:
        angle = rng.choice((-1, 1)) * rng.uniform(3, 20)
    if unseen and not banner and rng.random() < 0.06:
        angle = rng.choice((90.0, -90.0))
    for attempt in range(6):
        size = round(final_px / final_scale)
        style = _style(rng, face, size, attempt, banner=banner)
        if attempt == 2:
            position = rng.choice(["tl", "tr", "bl", "br", "centre", "random"]) if not banner else position
        # Fit: shrink (never below the legible minimum) until the rotated block fits inside the image.
        while True:
            tile, mask = _text_tile(lines, style)
            limit_w = w * (0.98 if banner else 0.92)
            rt = _rotate(tile, angle)
            if (rt.width <= limit_w and rt.height <= h * 0.9) or style.size * final_scale <= min_px:
                break
            style.size = max(round(min_px / final_scale), round(style.size * 0.9))
        if rt.width > w or rt.height > h:  # cannot fit at a legible size: break the line at its cue
            if len(lines) == 1 and (" " in text or "：" in text or ":" in text):
                cut = max(text.rfind(" "), text.rfind("："), text.rfind(":"))
                lines = [text[: cut + 1].strip(), text[cut + 1 :].strip()]
                lines = [ln for ln in lines if ln]
                continue
            angle = 0.0
            continue
        x, y = _place((w, h), rt.size, "bottom" if banner else position, rng)
        bg_luma = _local_luma(img, (x, y, x + rt.width, y + rt.height))
        _colour(style, rng, bg_luma)
        tile, mask = _text_tile(lines, style)
        if banner:  # full-width strip
            strip = Image.new("RGBA", (w, tile.height), (*style.box_colour, round(255 * style.box_alpha)))
            strip.alpha_composite(tile, ((w - tile.width) // 2, 0))
            full_mask = Image.new("L", strip.size, 0)
            full_mask.paste(mask, ((w - tile.width) // 2, 0))
            tile, mask = strip, full_mask
            x, y = 0, _place((w, h), tile.size, "bottom" if rng.random() < 0.75 else "top", rng)[1]
            y = h - tile.height if y > h // 2 else 0  # banners sit flush with the edge
        rt, rm = _rotate(tile, angle), _rotate(mask, angle)
        x, y = min(max(0, x), max(0, w - rt.width)), min(max(0, y), max(0, h - rt.height))
        out = img.convert("RGBA")
        out.alpha_composite(rt, (x, y))
        out = out.convert("RGB")
        glyphs = np.zeros((h, w), np.uint8)
        gm = np.asarray(rm)[: h - y, : w - x]
        glyphs[y : y + gm.shape[0], x : x + gm.shape[1]] = gm
        contrast, confusable, spread = legibility(np.asarray(out, dtype=np.float32), glyphs, style.size)
        if is_legible(contrast, confusable, spread):
            return Rendered(
                out,
                {
                    "font": style.face.name,
                    "size_px": round(style.size * final_scale),
                    "size_frac": round(style.size / h, 4),
                    "colour": "#{:02x}{:02x}{:02x}".format(*style.colour),
                    "contrast": round(contrast, 1),
                    "confusable": round(confusable, 3),
                    "spread": round(spread, 1),
                    "contrast_mode": style.contrast_mode,
                    "alpha": round(style.alpha, 2),
                    "background": style.background,
                    "angle": round(angle, 1),
                    "position": position,
                    "lines": len(lines),
                    "box": [x, y, x + rt.width, y + rt.height],
                    "attempts": attempt + 1,
                },
            )
    raise RuntimeError(f"could not render {text!r} legibly on a {w}x{h} image")


def render_qr(
    img: Image.Image,
    payload: str,
    rng: random.Random,
    cjk: Sequence[Face],
    *,
    final_scale: float,
    unseen: bool,
) -> Rendered:
    """Paste a QR code (quiet zone included) covering >= 12 % of the short side with >= 2.5 px modules
    in the final image, sometimes tilted, on a card, with a caption."""
    w, h = img.size
    qr = segno.make(payload, error=rng.choice("lmqh" if not unseen else "mqh"), micro=False)
    border = rng.choice([2, 3, 4])
    matrix = np.array([[bool(v) for v in row] for row in qr.matrix], dtype=bool)
    matrix = np.pad(matrix, border, constant_values=False)
    n = matrix.shape[0]
    short = min(w, h)
    frac = rng.uniform(0.12, 0.42)
    side = max(frac * short, n * 2.5 / final_scale)
    module = max(1, round(side / n))
    dark: Colour = (0, 0, 0)
    light: Colour = (255, 255, 255)
    if unseen and rng.random() < 0.4:
        dark = rng.choice([(20, 60, 160), (0, 110, 50), (120, 20, 20), (60, 30, 90)])
    if rng.random() < 0.15:
        light = (245, 245, 235)
    arr = np.where(matrix[..., None], np.array(dark, np.uint8), np.array(light, np.uint8)).astype(np.uint8)
    code = Image.fromarray(arr, "RGB").resize((n * module, n * module), Image.Resampling.NEAREST)
    if unseen and qr.error in ("Q", "H") and rng.random() < 0.5:  # a logo in the middle, as WeChat does
        d = ImageDraw.Draw(code)
        c, r = code.width / 2, code.width * 0.09
        d.rounded_rectangle((c - r, c - r, c + r, c + r), radius=r * 0.3, fill=(255, 255, 255))
        d.rounded_rectangle(
            (c - r * 0.8, c - r * 0.8, c + r * 0.8, c + r * 0.8), radius=r * 0.3, fill=_hsv(rng, (0.6, 0.9))
        )
    caption = None
    if rng.random() < 0.45:
        caption = rng.choice(
            ["扫码加好友", "扫一扫 加我微信", "扫码关注", "扫码咨询"]
            if not unseen
            else ["长按识别二维码", "扫一扫 领福利", "加群领券", "Scan me"]
        )
    card = code.convert("RGBA")
    if caption or rng.random() < 0.3:
        pad = round(code.width * 0.06)
        cap_px = max(round(MIN_TEXT_PX / final_scale), round(code.width * 0.11))
        font = None
        cap_h = 0
        if caption:
            face = choose_face(rng, caption, cjk, [])
            font = _font(face.path, face.index, cap_px)
            cap_h = round(cap_px * 1.4)
        card = Image.new("RGBA", (code.width + 2 * pad, code.height + 2 * pad + cap_h), (255, 255, 255, 255))
        card.paste(code, (pad, pad))
        if caption and font is not None:
            d = ImageDraw.Draw(card)
            x0, y0, x1, _ = d.textbbox((0, 0), caption, font=font)
            d.text(
                ((card.width - (x1 - x0)) / 2 - x0, code.height + pad + (cap_h - cap_px) / 2 - y0),
                caption,
                font=font,
                fill=(30, 30, 30),
            )
    angle = rng.choice((-1, 1)) * rng.uniform(2, 10) if rng.random() < 0.3 else 0.0
    if card.width > w * 0.95 or card.height > h * 0.95:  # a huge code on a small photo: shrink, keep >= 2 px
        s = min(w * 0.95 / card.width, h * 0.95 / card.height)
        card = card.resize(
            (max(1, round(card.width * s)), max(1, round(card.height * s))), Image.Resampling.LANCZOS
        )
        module = module * s
    rt = _rotate(card, angle)
    position = rng.choice(["tl", "tr", "bl", "br", "centre", "random", "bottom"])
    x, y = _place((w, h), rt.size, position, rng)
    out = img.convert("RGBA")
    out.alpha_composite(rt, (x, y))
    return Rendered(
        out.convert("RGB"),
        {
            "payload": payload,
            "qr_version": qr.version,
            "qr_error": qr.error,
            "qr_frac": round(rt.width / short, 3),
            "module_px": round(module * final_scale, 2),
            "caption": caption,
            "angle": round(angle, 1),
            "position": position,
            "box": [x, y, x + rt.width, y + rt.height],
        },
    )


def as_upload(
    img: Image.Image, rng: random.Random, final_scale: float
) -> tuple[bytes, str, dict[str, object]]:
    """Downscale by ``final_scale`` and encode like a user upload: mostly JPEG q50-92, some PNG/WebP."""
    if final_scale < 1:
        size = (max(8, round(img.width * final_scale)), max(8, round(img.height * final_scale)))
        img = img.resize(
            size, rng.choice([Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS])
        )
    buf = io.BytesIO()
    fmt = rng.choices(["jpg", "png", "webp"], weights=[0.84, 0.08, 0.08])[0]
    info: dict[str, object] = {"width": img.width, "height": img.height, "encoding": fmt}
    if fmt == "jpg":
        q = rng.randint(50, 92)
        img.save(buf, format="JPEG", quality=q, subsampling=2 if q < 90 else rng.choice([0, 2]))
        info["quality"] = q
    elif fmt == "webp":
        q = rng.randint(70, 90)
        img.save(buf, format="WEBP", quality=q, method=4)
        info["quality"] = q
    else:
        img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), fmt, info


# --------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------


def _rng(variant: str, seed: int, item_id: str) -> random.Random:
    return random.Random(f"imgaudit-moderation:{variant}:{seed}:{item_id}")


def _base(photos_dir: Path, photo_path: str, rng: random.Random) -> Image.Image:
    src = open_photo(photos_dir / photo_path)
    long_side = rng.randint(*BASE_LONG_SIDE)
    scale = long_side / max(src.size)
    return src.resize(
        (max(8, round(src.width * scale)), max(8, round(src.height * scale))), Image.Resampling.LANCZOS
    )


def _final_scale(rng: random.Random) -> float:
    return rng.uniform(0.5, 0.9) if rng.random() < 0.45 else 1.0


def _extra_line(rng: random.Random, unseen: bool) -> str:
    return benign_text(rng.choice(["promo", "price", "promo", "brand"]), rng, unseen)


def make_item(
    item_id: str,
    label: str,
    kind: str,
    photo_path: str,
    photos_dir: Path,
    *,
    variant: str,
    seed: int,
    cjk: Sequence[Face],
    latin: Sequence[Face],
) -> tuple[bytes, dict[str, object]]:
    """One image of the set and its label row (without path)."""
    rng = _rng(variant, seed, item_id)
    unseen = variant == "unseen"
    img = _base(photos_dir, photo_path, rng)
    scale = _final_scale(rng)
    row: dict[str, object] = {
        "id": item_id,
        "label": label,
        "kind": kind,
        "variant": variant,
        "source_photo": photo_path,
    }
    if kind == "clean":
        row.update(text="", format="clean")
    elif kind == "qr":
        payload, fmt = qr_payload(rng, unseen)
        r = render_qr(img, payload, rng, cjk, final_scale=scale, unseen=unseen)
        img = r.image
        row.update(text=r.info.get("caption") or "", format=fmt, **r.info)
    else:
        if label == "violate":
            text, fmt = TEXT_MAKERS[kind](rng, unseen)
        else:
            text, fmt = benign_text(kind, rng, unseen), kind
        if rng.random() < 0.3:  # a second, benign line above or below
            extra = _extra_line(rng, unseen)
            text = f"{extra}\n{text}" if rng.random() < 0.5 else f"{text}\n{extra}"
            fmt += "+2lines" if label == "violate" else ""
        r = render_text(img, text, rng, cjk, latin, final_scale=scale, unseen=unseen)
        img = r.image
        row.update(text=text, format=fmt, **r.info)
    data, ext, info = as_upload(img, rng, scale)
    row.update(info, ext=ext, scale=round(scale, 3))
    return data, row


def set_meta(variant: str, seed: int, n_violate: int, n_benign: int, n_clean: int, manifest: Path) -> dict:
    return {
        "generator": GENERATOR_VERSION,
        "variant": variant,
        "seed": seed,
        "n_violate": n_violate,
        "n_benign": n_benign,
        "n_clean": n_clean,
        "manifest_bytes": manifest.stat().st_size,
    }


def read_labels(out_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (out_dir / "labels.jsonl").read_text(encoding="utf-8").splitlines() if x]


def build_set(
    photos_dir: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    variant: str = "default",
    n_violate: int = 300,
    n_benign: int = 300,
    n_clean: int = 300,
    font_cache: Path | None = None,
    force: bool = False,
) -> list[dict]:
    """Build (or reuse, when ``meta.json`` matches) the set in ``out_dir``; return its label rows.

    Row fields: ``id``, ``path`` (relative to ``out_dir``), ``label`` (violate | pass), ``kind`` (one of
    VIOLATE_KINDS, BENIGN_KINDS or clean), ``format`` (the text template, e.g. ``fullwidth+prefix``),
    ``text`` (what was drawn, lines joined by "\\n"; the QR caption for qr), ``font``, ``size_px`` (em
    size in final pixels), ``angle``, ``alpha``, ``background``, ``contrast``, ``position``,
    ``width``/``height``/``encoding``/``quality`` of the file, ``source_photo`` and ``group`` (its
    near-duplicate group: images of different groups never share a photo), ``payload`` for qr.

    Photos: near-duplicate groups (``transforms.near_duplicate_groups``) are shuffled with the seed;
    clean images take the first groups, overlays continue round-robin from where they stopped, so the
    clean photos and the first overlays come from different groups (``bench/moderation.py`` builds its
    speed mix from distinct groups).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    manifest = photos_dir / "manifest.jsonl"
    meta = set_meta(variant, seed, n_violate, n_benign, n_clean, manifest)
    meta_file = out_dir / "meta.json"
    cached = not force and (out_dir / "labels.jsonl").is_file() and meta_file.is_file()
    if cached and json.loads(meta_file.read_text()) == meta:
        return read_labels(out_dir)
    font_cache = font_cache or out_dir.parent / "fonts"
    cjk, latin = faces_for_variant(variant, font_cache)
    print(f"fonts ({variant}): {', '.join(f.name for f in cjk + latin)}", file=sys.stderr)

    photos = load_photos(manifest)
    if not photos:
        raise SystemExit(f"no eligible photos in {manifest}")
    groups = near_duplicate_groups(photos_dir, photos)
    members: dict[int, list[str]] = {}
    for p, g in zip(photos, groups, strict=True):
        members.setdefault(g, []).append(p.path)
    order = sorted(members)
    random.Random(f"imgaudit-moderation-photos:{seed}").shuffle(order)
    group_of = {p.path: g for p, g in zip(photos, groups, strict=True)}

    plan: list[tuple[str, str, str, str]] = []  # (id, label, kind, photo)
    for i in range(n_clean):
        g = order[i % len(order)]
        plan.append((f"c{i:04d}", "pass", "clean", members[g][(i // len(order)) % len(members[g])]))
    start = n_clean
    overlay: list[tuple[str, str, str]] = []
    for i in range(max(n_violate, n_benign)):
        if i < n_violate:
            overlay.append((f"v{i:04d}", "violate", VIOLATE_KINDS[i % len(VIOLATE_KINDS)]))
        if i < n_benign:
            overlay.append((f"b{i:04d}", "pass", BENIGN_KINDS[i % len(BENIGN_KINDS)]))
    for j, (item_id, label, kind) in enumerate(overlay):
        g = order[(start + j) % len(order)]
        pick = _rng(variant, seed, item_id + ":photo").choice(members[g])
        plan.append((item_id, label, kind, pick))

    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.iterdir():
        if stale.name[:1] in "vbc" and stale.suffix in (".jpg", ".png", ".webp"):
            stale.unlink()
    rows = []
    t0 = time.perf_counter()
    for n, (item_id, label, kind, photo) in enumerate(plan, 1):
        data, row = make_item(
            item_id, label, kind, photo, photos_dir, variant=variant, seed=seed, cjk=cjk, latin=latin
        )
        rel = f"images/{item_id}.{row['ext']}"
        (out_dir / rel).write_bytes(data)
        row["path"] = rel
        row["group"] = group_of[photo]
        rows.append(row)
        if n % 100 == 0:
            print(f"  {n}/{len(plan)} images ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    tmp = out_dir / "labels.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out_dir / "labels.jsonl")
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return rows


def summarise(rows: Sequence[dict]) -> str:
    """Counts by label/kind and a few style distributions, as text."""
    by = Counter(f"{r['label']}:{r['kind']}" for r in rows)
    lines = [f"{len(rows)} images: " + ", ".join(f"{k} {v}" for k, v in sorted(by.items()))]
    text_rows = [r for r in rows if r["kind"] not in ("clean", "qr")]
    if text_rows:
        for field in ("font", "background", "position", "contrast_mode", "lines", "encoding"):
            c = Counter(str(r.get(field)) for r in text_rows)
            lines.append(f"  {field}: " + ", ".join(f"{k} {v}" for k, v in c.most_common()))
        sizes = sorted(int(r["size_px"]) for r in text_rows)
        angles = [abs(float(r["angle"])) for r in text_rows]
        lines.append(
            f"  size_px: min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}; "
            f"rotated {sum(a > 0 for a in angles)}/{len(angles)}, 90-degree {sum(a == 90 for a in angles)}"
        )
    return "\n".join(lines)


def contact_sheet(out_dir: Path, rows: Sequence[dict], per_group: int, path: Path) -> Path:
    """A grid of the first ``per_group`` images of each kind, for a quick look."""
    chosen: list[dict] = []
    for kind in (*VIOLATE_KINDS, *BENIGN_KINDS, "clean"):
        chosen += [r for r in rows if r["kind"] == kind][:per_group]
    cell, cols = 320, 6
    sheet = Image.new("RGB", (cell * cols, cell * math.ceil(len(chosen) / cols)), (255, 255, 255))
    for i, r in enumerate(chosen):
        with Image.open(out_dir / r["path"]) as im:
            im = im.convert("RGB")
            im.thumbnail((cell - 4, cell - 4))
            sheet.paste(im, ((i % cols) * cell + 2, (i // cols) * cell + 2))
    sheet.save(path, quality=90)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--photos", type=Path, required=True, help="folder made by fetch-dev-photos.sh")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", choices=VARIANTS, default="default")
    ap.add_argument("--violate", type=int, default=300)
    ap.add_argument("--benign", type=int, default=300)
    ap.add_argument("--clean", type=int, default=300)
    ap.add_argument("--force", action="store_true", help="rebuild even if a matching set is cached")
    ap.add_argument("--sheet", type=int, default=0, help="write contact sheets of the first N of each kind")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = build_set(
        args.photos,
        args.out,
        seed=args.seed,
        variant=args.variant,
        n_violate=args.violate,
        n_benign=args.benign,
        n_clean=args.clean,
        force=args.force,
    )
    print(f"{args.out}: built or reused in {time.perf_counter() - t0:.1f} s")
    print(summarise(rows))
    if args.sheet:
        print(contact_sheet(args.out, rows, args.sheet, args.out / "sheet.jpg"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
