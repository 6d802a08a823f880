"""Pseudo-queries made from each passage, so that every document is seen in training.

GDR's generator must memorise where every document sits, yet most documents have no
training question. Following DSI/NCI practice, each passage yields queries of its own:
random word spans of its text, prefixed with its title when it has one (a bare span such
as "the game was played on February 7" names no topic). The GDR paper also uses
docT5query pseudo-queries, which need a query-generation model; spans need none.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Tuple

import numpy as np

__all__ = ["span_queries"]


def span_queries(
    docs: Iterable[dict],
    *,
    per_doc: int = 2,
    span_words: int = 12,
    with_title: bool = True,
    seed: int = 0,
) -> Iterator[Tuple[str, str]]:
    """Yield ``(pseudo_query, docno)`` pairs: ``per_doc`` random word spans of each passage.

    Args:
        docs: dictionaries with ``docno``, ``text`` and optional ``title``.
        per_doc: spans per passage.
        span_words: words per span (shorter passages give their whole text).
        with_title: prefix each span with the passage's title.
        seed: random seed of the span positions.
    """
    if per_doc < 0 or span_words < 1:
        raise ValueError(f"per_doc={per_doc} and span_words={span_words} are invalid; use per_doc >= 0 and span_words >= 1")
    rng = np.random.default_rng(seed)
    for doc in docs:
        words = str(doc.get("text", "")).split()
        title = str(doc.get("title", "") or "").strip()
        if not words:
            continue
        for _ in range(per_doc):
            start = int(rng.integers(0, max(1, len(words) - span_words + 1)))
            span = " ".join(words[start:start + span_words])
            yield (f"{title} {span}" if with_title and title else span), str(doc["docno"])
