import pandas as pd
import pyterrier as pt

from pyterrier_gdr.measures import AnswerMeasures, exact_match, has_answer, normalize_answer, token_f1


def test_normalize_answer():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"


def test_has_answer_whole_tokens():
    assert has_answer("The Denver Broncos won.", ["denver broncos"])
    assert not has_answer("Denverite broncos", ["denver"])
    assert not has_answer("anything", [""])


def test_exact_match_and_f1():
    assert exact_match("the Broncos", ["Broncos"]) == 1.0
    assert exact_match("Broncos won", ["Broncos"]) == 0.0
    assert abs(token_f1("Denver Broncos team", ["Denver Broncos"]) - 0.8) < 1e-9
    assert token_f1("", ["x"]) == 0.0


def test_answer_accuracy_in_experiment():
    texts = {"d1": "The cat sat on the mat", "d2": "Dogs bark", "d3": "A cat again"}
    measures = AnswerMeasures({"q1": ["cat"], "q2": ["bark"]}, passage_text=lambda docnos: [texts[d] for d in docnos])
    topics = pd.DataFrame({"qid": ["q1", "q2"], "query": ["a", "b"]})
    qrels = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d2"], "label": [1, 1]})
    run = pd.DataFrame({"qid": ["q1", "q1", "q2", "q2"], "docno": ["d2", "d1", "d1", "d3"], "score": [2.0, 1.0, 2.0, 1.0]})
    table = pt.Experiment([run], topics, qrels, [measures.accuracy(1), measures.accuracy(2)], names=["run"])
    assert table["AnswerAcc@1"].iloc[0] == 0.0
    assert table["AnswerAcc@2"].iloc[0] == 0.5


def test_em_f1_in_experiment():
    measures = AnswerMeasures({"q1": ["cat"], "q2": ["bark loudly"]})
    topics = pd.DataFrame({"qid": ["q1", "q2"], "query": ["a", "b"]})
    qrels = pd.DataFrame({"qid": ["q1", "q2"], "docno": ["d1", "d2"], "label": [1, 1]})
    answers = pd.DataFrame({"qid": ["q1", "q2"], "qanswer": ["The cat", "bark"]})
    table = pt.Experiment([answers], topics, qrels, [measures.exact_match(), measures.f1()], names=["reader"])
    assert table["EM"].iloc[0] == 0.5
    assert abs(table["F1"].iloc[0] - (1.0 + 2 / 3) / 2) < 1e-9


def test_parse_names():
    measures = AnswerMeasures({}, passage_text=lambda d: [])
    assert str(measures.parse("AnswerAcc@5")) == "AnswerAcc@5"
    assert str(measures.parse("EM")) == "EM"
