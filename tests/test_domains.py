"""The shipped evaluation domains: austen and adventures (Sherlock Holmes + Tom Sawyer, Alice for calibration).

Checks the committed files (item rule, disjoint calibration text, the RECIPE's checksums), the names
the commands accept, and the build tool's adventures path on small synthetic books (no network).
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import sys

import pytest
from conftest import ROOT

from tfquant import data, evalset
from tfquant.errors import UserError, run_cli

SHIPPED = sorted(data.SHIPPED_DATASETS)
# A shared run of this many words would mean a shared passage (one author repeats shorter phrases:
# Austen's calibration book shares a 15-word one with Sense and Sensibility).
NGRAM = 20
# Adventures' calibration book is by a third author: not even this many words in a row are shared.
NGRAM_OTHER_AUTHOR = 8


def _rows(name: str) -> list[dict]:
    with open(data.shipped_path(name, "eval"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _recipe(name: str) -> str:
    with open(os.path.join(data.RESOURCES_DIR, f"{name.upper()}_RECIPE.md"), encoding="utf-8") as fh:
        return fh.read()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _ngrams(words: list[str], n: int = NGRAM) -> set:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_adventures_items_follow_the_rule():
    items = data.load_eval_items("adventures")
    assert len(items) >= 400
    assert len({i.id for i in items}) == len(items)
    for item in items:
        context, target = item.context, item.target
        assert target.isascii() and target.isalpha(), item.id  # one plain word
        assert target.lower() not in evalset.STOPWORDS
        assert 50 <= len(context.split()) <= 160 and context == context.strip()
        # the target is the passage's last word, and it occurs earlier as a whole word
        assert data.split_last_word(f"{context} {target}") == (context, target)
        assert evalset.occurs_as_word(target, context)
        assert not re.search(rf"(?<![A-Za-z]){re.escape(target)}$", context, re.IGNORECASE)


def test_adventures_books_are_interleaved_and_not_austen():
    rows = _rows("adventures")
    books = [r["book"] for r in rows]
    assert set(books) == {"sherlock", "tomsawyer"}
    # round-robin: any prefix is balanced across the two books
    assert books[:200].count("sherlock") == books[:200].count("tomsawyer") == 100
    for r in rows:
        assert r["id"].startswith(r["book"] + "-")
    austen = {i.context for i in data.load_eval_items("austen")}
    assert not austen & {r["context"] for r in rows}


@pytest.mark.parametrize("name", SHIPPED)
def test_calibration_text_shares_no_passage_with_the_items(name):
    text, source = data.calibration_text(name)
    assert source.startswith(f"{name} (shipped {data.SHIPPED_DATASETS[name].calib_file}")
    n = NGRAM_OTHER_AUTHOR if name == "adventures" else NGRAM
    calib = _ngrams(_words(text), n)
    for item in data.load_eval_items(name):
        assert item.context[:80] not in text and item.context[-80:] not in text, item.id
        assert not _ngrams(_words(item.context), n) & calib, item.id
    # long enough for the default calibration and then some
    wins = data.token_windows(text, data.gpt2_tokenizer(), n_samples=64, seq_len=256)
    assert len(wins) == 64


def test_adventures_calibration_is_alice():
    text, source = data.calibration_text("adventures")
    assert "Alice" in source and text.startswith("Down the Rabbit-Hole")
    assert "Gutenberg" not in text
    assert data.calibration_text(None)[1] == data.calibration_text(data.DEFAULT_DATASET)[1]


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_checksums_and_counts_match_the_files(name):
    from tfquant.fsutil import sha256_file

    recipe = _recipe(name)
    d = data.SHIPPED_DATASETS[name]
    for fname in (d.eval_file, d.calib_file):
        m = re.search(rf"\| `{re.escape(fname)}` \| `([0-9a-f]{{64}})` \|", recipe)
        assert m, f"{fname} missing from the recipe's Files table"
        assert sha256_file(os.path.join(data.RESOURCES_DIR, fname)) == m.group(1), fname
    rows = _rows(name)
    total = re.search(r"\| \*\*total\*\* \|(?: \|)* \*\*(\d+)\*\* \|", recipe)
    assert total and int(total.group(1)) == len(rows)
    for book in {r["book"] for r in rows}:
        m = re.search(rf"^\| {book} \|(?:.*\|)? (\d+) \|$", recipe, re.MULTILINE)
        assert m and int(m.group(1)) == sum(r["book"] == book for r in rows), book


def test_resources_are_package_data():
    """setup.py ships tfquant/resources/* in the wheel: every shipped file must match that glob."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as fh:
        setup_py = fh.read()
    patterns = re.search(r'"tfquant": \[([^\]]*)\]', setup_py).group(1)
    globs = re.findall(r'"([^"]+)"', patterns)
    for name, d in data.SHIPPED_DATASETS.items():
        for fname in (d.eval_file, d.calib_file, f"{name.upper()}_RECIPE.md"):
            assert os.path.isfile(os.path.join(data.RESOURCES_DIR, fname)), fname
            assert any(fnmatch.fnmatch(f"resources/{fname}", g) for g in globs), fname
        assert os.path.getsize(data.shipped_path(name, "eval")) < 1_000_000


def test_dataset_names_and_help():
    assert data.DATASETS[0] == data.DEFAULT_DATASET == "austen"
    assert set(SHIPPED) <= set(data.DATASETS) and "lambada" in data.DATASETS
    for name in data.DATASETS:
        assert name in data.dataset_help()
    for name in SHIPPED:
        assert name in data.calibration_help()
    from tfquant.benchmark import cli

    args = cli.parse_args(["--input_model", "m", "--dataset", "adventures"])
    cli._check_dataset(args)  # accepted
    assert cli.parse_args(["--input_model", "m"]).dataset == data.DEFAULT_DATASET
    from tfquant import quantize

    qargs = quantize.parse_args(["--input_model", "m", "--output_dir", "o", "--calib_dataset", "adventures"])
    assert qargs.calib_dataset == "adventures"


def test_adventures_calibration_windows():
    calib = data.calibration_set(data.gpt2_tokenizer(), "gpt2", dataset="adventures", samples=4, seq_len=32)
    assert len(calib.windows) == 4 and "Alice" in calib.source


@pytest.mark.parametrize("call", [
    lambda: data.load_eval_items("sherlock"),
    lambda: data.calibration_text("sherlock"),
])
def test_unknown_dataset_is_one_line(call):
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "'sherlock'" in message and "adventures" in message and "\n" not in message


def test_benchmark_unknown_dataset_one_line(tmp_path, capsys):
    from tfquant import benchmark as bench

    code = run_cli(bench.main, ["--input_model", str(tmp_path), "--output", str(tmp_path / "r.json"),
                                "--dataset", "sherlock"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown dataset 'sherlock'" in err[0] and "adventures" in err[0]


# --------------------------------------------------------------------------
# Pure helpers and the build tool on synthetic books
# --------------------------------------------------------------------------


def test_text_lines_and_strip_gutenberg():
    raw = "\ufeffHeader\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\nbody 1\r\n\r\nbody 2\r\n" \
          "End of the Project Gutenberg EBook of X\r\nlicence\r\n"
    lines = evalset.text_lines(raw.encode("utf-8"))
    assert lines[0] == "Header"
    assert evalset.strip_gutenberg(lines) == ["body 1", "", "body 2"]
    assert evalset.strip_gutenberg(["a", "b"]) == ["a", "b"]  # no markers: everything


def test_story_headings():
    h = evalset.STORY_HEADING_RE
    for line in ("ADVENTURE I. A SCANDAL IN BOHEMIA", "VII. THE ADVENTURE OF THE BLUE CARBUNCLE",
                 "IX. THE ADVENTURE OF THE ENGINEER'S THUMB", "II.", "  III.  "):
        assert h.match(line), line
    for line in ("VIII. The Adventure of the Speckled Band", "   I. A Scandal in Bohemia", "I. said he", "CHAPTER I"):
        assert not h.match(line), line


FILLER = ("The fog lay thick upon the river and the lamps burned yellow along the quay while the cabmen "
          "waited in a row and talked of the weather and the price of oats and the news from the city "
          "and of nothing at all that could matter to anyone who was not a cabman on a cold night.")


def _book(heading: str, n: int, word: str) -> bytes:
    lines = ["Some Title", "", "*** START OF THIS PROJECT GUTENBERG EBOOK ***", ""]
    for k in range(n):
        lines += [heading.format(k=["I", "II", "III", "IV", "V", "VI"][k]), ""]
        lines += [f"The {word} was there. {FILLER}", "", f"He looked again at the {word}.", ""]
    lines += ["End of the Project Gutenberg EBook", "THE LICENCE " * 20]
    return "\r\n".join(lines).encode("utf-8")


def _tool():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import build_eval_set
    finally:
        sys.path.pop(0)
    return build_eval_set


def test_build_adventures_is_deterministic(tmp_path, monkeypatch):
    tool = _tool()
    monkeypatch.setattr(tool, "ADV_MIN_ITEMS", 1)
    files = {"pg1661.txt": b"\xef\xbb\xbf" + _book("ADVENTURE {k}. A CASE OF FOG", 3, "lamp"),
             "Mark.Twain-Tom.Sawyer.txt": _book("CHAPTER {k}", 2, "fence")}
    calib = _book("CHAPTER {k}", 2, "rabbit")
    source = {"deb_file": None, "deb_version": "0-test", "sdist_file": None,
              "files": {"pg1661.txt": "a" * 64, "Mark.Twain-Tom.Sawyer.txt": "b" * 64, "alice29.txt": "c" * 64}}
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        summary = tool.build_adventures(files, calib, str(out), source)
        outs.append({f: (out / f).read_bytes() for f in sorted(os.listdir(out))})
    assert outs[0] == outs[1]
    assert summary["per_book"] == {"sherlock": 3, "tomsawyer": 2}
    rows = [json.loads(line) for line in outs[0]["adventures_eval.jsonl"].decode().splitlines()]
    assert [r["id"] for r in rows[:3]] == ["sherlock-0000", "tomsawyer-0000", "sherlock-0001"]
    assert {r["target"] for r in rows} == {"lamp", "fence"}
    assert b"LICENCE" not in outs[0]["adventures_calib.txt"]
    recipe = outs[0]["ADVENTURES_RECIPE.md"].decode()
    assert summary["adventures_eval.jsonl"] in recipe and "0-test" in recipe
    monkeypatch.setattr(tool, "ADV_MIN_ITEMS", 400)
    with pytest.raises(UserError, match="only 5 items"):
        tool.build_adventures(files, calib, str(tmp_path / "few"), source)


def test_build_tool_flags(capsys):
    tool = _tool()
    assert run_cli(tool.main, ["--calib_source", "x.tar.gz"]) == 2
    assert "only for --domain adventures" in capsys.readouterr().err
    assert run_cli(tool.main, ["--domain", "adventures", "--deb", "/nonexistent/x.deb"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
