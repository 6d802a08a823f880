"""QSTReader: the transformer contract, input errors, save and reload, and a pt.Experiment with EM/F1."""
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import pytest
import pyterrier.testing
import torch

from pyterrier_gdr.measures import AnswerMeasures, exact_match, token_f1
from pyterrier_gdr.reader import QSTConfig, QSTReader

from tiny_models import make_char_tokenizer, make_tiny_base

READER_SETTINGS = dict(num_passages=2, max_new_tokens=6, max_prompt_tokens=200, batch_size=3)


def _retrieved():
    return pd.DataFrame([
        {"qid": "q1", "query": "capital of France", "docno": "d1", "title": "France",
         "text": "Paris is the capital of France.", "score": 2.0, "rank": 0},
        {"qid": "q1", "query": "capital of France", "docno": "d5", "title": "Rivers",
         "text": "The Seine flows through Paris.", "score": 1.0, "rank": 1},
        {"qid": "q2", "query": "capital of Italy", "docno": "d3", "title": "Italy",
         "text": "Rome is the capital of Italy.", "score": 3.0, "rank": 0},
    ])


def _perturb(reader):
    """Move the side network away from its initial state, as training would."""
    with torch.no_grad():
        reader.model.side.alpha.fill_(0.5)
        for parameter in reader.model.side.upsample.parameters():
            parameter.mul_(20)
    return reader


@pytest.fixture
def qst_reader(tiny_base, tokenizer):
    return _perturb(QSTReader.from_base(tiny_base, tokenizer=tokenizer, qst=QSTConfig(r=4), **READER_SETTINGS))


class TestQSTReaderContract(pyterrier.testing.TransformerTestCase):
    @staticmethod
    def get_transformer():
        tokenizer = make_char_tokenizer()
        base = make_tiny_base("llama", len(tokenizer))
        return QSTReader.from_base(base, tokenizer=tokenizer, qst=QSTConfig(r=4), **READER_SETTINGS)

    @classmethod
    def setUpClass(cls):
        # pt.schematic links class names by downloading PyTerrier's objects.inv; an empty
        # inventory keeps the check offline.
        import pyterrier.documentation

        if pyterrier.documentation._cached_objects_inv is None:
            pyterrier.documentation._cached_objects_inv = {}
        super().setUpClass()


def test_reader_outputs_one_answer_per_query(qst_reader):
    result = qst_reader(_retrieved())
    assert list(result.columns) == ["qid", "query", "qanswer"]
    assert result["qid"].tolist() == ["q1", "q2"]
    assert result["query"].tolist() == ["capital of France", "capital of Italy"]
    assert all(isinstance(answer, str) for answer in result["qanswer"])


def test_reader_empty_input_gives_typed_empty_frame(qst_reader):
    result = qst_reader(_retrieved().iloc[:0])
    assert len(result) == 0
    assert list(result.columns) == ["qid", "query", "qanswer"]
    assert result["qanswer"].dtype == object


def test_reader_missing_text_column_raises(qst_reader):
    with pytest.raises(pta.validate.InputValidationError, match="'text' column"):
        qst_reader(_retrieved().drop(columns=["text"]))


def test_reader_uses_top_passages_by_rank(qst_reader):
    shuffled = _retrieved().iloc[[1, 2, 0]]
    queries = qst_reader._queries(shuffled)
    assert [qid for qid, _, _ in queries] == ["q1", "q2"]
    assert queries[0][2][0] == ("France", "Paris is the capital of France.")
    single = QSTReader(qst_reader.model, tokenizer=qst_reader.tokenizer, num_passages=1)
    assert len(single._queries(shuffled)[0][2]) == 1


def test_reader_answers_do_not_depend_on_batch_size(qst_reader):
    batched = qst_reader(_retrieved())
    one_by_one = QSTReader(qst_reader.model, tokenizer=qst_reader.tokenizer, **{**READER_SETTINGS, "batch_size": 1})
    assert one_by_one(_retrieved())["qanswer"].tolist() == batched["qanswer"].tolist()


def test_base_and_qst_readers_differ(qst_reader, tiny_base, tokenizer):
    base_reader = QSTReader.from_base(tiny_base, tokenizer=tokenizer, **READER_SETTINGS)
    assert base_reader.model.side is None
    assert base_reader(_retrieved())["qanswer"].tolist() != qst_reader(_retrieved())["qanswer"].tolist()


