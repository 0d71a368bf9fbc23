"""The FAQ matcher: data validation, honest cross-validation, no-match, awkward data, what it answers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette

from scoring_runtime.flavours import Job, Scorer, load_scorer
from scoring_runtime.flavours.faq_pipeline import FEATURE_NAMES, Counts, Index
from scoring_runtime.flavours.faq_training import CONFIGS, FAQData, assign_folds, fit_matcher, text_key
from scoring_runtime.registry import LocalFileRegistry
from tests.runtime.support import FAQ_EXAMPLE, serving, settings, train_module, v2_questions

DATA = FAQ_EXAMPLE / "data"
UNRELATED = ["Quelle heure est-il à Paris ?", "SELECT * FROM users WHERE id = 1;", "recipe for chocolate cake"]


def test_sample_dataset_is_big_enough_and_consistent() -> None:
    t = train_module()
    originals, duplicates = t.load_dataset(DATA)
    assert len(originals) >= 35
    per = {o.id: sum(d.original_id == o.id for d in duplicates) for o in originals}
    assert min(per.values()) >= 5
    texts = {o.text for o in originals}
    assert not any(d.text in texts for d in duplicates)  # duplicates are paraphrases, not copies


def test_folds_keep_equal_texts_together_and_spread_each_original() -> None:
    owner = np.repeat(np.arange(6), 5)
    questions = [f"question {i // 5} variant {i % 5}" for i in range(30)]
    questions[7] = "Question 1,  variant 0!"  # the same text as questions[5] up to case/punctuation/spacing
    fold = assign_folds(owner, questions, 5, seed=3)
    assert text_key(questions[7]) == text_key(questions[5]) and fold[7] == fold[5]
    for o in range(6):
        # 5 rephrasings (4 distinct texts for original 1) over 5 folds: never two groups in one fold
        groups = {text_key(q): f for q, f, w in zip(questions, fold, owner, strict=True) if w == o}
        assert len(set(groups.values())) == len(groups)


def test_training_report_is_cross_validated_and_beats_both_baselines(faq_model: tuple[Path, Path]) -> None:
    registry, _ = faq_model
    manifest = LocalFileRegistry(registry).get_manifest("faq-matcher", 1)
    m = manifest.metrics
    # every rephrasing was held out once, in 5 folds; model and baselines ranked the same questions
    assert m["cv_folds"] == 5 and m["cv_questions"] == m["n_duplicates"] == 240 and m["n_originals"] == 40
    assert m["cv_top1_model"] > m["cv_top1_char_profile"] > m["cv_top1_word_original"]
    assert m["cv_mrr_model"] > m["cv_mrr_char_profile"]
    assert m["cv_top3_model"] >= 0.75  # chance is 3/40
    # the registered model knows ALL the rephrasings: each original's row range holds it plus all of its own
    model = load_scorer(settings(faq_model[1])).model  # type: ignore[attr-defined]
    assert int(model.known_ptr_[-1]) == 40 + 240
    assert 0.0 < m["no_match_threshold"] < 1.0 == manifest.flavour["calibrated"]
    assert manifest.flavour["no_match_threshold"] == m["no_match_threshold"]


def test_leave_one_out_keeps_training_features_honest() -> None:
    """A training question must not see itself in its original's profile or nearest-neighbour set."""
    texts, answers = ["How do I reset my password?", "How do I delete my account?"], ["Use the link.", "Close it."]
    questions = ["forgotten login secret, need another", "remove my profile for good"]
    owner = np.array([0, 1])
    ix = Index.build(Counts.of(texts), Counts.of(answers, char=False), Counts.of(questions), owner)
    q = Counts.of(questions)
    fitted = ix.candidates(q, 5, own=owner, own_row=ix.question_row)
    scored = ix.candidates(q, 5)
    nn = FEATURE_NAMES.index("nn_char_cos")
    prof = FEATURE_NAMES.index("profile_word_cos")
    for c in (fitted, scored):
        assert list(c.original[c.query == 0]) == [0, 1]
    assert scored.features[0, nn] == pytest.approx(1.0)  # at scoring time the question is a known text
    assert fitted.features[0, nn] < 0.5  # while training, it is left out: only the original remains
    assert fitted.features[0, prof] < scored.features[0, prof]
    assert fitted.features[1, prof] == pytest.approx(scored.features[1, prof])  # other originals unaffected


