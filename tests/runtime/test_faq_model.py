"""The FAQ matcher: data validation, held-out accuracy, and what it answers for real paraphrases."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from scoring_runtime.flavours import Job, Scorer
from scoring_runtime.flavours.faq_pipeline import FEATURE_NAMES, PairFeatures
from scoring_runtime.registry import LocalFileRegistry
from tests.runtime.support import FAQ_EXAMPLE, train_module

DATA = FAQ_EXAMPLE / "data"


def test_sample_dataset_is_big_enough_and_consistent() -> None:
    t = train_module()
    originals, duplicates = t.load_dataset(DATA)
    assert len(originals) >= 35
    per = {o.id: sum(d.original_id == o.id for d in duplicates) for o in originals}
    assert min(per.values()) >= 5
    texts = {o.text for o in originals}
    assert not any(d.text in texts for d in duplicates)  # duplicates are paraphrases, not copies


def test_split_holds_out_duplicates_of_every_original() -> None:
    t = train_module()
    originals, duplicates = t.load_dataset(DATA)
    train, test = t.split(duplicates, 0.34, seed=7)
    assert len(train) + len(test) == len(duplicates)
    assert not {d.text for d in train} & {d.text for d in test}
    assert {d.original_id for d in test} == {o.id for o in originals}
    assert {d.original_id for d in train} == {o.id for o in originals}


def test_held_out_accuracy_is_well_above_chance(faq_model: tuple[Path, Path]) -> None:
    t = train_module()
    originals, duplicates = t.load_dataset(DATA)
    train, test = t.split(duplicates, 0.34, seed=7)
    metrics = t.evaluate(t.train(originals, train), originals, test)
    # chance is 1/40 top-1 and 3/40 top-3; paraphrases here share few words with their original
    assert metrics["top1_accuracy"] >= 0.45, metrics
    assert metrics["top3_accuracy"] >= 0.75, metrics
    assert metrics["mrr"] >= 0.6, metrics
    # the registered model carries these metrics in its manifest
    registry, _ = faq_model
    stored = LocalFileRegistry(registry).get_manifest("faq-matcher", 1).metrics
    assert stored["top1_accuracy"] == metrics["top1_accuracy"]
    assert stored["top3_accuracy"] == metrics["top3_accuracy"]
    assert stored["n_test"] == len(test) and stored["n_originals"] == len(originals)


def test_leave_one_out_keeps_training_features_honest() -> None:
    """A training question must not see itself inside its original's profile (else profile_cos = ~1)."""
    x = np.array([["reset password", "How do I reset my password?", "Use the link."],
                  ["reset password", "How do I delete my account?", "Close it."],
                  ["remove my profile", "How do I delete my account?", "Close it."],
                  ["remove my profile", "How do I reset my password?", "Use the link."]], dtype=object)
    y = np.array([1, 0, 1, 0])
    pf = PairFeatures()
    fitted = pf.fit_transform(x, y)
    scored = pf.transform(x)
    col = FEATURE_NAMES.index("profile_word_cos")
    assert scored[2, col] > fitted[2, col]  # at scoring time the profile includes the training question
    assert fitted[1, col] == pytest.approx(scored[1, col])  # negatives are unaffected


def test_paraphrases_not_in_the_data_find_their_faq(faq_scorer: Scorer) -> None:
    cases = {
        "I can't remember my console password, how do I reset it?": 101,
        "how do I turn on two-factor authentication": 102,
        "where can I download my invoices as PDF": 106,
        "my pod is in CrashLoopBackOff and restarts all the time": 123,
        "how to get a kubeconfig file for kubectl": 119,
    }
    for question, expected in cases.items():
        job = Job(rows=1, data=[question], params={"top_k": 3, "single": True})
        top3 = [m["id"] for m in faq_scorer.render_score(faq_scorer.predict([job])[0], job)["matches"]]
        assert expected in top3, (question, top3)
        assert top3[0] == expected, (question, top3)


def test_scoring_one_question_takes_milliseconds(faq_scorer: Scorer) -> None:
    job = Job(rows=1, data=["how do I resize my VM"], params={"top_k": 3})
    faq_scorer.predict([job])
    best = min(_timed(faq_scorer, job) for _ in range(5))
    assert best < 0.05, f"{best * 1000:.1f} ms for one question against 40 originals"


def _timed(scorer: Scorer, job: Job) -> float:
    t0 = time.perf_counter()
    for _ in range(10):
        scorer.predict([job])
    return (time.perf_counter() - t0) / 10


def test_bad_datasets_fail_with_file_and_line(tmp_path: Path) -> None:
    t = train_module()
    (tmp_path / "originals.jsonl").write_text(
        json.dumps({"id": 1, "text": "a?", "answer": "b"}) + "\n" + json.dumps({"id": 2, "text": "c?", "answer": "d"})
        + "\n", encoding="utf-8")
    (tmp_path / "duplicates.jsonl").write_text(json.dumps({"text": "x", "original_id": 9}) + "\n", encoding="utf-8")
    with pytest.raises(t.DataError, match=r"duplicates.jsonl:1: original_id 9 is not an id"):
        t.load_dataset(tmp_path)
    (tmp_path / "duplicates.jsonl").write_text("{broken\n", encoding="utf-8")
    with pytest.raises(t.DataError, match=r"duplicates.jsonl:1: not valid JSON"):
        t.load_dataset(tmp_path)
    (tmp_path / "duplicates.jsonl").unlink()
    (tmp_path / "duplicates.tsv").write_text("text\toriginal_id\nsome question\t2\n", encoding="utf-8")
    originals, duplicates = t.load_dataset(tmp_path)
    assert duplicates[0].original_id == 2 and len(originals) == 2


def test_train_cli_reports_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = train_module()
    assert t.main(["--registry", str(tmp_path / "r"), "--data", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "originals.jsonl" in err
