"""Answer-based measures for open-domain QA, usable in ``pt.Experiment`` beside ir_measures.

- ``AnswerAcc@k``: top-k answer accuracy (Karpukhin et al., 2020, "Dense Passage Retrieval"),
  the share of questions for which one of the top k passages contains an answer string.
- ``EM`` and ``F1``: exact match and token F1 of a generated answer (column ``qanswer``)
  against the gold answers, as in the SQuAD v1.1 evaluation script (max over gold answers).

All three compare text after SQuAD normalisation: lower case, punctuation and the articles
a/an/the removed, whitespace collapsed.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Callable, Dict, Iterable, List, Mapping, Sequence

import ir_measures
import pandas as pd

__all__ = [
    "normalize_answer",
    "has_answer",
    "exact_match",
    "token_f1",
    "AnswerMeasures",
    "ANSWER_MEASURE_NAMES",
]

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

# Names an experiment file may use for the measures of this module (k is any positive integer).
ANSWER_MEASURE_NAMES = ("AnswerAcc@k", "EM", "F1")


def normalize_answer(text: str) -> str:
    """Normalise ``text`` as the SQuAD v1.1 evaluation script does."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def has_answer(passage: str, answers: Iterable[str]) -> bool:
    """Return whether the normalised ``passage`` contains one of the normalised ``answers`` as whole tokens."""
    padded = f" {normalize_answer(passage)} "
    for answer in answers:
        normalized = normalize_answer(answer)
        if normalized and f" {normalized} " in padded:
            return True
    return False


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """Return 1.0 when ``prediction`` equals one of ``answers`` after normalisation, else 0.0."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(answer) for answer in answers))


def token_f1(prediction: str, answers: Iterable[str]) -> float:
    """Return the best token-level F1 of ``prediction`` against any of ``answers``."""
    prediction_tokens = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        answer_tokens = normalize_answer(answer).split()
        common = collections.Counter(prediction_tokens) & collections.Counter(answer_tokens)
        overlap = sum(common.values())
        if overlap == 0:
            continue
        precision = overlap / len(prediction_tokens)
        recall = overlap / len(answer_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


class AnswerMeasures:
    """Factory of answer-based ir_measures measures bound to one set of gold answers.

    Args:
        answers: gold answer strings by query id.
        passage_text: maps a list of docnos to their passage texts (needed by ``accuracy`` only).

    Example::

        measures = AnswerMeasures(answers, passage_text=index.texts)
        pt.Experiment([bm25], topics, qrels, [measures.accuracy(20), measures.exact_match()])
    """

    def __init__(self, answers: Mapping[str, Sequence[str]], *, passage_text: Callable[[List[str]], List[str]] = None):
        self.answers = {str(qid): list(golds) for qid, golds in answers.items()}
        self.passage_text = passage_text
        self._contains: Dict[tuple, bool] = {}
        self._text_normalized: Dict[str, str] = {}
        self._answers_normalized: Dict[str, List[str]] = {}

    def parse(self, name: str) -> ir_measures.Measure:
        """Return the measure called ``name`` (``AnswerAcc@k``, ``EM`` or ``F1``).

        Raises:
            ValueError: if ``name`` is none of these.
        """
        if name == "EM":
            return self.exact_match()
        if name == "F1":
            return self.f1()
        match = re.fullmatch(r"AnswerAcc@(\d+)", name)
        if match and int(match.group(1)) > 0:
            return self.accuracy(int(match.group(1)))
        raise ValueError(f"unknown answer measure {name!r}; valid: {', '.join(ANSWER_MEASURE_NAMES)} (k > 0)")

    def accuracy(self, k: int) -> ir_measures.Measure:
        """Return ``AnswerAcc@k``: 1 for a query when one of its top ``k`` passages contains an answer."""
        if self.passage_text is None:
            raise ValueError("AnswerAcc needs passage texts; pass passage_text= to AnswerMeasures")
        measure = ir_measures.define_byquery(self._accuracy_of_query, name="AnswerAcc", support_cutoff=True)
        return measure @ k

    def exact_match(self) -> ir_measures.Measure:
        """Return ``EM`` over the ``qanswer`` column."""
        return ir_measures.define_byquery(
            self._scorer(exact_match), name="EM", support_cutoff=False, run_inputs=["query_id", "qanswer"]
        )

    def f1(self) -> ir_measures.Measure:
        """Return ``F1`` over the ``qanswer`` column."""
        return ir_measures.define_byquery(
            self._scorer(token_f1), name="F1", support_cutoff=False, run_inputs=["query_id", "qanswer"]
        )

    def contains_answer(self, qid: str, docnos: Sequence[str]) -> List[bool]:
        """Return, for each of ``docnos``, whether its passage contains a gold answer of ``qid`` (cached)."""
        qid = str(qid)
        unknown = [d for d in dict.fromkeys(docnos) if (qid, d) not in self._contains]
        if unknown:
            if qid not in self._answers_normalized:
                self._answers_normalized[qid] = [f" {a} " for a in map(normalize_answer, self.answers.get(qid, [])) if a]
            golds = self._answers_normalized[qid]
            missing_text = [d for d in unknown if d not in self._text_normalized]
            if missing_text:
                for docno, text in zip(missing_text, self.passage_text(missing_text)):
                    self._text_normalized[docno] = f" {normalize_answer(text)} "
            for docno in unknown:
                text = self._text_normalized[docno]
                self._contains[(qid, docno)] = any(gold in text for gold in golds)
        return [self._contains[(qid, d)] for d in docnos]

    def _accuracy_of_query(self, qrels: pd.DataFrame, run: pd.DataFrame) -> float:
        if len(run) == 0:
            return 0.0
        qid = str(run["query_id"].iloc[0])
        return float(any(self.contains_answer(qid, [str(d) for d in run["doc_id"]])))

    def _scorer(self, compare: Callable[[str, Iterable[str]], float]):
        def score_query(qrels: pd.DataFrame, run: pd.DataFrame) -> float:
            if len(run) == 0:
                return 0.0
            qid = str(run["query_id"].iloc[0])
            prediction = run["qanswer"].iloc[0]
            return compare("" if pd.isna(prediction) else str(prediction), self.answers.get(qid, []))

        return score_query