def test_paraphrases_not_in_the_data_find_their_faq(faq_scorer: Scorer) -> None:
    cases = {
        "I can't remember my console password, how do I reset it?": 101,
        "how do I turn on two-factor authentication": 102,
        "where can I download my invoices as PDF": 106,
        "my pod is in CrashLoopBackOff and restarts all the time": 123,
        "how to get a kubeconfig file for kubectl": 119,
    }
    for question, expected in cases.items():
        job = Job(rows=1, data=[question], params={"top_k": 3, "single": True, "min_score": 0.0})
        answer = faq_scorer.render_score(faq_scorer.predict([job])[0], job)
        top3 = [m["id"] for m in answer["matches"]]
        assert top3[0] == expected, (question, top3)
        assert answer["matches"][0]["score"] > answer["matches"][1]["score"]


def test_unrelated_questions_get_an_explicit_no_match(faq_scorer: Scorer) -> None:
    for question in UNRELATED:
        job = faq_scorer.parse_score(json.dumps({"question": question}).encode(), "application/json")
        assert faq_scorer.render_score(faq_scorer.predict([job])[0], job) == {
            "question": question, "matches": [], "no_match": True}, question
    # the same questions with min_score 0 do get their (poor) top 3, all scored below the threshold
    job = faq_scorer.parse_score(json.dumps({"questions": UNRELATED, "min_score": 0}).encode(), "application/json")
    for r in faq_scorer.render_score(faq_scorer.predict([job])[0], job)["results"]:
        assert len(r["matches"]) == 3 and r["no_match"] is False
        assert max(m["score"] for m in r["matches"]) < faq_scorer.default_min_score  # type: ignore[attr-defined]


async def test_no_match_and_min_score_over_http(faq_app: Callable[..., Starlette]) -> None:
    known = "I forgot my console password, how can I get a new one?"
    async with serving(faq_app()) as c:
        r = await c.post("/score", json={"questions": [known, UNRELATED[0]]})
        assert r.status_code == 200
        first, second = r.json()["results"]
        assert first["matches"][0]["id"] == 101 and first["no_match"] is False
        assert second == {"question": UNRELATED[0], "matches": [], "no_match": True}
        # a min_score above every score: nothing clears it, said explicitly
        r = await c.post("/score", json={"question": known, "min_score": 1})
        assert r.json() == {"question": known, "matches": [], "no_match": True}
        v2 = await c.post("/v2/models/faq-matcher/infer", json=v2_questions(known, UNRELATED[0], top_k=2))
        assert v2.status_code == 200, v2.text
        out = {t["name"]: t for t in v2.json()["outputs"]}
        assert out["no_match"] == {"name": "no_match", "datatype": "BOOL", "shape": [2], "data": [False, True]}
        assert out["id"]["shape"] == [2, 2] and out["id"]["data"][0] == "101" and out["id"]["data"][2:] == ["", ""]
        assert out["score"]["data"][2:] == [0.0, 0.0]
        v2 = await c.post("/v2/models/faq-matcher/infer", json=v2_questions(UNRELATED[0], top_k=1, min_score=0.0))
        out = {t["name"]: t for t in v2.json()["outputs"]}
        assert out["no_match"]["data"] == [False] and out["id"]["data"][0] != ""


@pytest.mark.parametrize("bad", [-0.1, 1.5, "high", True, [0.5], {"v": 1}, "nan"])
async def test_min_score_must_be_a_probability(faq_app: Callable[..., Starlette], bad: Any) -> None:
    async with serving(faq_app()) as c:
        r = await c.post("/score", json={"question": "reset my password", "min_score": bad})
        assert r.status_code == 400 and "min_score must be a number from 0 to 1" in r.json()["error"], r.text
        v2 = await c.post("/v2/models/faq-matcher/infer", json=v2_questions("reset my password", min_score=bad))
        assert v2.status_code == 400 and "min_score must be a number from 0 to 1" in v2.json()["error"], v2.text
        body = v2_questions("reset my password")
        body["inputs"][0]["parameters"] = {"min_score": bad}
        v2 = await c.post("/v2/models/faq-matcher/infer", json=body)
        assert v2.status_code == 400 and "min_score" in v2.json()["error"]


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


