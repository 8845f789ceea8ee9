#!/usr/bin/env python3
"""Build tfquant's offline evaluation sets and calibration texts (one domain per run).

``--domain austen`` (the default): Jane Austen's novels from the Debian package
``r-cran-janeaustenr`` (MIT; the novels themselves are public domain), which stores six
novels in an R lazy-load database.  The package is only downloaded and unpacked
(``apt-get download`` + ``dpkg-deb -x``), never installed, because installing it pulls in R.

    python tools/build_eval_set.py                      # download the .deb with apt-get
    python tools/build_eval_set.py --deb r-cran-janeaustenr_1.0.0-1_all.deb
    python tools/build_eval_set.py --deb /path/to/unpacked/tree --output /tmp/res

``--domain adventures``: Doyle's *The Adventures of Sherlock Holmes* and Twain's *The
Adventures of Tom Sawyer* (Project Gutenberg texts that the Debian package
``golang-github-pierrec-lz4-dev`` ships as test data) for the items, and Carroll's *Alice's
Adventures in Wonderland* (``alice29.txt`` of the Canterbury corpus, in the PyPI sdist of
``brotli``) for calibration.  Neither package is installed: the .deb is unpacked, the sdist
read as a tar file.

    python tools/build_eval_set.py --domain adventures  # apt-get download + pip download
    python tools/build_eval_set.py --domain adventures --deb golang-github-pierrec-lz4-dev_2.5.2-2_all.deb \
        --calib_source brotli-1.2.1.tar.gz

Writes ``<domain>_eval.jsonl``, ``<domain>_calib.txt`` and ``<DOMAIN>_RECIPE.md`` into
``--output`` (default ``tfquant/resources``).  The output is a deterministic function of the
package contents: rebuilding gives byte-identical files.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
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


def download_deb(workdir: str, package: str = PACKAGE) -> str:
    """``apt-get download`` the package into ``workdir``; ``apt-get update`` once if the lists are stale."""
    try:
        _run(["apt-get", "download", package], cwd=workdir)
    except UserError:
        print("apt-get download failed; running apt-get update once and retrying", file=sys.stderr)
        _run(["apt-get", "update"])
        _run(["apt-get", "download", package], cwd=workdir)
    debs = sorted(glob.glob(os.path.join(workdir, f"{package}_*.deb")))
    if not debs:
        raise UserError(f"apt-get download left no {package} .deb in {workdir}")
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

    counts = {b: len(it) for b, it in zip(EVAL_BOOKS, per_book)}
    return _write_domain(output, "austen", items, calib, counts, lambda *facts: recipe(source, counts, *facts))


def _write_domain(output: str, domain: str, items: list, calib: str, counts: dict, render) -> dict:
    """Write <domain>_eval.jsonl, <domain>_calib.txt and <DOMAIN>_RECIPE.md (``render(n_items, calib chars,
    calib words, checksums)``); each file appears whole or not at all."""
    os.makedirs(output, exist_ok=True)
    eval_path = os.path.join(output, f"{domain}_eval.jsonl")
    calib_path = os.path.join(output, f"{domain}_calib.txt")
    atomic_write_text(eval_path, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    atomic_write_text(calib_path, calib)
    sums = {os.path.basename(p): sha256_file(p) for p in (eval_path, calib_path)}
    atomic_write_text(os.path.join(output, f"{domain.upper()}_RECIPE.md"),
                      render(len(items), len(calib), len(calib.split()), sums))
    return {"items": len(items), "per_book": counts, "calib_chars": len(calib), **sums}


# --------------------------------------------------------------------------
# Domain "adventures": Sherlock Holmes + Tom Sawyer for items, Alice for calibration
# --------------------------------------------------------------------------

ADV_PACKAGE = "golang-github-pierrec-lz4-dev"  # Debian; BSD-3-clause; ships the two novels as test data
ADV_TESTDATA = "pierrec/lz4/testdata"
# book id -> (file in the package, title, author and year, chapter heading pattern)
ADV_EVAL_BOOKS = {
    "sherlock": ("pg1661.txt", "The Adventures of Sherlock Holmes", "Arthur Conan Doyle, 1892",
                 evalset.STORY_HEADING_RE),
    "tomsawyer": ("Mark.Twain-Tom.Sawyer.txt", "The Adventures of Tom Sawyer", "Mark Twain, 1876",
                  evalset.HEADING_RE),
}
ADV_CALIB_PACKAGE = "brotli"  # PyPI sdist; MIT; ships the Canterbury corpus as test data
ADV_CALIB_VERSION = "1.2.1"
ADV_CALIB_FILE = "alice29.txt"
ADV_CALIB_BOOK = "alice"
ADV_MIN_ITEMS = 400
# The source texts the committed files were built from; another version of a package may
# carry other bytes, and then the output differs (the recipe records what was used).
ADV_SOURCE_SHA256 = {
    "pg1661.txt": "242ec73a70f0a03dcbe007e32038e7deeaee004aaec9a09a07fa322743440fa8",
    "Mark.Twain-Tom.Sawyer.txt": "461eb7cb2d57d293fc680c836464c9125e4382be3596f7d415093ae9db8fcb0e",
    "alice29.txt": "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0",
}


def download_sdist(workdir: str) -> str:
    """``pip download`` the pinned brotli sdist (no wheel, no dependencies) into ``workdir``."""
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
          "--dest", workdir, f"{ADV_CALIB_PACKAGE}=={ADV_CALIB_VERSION}"])
    found = sorted(glob.glob(os.path.join(workdir, f"{ADV_CALIB_PACKAGE}-*.tar.gz")))
    if not found:
        raise UserError(f"pip download left no {ADV_CALIB_PACKAGE} sdist in {workdir}")
    return found[-1]


def _find_one(tree: str, name: str, under: str = "") -> str:
    hits = sorted(glob.glob(os.path.join(tree, "**", under, name), recursive=True)) if under else []
    hits = hits or sorted(glob.glob(os.path.join(tree, "**", name), recursive=True))
    if not hits:
        raise UserError(f"no {name} under {tree}")
    return hits[0]


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _read_sdist_member(sdist: str, name: str) -> bytes:
    """The bytes of ``*/tests/testdata/<name>`` in an sdist, read without unpacking anything else."""
    try:
        with tarfile.open(sdist, "r:*") as tar:
            members = sorted(m.name for m in tar.getmembers()
                             if m.isfile() and m.name.endswith(f"/tests/testdata/{name}"))
            if not members:
                raise UserError(f"{sdist} holds no tests/testdata/{name}")
            return tar.extractfile(members[0]).read()
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot read {sdist}: {exc}") from None


def _deb_version_from_tree(tree: str, package: str) -> str:
    """The Debian version in an unpacked tree's ``changelog.Debian.gz`` (first line), or 'unknown'."""
    for path in sorted(glob.glob(os.path.join(tree, "**", "doc", package, "changelog.Debian.gz"), recursive=True)):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
            m = re.match(r"^\S+ \(([^)]+)\)", fh.readline())
        if m:
            return m.group(1)
    return "unknown"


