"""Build a LAMBADA-style evaluation set and a calibration text from the lines of books.

The real English text tfquant evaluates on offline comes from two domains, each built by
``tools/build_eval_set.py --domain NAME``:

- ``austen``: the Debian package ``r-cran-janeaustenr``, six public-domain Jane Austen novels,
  each an R character vector (one element per printed line) read by ``tfquant.rdata``;
- ``adventures``: Project Gutenberg plain-text files that compression libraries ship as test
  data (Doyle's *The Adventures of Sherlock Holmes* and Twain's *The Adventures of Tom Sawyer*
  for items, Carroll's *Alice's Adventures in Wonderland* for calibration).

The tool is a thin command line over the functions here; they are pure (strings in, Python
values out) so the tests can run them on small synthetic inputs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

# --------------------------------------------------------------------------
# Text: lines -> chapters -> paragraphs -> items
# --------------------------------------------------------------------------

# "CHAPTER I", "Chapter 12", "VOLUME II": headings that start a new section.
HEADING_RE = re.compile(r"^\s*(chapter|volume)\s+([ivxlc]+|\d+)\.?\s*$", re.IGNORECASE)
# The Adventures of Sherlock Holmes: a story starts at "ADVENTURE I. A SCANDAL IN BOHEMIA" or
# "VII. THE ADVENTURE OF THE BLUE CARBUNCLE", a scene within one at "I." / "II." alone on a line.
# Case-sensitive, so the mixed-case table of contents ("VIII. The Adventure of ...") is no heading.
STORY_HEADING_RE = re.compile(
    r"^\s*(ADVENTURE\s+[IVXL]+\.\s+[A-Z' -]+|[IVXL]+\.\s+THE ADVENTURE OF\s+[A-Z' -]+|[IVXL]+\.)\s*$"
)

# Project Gutenberg's own header and licence around a book's text.
_GUTENBERG_START_RE = re.compile(r"^\*\*\*\s*START OF (THIS|THE) PROJECT GUTENBERG", re.IGNORECASE)
_GUTENBERG_END_RE = re.compile(
    r"^(\*\*\*\s*END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", re.IGNORECASE
)


def text_lines(raw: bytes) -> list[str]:
    """A plain-text book file as lines: UTF-8 with or without a byte-order mark, LF or CRLF."""
    return raw.decode("utf-8-sig").splitlines()


def strip_gutenberg(lines: Sequence[str]) -> list[str]:
    """The lines between Project Gutenberg's ``*** START OF ...`` and ``End of ...`` markers.

    Either marker may be missing (older files have only the closing line, or neither); the
    licence after the end marker would otherwise end up in the last chapter's passages.
    """
    lines = list(lines)
    start = next((i + 1 for i, line in enumerate(lines) if _GUTENBERG_START_RE.match(line)), 0)
    end = next((i for i in range(start, len(lines)) if _GUTENBERG_END_RE.match(lines[i])), len(lines))
    return lines[start:end]


def split_paragraphs(lines: Iterable[str]) -> list[str]:
    """Join runs of non-blank lines into paragraphs with single spaces.

    The novels are stored one printed line per element; an empty element ends a
    paragraph.  Internal runs of spaces (two after a full stop in the source) are
    collapsed so contexts look like ordinary prose.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        words = line.split()
        if words:
            current.extend(words)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def split_chapters(lines: Sequence[str], heading: re.Pattern = HEADING_RE) -> list[list[str]]:
    """Paragraphs grouped by chapter; the front matter before the first heading is dropped.

    Passages never cross a chapter (or volume) heading, so a context never runs
    from one scene into an unrelated one.  ``heading`` matches a heading line
    (``HEADING_RE``: "CHAPTER I" / "VOLUME II"; ``STORY_HEADING_RE`` for Sherlock Holmes).
    """
    chapters: list[list[str]] = []
    current: list[str] | None = None
    for line in list(lines) + [""]:
        if heading.match(line):
            if current:
                chapters.append(split_paragraphs(current))
            current = []
        elif current is not None:
            current.append(line)
    if current:
        chapters.append(split_paragraphs(current))
    return [c for c in chapters if c]