# ---------------------------------------------------------------------- awkward training data
def _synthetic(n_originals: int, per: int, seed: int = 0, answer_words: int = 12) -> FAQData:
    """Originals about distinct topics; rephrasings reuse topic words with fillers (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(4000)]
    fillers = ["how", "do", "i", "can", "please", "help", "with", "my", "the", "a", "what", "is", "way", "to"]
    texts, answers, questions, owner = [], [], [], []
    for o in range(n_originals):
        topic = list(rng.choice(vocab, 6, replace=False))
        texts.append(" ".join(["how", "do", "i", *topic[:3]]) + "?")
        answers.append(" ".join(rng.choice(vocab, answer_words)))
        for _ in range(per):
            words = list(rng.choice(topic, 3, replace=False)) + list(rng.choice(fillers, 3))
            rng.shuffle(words)
            questions.append(" ".join(words))
            owner.append(o)
    return FAQData(texts, answers, questions, np.array(owner))


def _top1(model: Any, question: str) -> tuple[int, float]:
    top, scores = model.rank([question], 3)
    return int(top[0, 0]), float(scores[0, 0])


def test_an_original_without_rephrasings_duplicated_texts_and_long_answers() -> None:
    data = _synthetic(30, 4, answer_words=3000)  # answers of ~20,000 characters
    # original 0 has no rephrasings at all; original 1's rephrasings are one text three times plus a copy of
    # another original's rephrasing (a conflicting label); two originals share their text
    keep = data.owner != 0
    data.questions = [q for q, k in zip(data.questions, keep, strict=True) if k]
    data.owner = data.owner[keep]
    ones = np.nonzero(data.owner == 1)[0]
    for i in ones[1:]:
        data.questions[i] = data.questions[ones[0]].upper()
    data.questions.append(data.questions[-1])
    data.owner = np.append(data.owner, 1)
    data.texts[3] = data.texts[2]
    model, report = fit_matcher(data, folds=5, seed=1)
    assert report.supervised and report.folds == 5 and report.threshold is not None
    assert report.metrics["model"]["top1"] >= 0.5
    best, score = _top1(model, data.texts[0])  # asked verbatim, the un-rephrased original wins
    assert best == 0 and score >= report.threshold
    assert _top1(model, data.texts[2])[0] in (2, 3)


def test_tiny_data_falls_back_to_the_unsupervised_scorer_and_says_so(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    originals: list[dict[str, Any]] = [{"id": i, "text": t, "answer": a} for i, (t, a) in enumerate(
        [("How do I reset my password?", "Use the link."), ("How do I delete my account?", "Close it."),
         ("Why was my card declined?", "Ask your bank.")])]
    dups = [{"text": "forgot my password", "original_id": 0}, {"text": "remove my account", "original_id": 1},
            {"text": "card payment refused", "original_id": 2}]
    (tmp_path / "originals.jsonl").write_text("".join(json.dumps(o) + "\n" for o in originals), encoding="utf-8")
    (tmp_path / "duplicates.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dups), encoding="utf-8")
    t = train_module()
    assert t.main(["--registry", str(tmp_path / "reg"), "--data", str(tmp_path), "--keep", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "no reranker: 3 labelled rephrasings" in err and "baseline: char TF-IDF vs profile" in err
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    assert manifest["flavour"]["calibrated"] is False and manifest["flavour"]["no_match_threshold"] is None
    LocalFileRegistry(tmp_path / "reg").fetch("faq-matcher", 1, tmp_path / "served")
    scorer = load_scorer(settings(tmp_path / "served"))
    job = scorer.parse_score(b'{"question": "I forgot my password"}', "application/json")
    answer = scorer.render_score(scorer.predict([job])[0], job)
    assert answer["matches"][0]["id"] == 0 and len(answer["matches"]) == 3  # no threshold: min_score 0
    # no labelled rephrasings at all: still a working (unsupervised) matcher
    model, report = fit_matcher(FAQData([o["text"] for o in originals], [o["answer"] for o in originals], [],
                                        np.zeros(0, dtype=np.int64)))
    assert report.folds == 0 and not report.supervised and model.threshold is None
    assert _top1(model, "I forgot my password")[0] == 0


def _families(n_families: int, per_family: int, per: int, seed: int) -> FAQData:
    """Entries in families sharing most words; each rephrasing has one of its entry's own words (which
    its answer also uses) among family words and fillers: siblings' profiles look alike."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(5000)]
    fillers = ["how", "do", "i", "can", "please", "help", "with", "my", "the", "a", "what", "is", "way", "to"]
    texts, answers, questions, owner = [], [], [], []
    for _ in range(n_families):
        family = list(rng.choice(vocab, 4, replace=False))
        for _ in range(per_family):
            own = list(rng.choice(vocab, 4, replace=False))
            texts.append(" ".join(["how", "do", "i", *family[:2], own[0]]) + "?")
            answers.append(" ".join([*own, *rng.choice(vocab, 20)]))
            for _ in range(per):
                words = [*rng.choice(own, 1), *rng.choice(family, 2, replace=False), *rng.choice(fillers, 3)]
                rng.shuffle(words)
                questions.append(" ".join(words))
                owner.append(len(texts) - 1)
    return FAQData(texts, answers, questions, np.array(owner))


