#!/usr/bin/env python3
"""Build tfquant's offline evaluation set and calibration text from Jane Austen's novels.

Source: the Debian package ``r-cran-janeaustenr`` (MIT; the novels themselves are
public domain), which stores six novels in an R lazy-load database.  The package
is only downloaded and unpacked (``apt-get download`` + ``dpkg-deb -x``), never
installed, because installing it pulls in R.

    python tools/build_eval_set.py                      # download the .deb with apt-get
    python tools/build_eval_set.py --deb r-cran-janeaustenr_1.0.0-1_all.deb
    python tools/build_eval_set.py --deb /path/to/unpacked/tree --output /tmp/res

Writes ``austen_eval.jsonl``, ``austen_calib.txt`` and ``AUSTEN_RECIPE.md`` into
``--output`` (default ``tfquant/resources``).  The output is a deterministic
function of the package contents: rebuilding gives byte-identical files.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import _bootstrap  # noqa: F401

from tfquant import evalset, rdata
from tfquant.errors import UserError, run_cli
from tfquant.fsutil import atomic_write_text, sha256_file

REPO_ROOT = _bootstrap.ROOT

PACKAGE = "r-cran-janeaustenr"
# The five novels that provide evaluation items ...
EVAL_BOOKS = ("emma", "mansfieldpark", "persuasion", "prideprejudice", "sensesensibility")
# ... and the one that provides calibration text, so the two never share a passage.
CALIB_BOOK = "northangerabbey"
MIN_ITEMS = 600
RULE = evalset.ItemRule(min_context_words=50, max_context_words=160)


def _run(cmd: list[str], cwd: str | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"`{cmd[0]}` is not available; pass an already downloaded .deb with --deb") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
        raise UserError(f"`{' '.join(cmd)}` failed: {last[0]}")
    return proc.stdout


def download_deb(workdir: str) -> str:
    """``apt-get download`` the package into ``workdir``; ``apt-get update`` once if the lists are stale."""
    try:
        _run(["apt-get", "download", PACKAGE], cwd=workdir)
    except UserError:
        print("apt-get download failed; running apt-get update once and retrying", file=sys.stderr)
        _run(["apt-get", "update"])
        _run(["apt-get", "download", PACKAGE], cwd=workdir)
    debs = sorted(glob.glob(os.path.join(workdir, f"{PACKAGE}_*.deb")))
    if not debs:
        raise UserError(f"apt-get download left no {PACKAGE} .deb in {workdir}")
    return debs[-1]


def find_database(tree: str) -> tuple[str, str]:
    """The ``Rdata.rdx``/``Rdata.rdb`` pair of janeaustenr inside an unpacked tree."""
    hits = sorted(glob.glob(os.path.join(tree, "**", "janeaustenr", "data", "Rdata.rdx"), recursive=True))
    hits = hits or sorted(glob.glob(os.path.join(tree, "**", "Rdata.rdx"), recursive=True))
    if not hits:
        raise UserError(f"no janeaustenr data/Rdata.rdx under {tree}")
    rdx = hits[0]
    rdb = rdx[: -len(".rdx")] + ".rdb"
    if not os.path.isfile(rdb):
        raise UserError(f"{rdx} has no matching .rdb")
    return rdx, rdb


def describe_source(deb: str | None, tree: str) -> dict:
    """Package name/version (from the .deb when we have it, else from the R DESCRIPTION)."""
    info = {"package": PACKAGE, "deb_version": "unknown", "deb_file": None, "deb_sha256": None}
    if deb:
        info["deb_file"] = os.path.basename(deb)
        info["deb_sha256"] = sha256_file(deb)
        info["deb_version"] = _run(["dpkg-deb", "-f", deb, "Version"]).strip()
    desc = glob.glob(os.path.join(tree, "**", "janeaustenr", "DESCRIPTION"), recursive=True)
    info["upstream_version"] = "unknown"
    if desc:
        with open(desc[0], encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("Version:"):
                    info["upstream_version"] = line.split(":", 1)[1].strip()
    return info


def recipe(source: dict, counts: dict, n_items: int, calib_chars: int, calib_words: int, sums: dict) -> str:
    deb_line = (
        f"`{source['deb_file']}` (Debian version {source['deb_version']}, sha256 `{source['deb_sha256']}`)"
        if source["deb_file"]
        else "an already unpacked tree (Debian version not recorded)"
    )
    per_book = "\n".join(f"| {book} | {n} |" for book, n in counts.items())
    return f"""# Austen evaluation and calibration data

Built by `tools/build_eval_set.py`; rebuilding from the same package gives byte-identical files.

## Source
- Debian package `{source['package']}`, {deb_line}; upstream R package janeaustenr {source['upstream_version']}.
- License: the package is MIT (Copyright 2016-2017 Julia Silge); the six novels are Jane Austen's,
  public domain (Project Gutenberg texts).
