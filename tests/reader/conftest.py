"""Fixtures of the reader tests: a character tokenizer, tiny random Llama and Gemma 3 bases, a BM25 retriever."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyterrier as pt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tiny_models import PASSAGES, QUESTIONS, make_char_tokenizer, make_tiny_base  # noqa: E402


@pytest.fixture(autouse=True)
def single_thread():
    """Run each reader test on one intra-op thread, then restore the previous count.

    The tiny test models gain nothing from more threads, and on a 2-core machine shared with
    other jobs a second OpenMP thread turned each small product from microseconds into milliseconds.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def make_base():
    """The :func:`make_tiny_base` factory, for tests that need a fresh or unquantized base."""
    return make_tiny_base


@pytest.fixture(scope="session")
def tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def tiny_base(request, tokenizer):
    return make_tiny_base(request.param, len(tokenizer))


@pytest.fixture(scope="session")
def llama_base(tokenizer):
    return make_tiny_base("llama", len(tokenizer))


@pytest.fixture(scope="session")
def bm25(tmp_path_factory):
    """BM25 (PISA) over :data:`PASSAGES`, with the passage title and text added to each result."""
    from pyterrier_pisa import PisaIndex

    index = PisaIndex(str(tmp_path_factory.mktemp("pisa") / "index"), text_field="text")
    index.index(PASSAGES[["docno", "text"]].to_dict("records"))
    texts = PASSAGES.set_index("docno")
    add_text = pt.apply.generic(
        lambda frame: frame.assign(title=texts.loc[frame["docno"], "title"].values,
                                   text=texts.loc[frame["docno"], "text"].values)
    )
    return index.bm25(num_results=3) >> add_text


@pytest.fixture
def questions():
    return QUESTIONS.copy()