def test_the_reranker_beats_the_char_profile_baseline_on_held_out_synthetic_data() -> None:
    # Siblings' profiles are alike, so the profile cosine confuses them; the entry's own word in the
    # answer and in single known rephrasings (nearest neighbour) tells them apart. Measured out of fold.
    _, report = fit_matcher(_families(15, 4, 6, seed=1), folds=4, seed=2)
    base = report.metrics["char_profile"]
    # the learned rerankers themselves (the model could also fall back to the baseline's own cosine)
    best = max(report.configs[name]["mrr"] for name in CONFIGS)
    assert best > base["mrr"] and report.final_config in CONFIGS, (report.configs, base)


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


def test_a_model_and_faq_file_that_do_not_belong_together_are_refused(tmp_path: Path, faq_dir: Path) -> None:
    import shutil

    d = tmp_path / "faq"
    shutil.copytree(faq_dir, d)
    entries = json.loads((d / "faq.json").read_text())
    (d / "faq.json").write_text(json.dumps(entries[:-1]))
    from scoring_runtime.flavours import ModelLoadError

    with pytest.raises(ModelLoadError, match="trained on 40 FAQ entries but the FAQ file has 39"):
        load_scorer(settings(d))


def test_texts_are_hashed_exactly_as_scikit_learns_hashing_vectorizers() -> None:
    """The scoring path hashes with its own loop (sklearn's preprocessing + murmurhash3, character n-grams per
    distinct word, cached): the counts must be exactly those of HashingVectorizer on the whole texts, whatever
    the spacing, case, accents and compatibility characters (ᴬ, ﬁ, Ⅻ: lowercased before their accents are
    stripped, as scikit-learn does), for long texts too, with the word cache cold, warm or too small."""
    import random

    from scoring_runtime.flavours.faq_pipeline import TextHasher, hashers

    rng = random.Random(5)
    alphabet = "abcdefgh ÀÉΣσς\u0301  \t\nİ.,-'ßᴬﬁⅫ\u00a0\u2003\x1c\U0001f600"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 3000))) for _ in range(20)]
    texts += ["x" * 1500, "ab " * 500, " ", "ΑΣ ΑΣ " * 500, "short one", "?!", "", "a", "ab", "abc", "abcd",
              "How can I set a new login password if I forgot the old one?"]
    for bits in (18, 20):
        hw, hc = hashers(bits)
        for mine in (TextHasher(bits), TextHasher(bits, cache_words=4)):
            for _ in range(2):  # cold, then warm cache
                for ours, theirs in ((mine.word(texts), hw.transform(texts)), (mine.char(texts), hc.transform(texts))):
                    whole = theirs.tocsr()
                    whole.sort_indices()
                    assert np.array_equal(ours.indptr, whole.indptr)
                    assert np.array_equal(ours.indices, whole.indices)
                    assert np.array_equal(ours.data, whole.data.astype(np.float32))
        # one text at a time gives the same row as in a batch
        one, batch = mine.char(texts[-1:]), mine.char(texts).slice(len(texts) - 1, len(texts))
        assert np.array_equal(one.indices, batch.indices) and np.array_equal(one.data, batch.data)
    assert TextHasher().char([]).n_rows == 0 and TextHasher().word([]).n_rows == 0