def _resolve_deb(arg: str | None, work: str, package: str) -> tuple[str | None, str]:
    """(the .deb or None, an unpacked tree) from ``--deb``: a .deb, a folder holding one or its tree."""
    deb = None
    if arg is None:
        deb = download_deb(work, package)
    elif os.path.isfile(arg):
        deb = arg
    elif os.path.isdir(arg):
        found = sorted(glob.glob(os.path.join(arg, f"{package}_*.deb")))
        deb = found[-1] if found else None
    else:
        raise UserError(f"--deb {arg}: no such file or folder")
    if deb is None:
        return None, arg
    tree = os.path.join(work, "tree")
    _run(["dpkg-deb", "-x", deb, tree])  # unpack only
    return deb, tree


def _check_source(name: str, sha: str) -> None:
    expected = ADV_SOURCE_SHA256.get(name)
    if expected and sha != expected:
        print(f"warning: {name} has sha256 {sha}, not {expected} (the committed files' source); "
              "the output will differ from the committed one", file=sys.stderr)


def adventures_recipe(source: dict, counts: dict, n_items: int, calib_chars: int, calib_words: int,
                      sums: dict) -> str:
    deb_line = (
        f"`{source['deb_file']}` (Debian version {source['deb_version']}, sha256 `{source['deb_sha256']}`)"
        if source["deb_file"]
        else f"an already unpacked tree (Debian version {source['deb_version']})"
    )
    calib_line = (
        f"`{source['sdist_file']}` (sha256 `{source['sdist_sha256']}`)"
        if source["sdist_file"]
        else "an already extracted file"
    )
    books = "\n".join(
        f"| {book} | {title} ({author}) | `{ADV_TESTDATA}/{fname}` | `{source['files'][fname]}` | {counts[book]} |"
        for book, (fname, title, author, _) in ADV_EVAL_BOOKS.items()
    )
    return f"""# Adventures evaluation and calibration data

A second domain beside Austen's: other authors (Doyle, Twain; Carroll for calibration), other
decades (1865-1892), other genres (detective stories, a boys' adventure novel). Built by
`tools/build_eval_set.py --domain adventures`; rebuilding from the same packages gives
byte-identical files.

## Sources
- Evaluation items: Debian package `{ADV_PACKAGE}`, {deb_line}. Its test data holds two
  Project Gutenberg plain-text books (public domain); the package itself is BSD-3-clause
  (Copyright 2015 Pierre Curto). It is only unpacked with `dpkg-deb -x`, never installed.
- Calibration text: PyPI sdist `{ADV_CALIB_PACKAGE}=={ADV_CALIB_VERSION}`, {calib_line}, file
  `tests/testdata/{ADV_CALIB_FILE}` (sha256 `{source['files'][ADV_CALIB_FILE]}`): Lewis Carroll's
  *Alice's Adventures in Wonderland* (1865; Project Gutenberg's Millennium Fulcrum Edition 2.9, the
  Canterbury corpus file; public domain). The package is MIT (Copyright the Brotli Authors); the
  sdist is read as a tar file, never built or installed.

## Splits (disjoint by book)
| book | title | file | sha256 | items |
|---|---|---|---|---|
{books}
| **total** | | | | **{n_items}** |

Calibration: {ADV_CALIB_BOOK} (Alice's Adventures in Wonderland) only, a third book, so no calibration
passage is an evaluation passage.

## Item rule (`tfquant.evalset.make_items`, the same as Austen's)
1. The files are read as UTF-8 (byte-order mark dropped, CRLF or LF). Project Gutenberg's header
   and licence are cut off at the `*** START OF ...` and `End of the Project Gutenberg ...` lines
   (`tfquant.evalset.strip_gutenberg`). Lines are joined into paragraphs at empty lines (whitespace
   collapsed to single spaces). Headings split a book into chapters and the front matter before
   the first heading is dropped; passages never cross a heading:
   - Tom Sawyer and Alice: `CHAPTER n` lines (`tfquant.evalset.HEADING_RE`);
   - Sherlock Holmes: story headings `ADVENTURE I. A SCANDAL IN BOHEMIA` /
     `VII. THE ADVENTURE OF THE BLUE CARBUNCLE` and scene numbers `I.` alone on a line
     (`tfquant.evalset.STORY_HEADING_RE`).
2. Within a chapter, a passage grows paragraph by paragraph from the end of the previous item
   (passages never overlap). At each paragraph end it becomes an item if all of these hold:
   - the paragraph's last whitespace token is ASCII letters optionally followed by punctuation,
     quotes or dashes only; the letters are the **target**;
   - the target (lower-cased) is not one of {len(evalset.STOPWORDS)} English function words
     (`tfquant.evalset.STOPWORDS`);
   - the **context** is the passage text before the target (paragraphs joined by one space), cut from the
     left to at most {RULE.max_context_words} words, starting at a sentence start when one lies in range; it has at least
     {RULE.min_context_words} words;
   - the target occurs in the context as a whole word, case-insensitively.
3. The context never includes the target and has no trailing space; a scorer predicts `" " + target`.
4. No randomness. Items are interleaved round-robin across books (ids `book-NNNN` number each book's
   items in text order), so any prefix of the file is balanced across books.

Calibration text: {calib_chars} characters, {calib_words} words; chapters from the first heading on,
paragraphs separated by a blank line (the text keeps the edition's `` `quote' `` marks).

## Files
| file | sha256 |
|---|---|
| `adventures_eval.jsonl` | `{sums['adventures_eval.jsonl']}` |
| `adventures_calib.txt` | `{sums['adventures_calib.txt']}` |

Each line of `adventures_eval.jsonl` is `{{"id", "book", "context", "target"}}`.
"""


