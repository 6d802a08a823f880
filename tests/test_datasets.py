import pyterrier as pt
import pytest

import pyterrier_gdr  # noqa: F401
from pyterrier_gdr.datasets import load_corpus, load_questions


def test_squad_counts():
    assert load_corpus("irds:pyterrier-gdr/squad-dev").count == 2067
    assert len(load_questions("irds:pyterrier-gdr/squad-dev/train")) == 6700
    assert len(load_questions("irds:pyterrier-gdr/squad-dev/dev")) == 870
    assert len(load_questions("irds:pyterrier-gdr/squad-dev/test")) == 2000


def test_wiki_slice_counts():
    assert load_corpus("irds:pyterrier-gdr/wiki-slice").count == 4857
    assert len(load_questions("irds:pyterrier-gdr/wiki-slice/dev")) == 65
    assert len(load_questions("irds:pyterrier-gdr/wiki-slice/test")) == 65


def test_squad_spot_check():
    corpus = load_corpus("irds:pyterrier-gdr/squad-dev")
    first = next(iter(corpus))
    assert first["docno"] == "0_0"
    assert first["title"] == "Super Bowl 50"
    test = load_questions("irds:pyterrier-gdr/squad-dev/test")
    row = test.topics[test.topics["qid"] == "56be4db0acb8001400a502ee"].iloc[0]
    assert row["query"] == "Where did Super Bowl 50 take place?"
    assert "Santa Clara, California" in test.answers["56be4db0acb8001400a502ee"]
    assert test.qrels[test.qrels["qid"] == "56be4db0acb8001400a502ee"]["docno"].tolist() == ["0_0"]


def test_through_pyterrier_like_nq():
    dataset = pt.get_dataset("irds:pyterrier-gdr/wiki-slice/test")
    qrels = dataset.get_qrels()
    assert {"qid", "docno", "label"} <= set(qrels.columns)
    topics = dataset.get_topics("text")
    assert list(topics.columns) == ["qid", "query"]
    assert len(topics) == 65
    queries = list(dataset.irds_ref().queries_iter())
    assert queries[0].answers


def test_docs_store_lookup():
    import ir_datasets

    store = ir_datasets.load("pyterrier-gdr/wiki-slice").docs_store()
    assert store.get("12-0").title == "Anarchism"


def test_unknown_id_suggests():
    with pytest.raises(ValueError, match="Did you mean 'irds:pyterrier-gdr/squad-dev/test'"):
        load_questions("irds:pyterrier-gdr/squad/test")


def test_local_files(tmp_path, write_jsonl):
    corpus_path = write_jsonl(tmp_path / "docs.jsonl", [{"docno": "d1", "text": "alpha"}, {"docno": "d2", "text": "beta", "title": "B"}])
    questions_path = write_jsonl(tmp_path / "q.jsonl", [{"qid": "1", "question": "alpha?", "answers": ["alpha"], "relevant": ["d1"]}])
    corpus = load_corpus(str(corpus_path))
    assert corpus.count == 2
    assert corpus.texts(["d2", "zz"]) == ["beta", ""]
    questions = load_questions(str(questions_path))
    assert questions.topics.to_dict("records") == [{"qid": "1", "query": "alpha?"}]
    assert questions.qrels.to_dict("records") == [{"qid": "1", "docno": "d1", "label": 1}]
    assert questions.answers == {"1": ["alpha"]}


def test_local_trec_qrels_replace_relevant(tmp_path, write_jsonl):
    questions_path = write_jsonl(tmp_path / "q.jsonl", [{"qid": "1", "question": "x", "relevant": ["d1"]}])
    (tmp_path / "qrels.txt").write_text("1 0 d2 2\n")
    questions = load_questions({"questions": str(questions_path), "qrels": str(tmp_path / "qrels.txt")})
    assert questions.qrels.to_dict("records") == [{"qid": "1", "docno": "d2", "label": 2}]


def test_question_slice():
    dev = load_questions({"id": "irds:pyterrier-gdr/squad-dev/dev", "start": 10, "stop": 20})
    assert len(dev) == 10
    assert set(dev.qrels["qid"]) <= set(dev.topics["qid"])


def test_bad_local_records(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "d1", "body": "x"}])
    with pytest.raises(ValueError, match="needs 'docno' and 'text'"):
        list(load_corpus(str(path)))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_corpus(str(tmp_path / "missing.jsonl"))