def test_reader_repr_names_base_and_side(qst_reader):
    assert repr(qst_reader).startswith("QSTReader('tiny-")
    assert "qst r=4 adapter" in repr(qst_reader)


def test_saved_reader_gives_identical_answers(qst_reader, tiny_base, tokenizer, tmp_path):
    qst_reader.save(tmp_path / "reader")
    loaded = QSTReader.from_pretrained(tmp_path / "reader", base=tiny_base, tokenizer=tokenizer)
    assert loaded.settings() == qst_reader.settings()
    assert loaded(_retrieved())["qanswer"].tolist() == qst_reader(_retrieved())["qanswer"].tolist()
    saved = qst_reader.model.side_state_dict()
    reloaded = loaded.model.side_state_dict()
    assert all(torch.equal(saved[name], reloaded[name]) for name in saved)


def test_saved_base_reader_reloads_without_side(tiny_base, tokenizer, tmp_path):
    QSTReader.from_base(tiny_base, tokenizer=tokenizer).save(tmp_path / "base-reader")
    loaded = QSTReader.from_pretrained(tmp_path / "base-reader", base=tiny_base, tokenizer=tokenizer)
    assert loaded.model.side is None
    assert not (tmp_path / "base-reader" / "side.safetensors").exists()


def test_save_refuses_to_overwrite(qst_reader, tmp_path):
    qst_reader.save(tmp_path / "reader")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        qst_reader.save(tmp_path / "reader")
    qst_reader.save(tmp_path / "reader", overwrite=True)


def test_loading_onto_another_base_raises(qst_reader, tokenizer, make_base, tmp_path):
    qst_reader.save(tmp_path / "reader")
    other = make_base("llama", len(tokenizer), seed=7)
    with pytest.raises(ValueError, match="trained on base 'tiny-"):
        QSTReader.from_pretrained(tmp_path / "reader", base=other, tokenizer=tokenizer)


def test_loading_onto_another_architecture_raises(tokenizer, make_base, tmp_path):
    llama = make_base("llama", len(tokenizer))
    QSTReader.from_base(llama, tokenizer=tokenizer, qst=QSTConfig(r=4)).save(tmp_path / "reader")
    gemma = make_base("gemma3", len(tokenizer))
    with pytest.raises(ValueError, match="model_type: saved 'llama', given 'gemma3_text'"):
        QSTReader.from_pretrained(tmp_path / "reader", base=gemma, tokenizer=tokenizer)


def test_loading_missing_reader_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved reader"):
        QSTReader.from_pretrained(tmp_path / "nothing")


def test_reader_settings_are_checked(qst_reader):
    with pytest.raises(ValueError, match="num_passages must be a positive integer"):
        QSTReader(qst_reader.model, tokenizer=qst_reader.tokenizer, num_passages=0)


def test_experiment_reports_em_and_f1(qst_reader, bm25, questions):
    answers = dict(zip(questions["qid"], questions["answers"]))
    measures = AnswerMeasures(answers)
    topics = questions[["qid", "query"]]
    qrels = pd.DataFrame({"qid": questions["qid"], "docno": ["d1", "d2", "d3", "d4"], "label": 1})
    base_reader = QSTReader.from_base(qst_reader.model.base, tokenizer=qst_reader.tokenizer, **READER_SETTINGS)

    table = pt.Experiment([bm25 >> base_reader, bm25 >> qst_reader], topics, qrels,
                          [measures.exact_match(), measures.f1()], names=["base", "qst"])

    assert table["name"].tolist() == ["base", "qst"]
    for reader, name in ((base_reader, "base"), (qst_reader, "qst")):
        run = (bm25 >> reader)(topics)
        expected_em = sum(exact_match(a, answers[q]) for q, a in zip(run["qid"], run["qanswer"])) / len(topics)
        expected_f1 = sum(token_f1(a, answers[q]) for q, a in zip(run["qid"], run["qanswer"])) / len(topics)
        row = table.set_index("name").loc[name]
        assert row["EM"] == pytest.approx(expected_em)
        assert row["F1"] == pytest.approx(expected_f1)