# Function words are excluded as targets: "it"/"her"/"the" almost always occur
# earlier in any 50-word context, so they would make the "target occurs earlier"
# rule meaningless and the items would test grammar, not long-range context.
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me might more most must my myself no nor not now of off on once only or other ought our
    ours ourselves out over own same shall she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up upon very was we
    were what when where which while who whom why will with would yet you your yours yourself
    yourselves
    """.split()
)

# A paragraph-final token qualifies when it is letters only, optionally followed by
# closing punctuation/quotes/dashes ("him.", "Elizabeth!\"", "said--").  A leading
# quote or an inner apostrophe/hyphen ("Emma's", "to-day") disqualifies it.
_FINAL_TOKEN_RE = re.compile(r"^([A-Za-z]+)[^A-Za-z0-9]*$")
# Abbreviations whose full stop does not end a sentence.
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "dr.", "st.", "messrs.", "esq.", "col.", "capt.", "rev."})


@dataclass(frozen=True)
class ItemRule:
    """The selection rule; the defaults are what the committed Austen set uses."""

    min_context_words: int = 50
    max_context_words: int = 160


def final_word(paragraph: str) -> str | None:
    """The paragraph-final word stripped of trailing punctuation, or None if it is not a plain word."""
    words = paragraph.split()
    if not words:
        return None
    m = _FINAL_TOKEN_RE.match(words[-1])
    return m.group(1) if m else None


def occurs_as_word(word: str, text: str) -> bool:
    """Case-insensitive whole-word search (letters on neither side)."""
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text, re.IGNORECASE) is not None


def _sentence_starts(words: Sequence[str]) -> list[int]:
    """Indexes of words that begin a sentence (after a word ending in . ! or ?, quotes allowed)."""
    starts = [0]
    for i, w in enumerate(words[:-1]):
        core = w.rstrip("\"')_")
        if core.endswith(("." , "!", "?")) and core.lower() not in _ABBREVIATIONS:
            starts.append(i + 1)
    return starts


def _trim_context(words: list[str], rule: ItemRule) -> list[str]:
    """Keep at most ``max_context_words`` words, preferably starting at a sentence start."""
    if len(words) <= rule.max_context_words:
        return words
    earliest = len(words) - rule.max_context_words
    latest = len(words) - rule.min_context_words
    for start in _sentence_starts(words):
        if earliest <= start <= latest:
            return words[start:]
    return words[earliest:]  # no sentence break in range: cut mid-sentence


def make_items(chapters: Sequence[Sequence[str]], book: str, rule: ItemRule = ItemRule()) -> list[dict]:
    """LAMBADA-style items from one book's chapters (lists of paragraphs).

    Walking each chapter in order, a passage grows paragraph by paragraph from the
    end of the previous item.  At every paragraph end it becomes an item when:
      * the paragraph-final token is a plain word (see ``final_word``) that is not a
        stopword; that word, without its trailing punctuation, is the target;
      * the context (the passage text before the target, trimmed from the left to
        at most ``max_context_words`` words, at a sentence start where possible)
        has at least ``min_context_words`` words;
      * the target occurs earlier in the context as a whole word (case-insensitive).
    Passages never overlap and never cross a chapter heading.  No randomness.
    """
    items: list[dict] = []
    for chapter in chapters:
        pending: list[str] = []  # words since the end of the previous item
        for paragraph in chapter:
            words = paragraph.split()
            target = final_word(paragraph)
            if target is not None and target.lower() not in STOPWORDS:
                context_words = _trim_context(pending + words[:-1], rule)
                context = " ".join(context_words)
                if len(context_words) >= rule.min_context_words and occurs_as_word(target, context):
                    items.append(
                        {"id": f"{book}-{len(items):04d}", "book": book, "context": context, "target": target}
                    )
                    pending = []
                    continue
            pending.extend(words)
            # Only the tail can ever be used; keep memory bounded on long chapters.
            del pending[: max(0, len(pending) - 4 * rule.max_context_words)]
    return items


def interleave(groups: Sequence[Sequence[dict]]) -> list[dict]:
    """Round-robin merge, so that any prefix of the result is balanced across books."""
    out: list[dict] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def calibration_text(lines: Sequence[str], heading: re.Pattern = HEADING_RE) -> str:
    """One book as plain prose: chapters from the first heading on, paragraphs separated by a blank line."""
    parts = []
    for chapter in split_chapters(lines, heading):
        parts.append("\n\n".join(chapter))
    return "\n\n".join(parts) + "\n"