- Read from the R lazy-load database `janeaustenr/data/Rdata.rdx` + `Rdata.rdb` with
  `tfquant.evalset` (no R needed): one character vector per novel, one element per printed line.

## Splits (disjoint by book)
- Evaluation items: {', '.join(EVAL_BOOKS)}.
- Calibration text: {CALIB_BOOK} (Northanger Abbey) only, so no calibration passage is an evaluation passage.

## Item rule (`tfquant.evalset.make_items`)
1. Lines are joined into paragraphs at empty lines (whitespace collapsed to single spaces). Lines
   matching `CHAPTER n` / `Chapter n` / `VOLUME n` split the book into chapters; the title page before
   the first heading is dropped. Passages never cross a chapter heading.
2. Within a chapter, a passage grows paragraph by paragraph from the end of the previous item
   (passages never overlap). At each paragraph end it becomes an item if all of these hold:
   - the paragraph's last whitespace token is ASCII letters optionally followed by punctuation,
     quotes or dashes only (`him."`, `Fanny!`, `said--`); the letters are the **target**;
   - the target (lower-cased) is not one of {len(evalset.STOPWORDS)} English function words
     (`tfquant.evalset.STOPWORDS`), since words like "it" or "her" occur in every context;
   - the **context** is the passage text before the target (paragraphs joined by one space), cut from the
     left to at most {RULE.max_context_words} words, starting at a sentence start when one lies in range; it has at least
     {RULE.min_context_words} words;
   - the target occurs in the context as a whole word, case-insensitively.
3. The context never includes the target and has no trailing space; a scorer predicts `" " + target`.
4. No randomness. Items are interleaved round-robin across books (ids `book-NNNN` number each book's
   items in text order), so any prefix of the file is balanced across books.

## Counts
| book | items |
|---|---|
{per_book}
| **total** | **{n_items}** |

Calibration text: {calib_chars} characters, {calib_words} words; chapters from the first heading on,
paragraphs separated by a blank line.

## Files
| file | sha256 |
|---|---|
| `austen_eval.jsonl` | `{sums['austen_eval.jsonl']}` |
| `austen_calib.txt` | `{sums['austen_calib.txt']}` |

Each line of `austen_eval.jsonl` is `{{"id", "book", "context", "target"}}`.
"""


def build(rdx_path: str, rdb_path: str, output: str, source: dict) -> dict:
    with open(rdx_path, "rb") as fh:
        rdx = fh.read()
    with open(rdb_path, "rb") as fh:
        rdb = fh.read()
    books = rdata.character_vectors(rdata.read_lazyload_db(rdx, rdb))
    missing = [b for b in EVAL_BOOKS + (CALIB_BOOK,) if b not in books]
    if missing:
        raise UserError(f"the R database lacks {missing}; it holds {sorted(books)}")

    per_book = [evalset.make_items(evalset.split_chapters(books[b]), b, RULE) for b in EVAL_BOOKS]
    items = evalset.interleave(per_book)
    if len(items) < MIN_ITEMS:
        raise UserError(f"only {len(items)} items were made; at least {MIN_ITEMS} are required")
    calib = evalset.calibration_text(books[CALIB_BOOK])

    os.makedirs(output, exist_ok=True)
    eval_path = os.path.join(output, "austen_eval.jsonl")
    calib_path = os.path.join(output, "austen_calib.txt")
    atomic_write_text(eval_path, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    atomic_write_text(calib_path, calib)
    sums = {os.path.basename(p): sha256_file(p) for p in (eval_path, calib_path)}
    counts = {b: len(it) for b, it in zip(EVAL_BOOKS, per_book)}
    atomic_write_text(
        os.path.join(output, "AUSTEN_RECIPE.md"),
        recipe(source, counts, len(items), len(calib), len(calib.split()), sums),
    )
    return {"items": len(items), "per_book": counts, "calib_chars": len(calib), **sums}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--deb", help=f"{PACKAGE} .deb file, or a folder holding one or its unpacked tree "
                    "(default: apt-get download it)")
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "tfquant", "resources"),
                    help="output folder (default: tfquant/resources)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="austen-") as work:
        deb = None
        if args.deb is None:
            deb = download_deb(work)
        elif os.path.isfile(args.deb):
            deb = args.deb
        elif os.path.isdir(args.deb):
            found = sorted(glob.glob(os.path.join(args.deb, f"{PACKAGE}_*.deb")))
            deb = found[-1] if found else None
        else:
            raise UserError(f"--deb {args.deb}: no such file or folder")

        if deb is not None:
            tree = os.path.join(work, "tree")
            _run(["dpkg-deb", "-x", deb, tree])  # unpack only; installing would pull in R
        else:
            tree = args.deb
        rdx, rdb = find_database(tree)
        summary = build(rdx, rdb, args.output, describe_source(deb, tree))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