def build_adventures(eval_files: dict, calib_raw: bytes, output: str, source: dict) -> dict:
    """Write the adventures files from ``{file name: bytes}`` of the two books and Alice's bytes."""
    per_book = []
    for book, (fname, _title, _author, heading) in ADV_EVAL_BOOKS.items():
        lines = evalset.strip_gutenberg(evalset.text_lines(eval_files[fname]))
        per_book.append(evalset.make_items(evalset.split_chapters(lines, heading), book, RULE))
    items = evalset.interleave(per_book)
    if len(items) < ADV_MIN_ITEMS:
        raise UserError(f"only {len(items)} items were made; at least {ADV_MIN_ITEMS} are required")
    calib = evalset.calibration_text(evalset.strip_gutenberg(evalset.text_lines(calib_raw)))

    counts = {b: len(it) for b, it in zip(ADV_EVAL_BOOKS, per_book)}
    return _write_domain(output, "adventures", items, calib, counts,
                         lambda *facts: adventures_recipe(source, counts, *facts))


def main_adventures(args, work: str) -> dict:
    deb, tree = _resolve_deb(args.deb, work, ADV_PACKAGE)
    source = {"deb_file": None, "deb_sha256": None, "files": {}}
    if deb:
        source.update(deb_file=os.path.basename(deb), deb_sha256=sha256_file(deb),
                      deb_version=_run(["dpkg-deb", "-f", deb, "Version"]).strip())
    else:
        source["deb_version"] = _deb_version_from_tree(tree, ADV_PACKAGE)
    eval_files = {}
    for fname, *_ in ADV_EVAL_BOOKS.values():
        path = _find_one(tree, fname, ADV_TESTDATA)
        eval_files[fname] = _read_bytes(path)
        source["files"][fname] = hashlib.sha256(eval_files[fname]).hexdigest()

    calib_arg = args.calib_source
    if calib_arg is None:
        calib_arg = download_sdist(work)
    elif os.path.isdir(calib_arg):
        found = sorted(glob.glob(os.path.join(calib_arg, f"{ADV_CALIB_PACKAGE}-*.tar.gz")))
        calib_arg = found[-1] if found else _find_one(calib_arg, ADV_CALIB_FILE, "testdata")
    elif not os.path.isfile(calib_arg):
        raise UserError(f"--calib_source {calib_arg}: no such file or folder")
    if calib_arg.endswith((".tar.gz", ".tgz", ".tar")):
        source.update(sdist_file=os.path.basename(calib_arg), sdist_sha256=sha256_file(calib_arg))
        calib_raw = _read_sdist_member(calib_arg, ADV_CALIB_FILE)
    else:
        source.update(sdist_file=None, sdist_sha256=None)
        calib_raw = _read_bytes(calib_arg)
    source["files"][ADV_CALIB_FILE] = hashlib.sha256(calib_raw).hexdigest()
    for name, sha in source["files"].items():
        _check_source(name, sha)
    return build_adventures(eval_files, calib_raw, args.output, source)


def main_austen(args, work: str) -> dict:
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
    return build(rdx, rdb, args.output, describe_source(deb, tree))


DOMAINS = {"austen": main_austen, "adventures": main_adventures}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--domain", default="austen", choices=sorted(DOMAINS),
                    help="which set to build: austen (default; r-cran-janeaustenr) or adventures "
                         f"(Sherlock Holmes + Tom Sawyer from {ADV_PACKAGE}, Alice from the {ADV_CALIB_PACKAGE} sdist)")
    ap.add_argument("--deb", help=f"the domain's .deb ({PACKAGE} or {ADV_PACKAGE}), or a folder holding one "
                    "or its unpacked tree (default: apt-get download it)")
    ap.add_argument("--calib_source", help=f"adventures only: the {ADV_CALIB_PACKAGE} sdist (.tar.gz), a folder "
                    f"holding it, or {ADV_CALIB_FILE} itself (default: pip download "
                    f"{ADV_CALIB_PACKAGE}=={ADV_CALIB_VERSION})")
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "tfquant", "resources"),
                    help="output folder (default: tfquant/resources)")
    args = ap.parse_args(argv)
    if args.calib_source and args.domain != "adventures":
        raise UserError("--calib_source is only for --domain adventures")

    with tempfile.TemporaryDirectory(prefix=f"{args.domain}-") as work:
        summary = DOMAINS[args.domain](args, work)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
