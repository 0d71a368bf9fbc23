"""The FAQ matcher's scoring kernels: each fast path gives the answers of the plain scipy / scikit-learn one.

Serving works on plain arrays (gathered posting lists and one bincount instead of scipy's sparse
products, a direct logistic-regression formula instead of predict_proba): the rankings must be the
same (identical top-k ids, scores equal to float tolerance) as with every fast path switched off, for a
model trained here, one question at a time and in batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import sparse
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from scoring_runtime.flavours import faq_pipeline as fp
from scoring_runtime.flavours import load_scorer
from scoring_runtime.flavours.faq_pipeline import FAQMatcher, Rows, linear_reranker
from tests.runtime.support import FAQ_EXAMPLE, settings

UNRELATED = ["Quelle heure est-il à Paris ?", "SELECT * FROM users WHERE id = 1;", "recipe for chocolate cake", "x",
             "?!", "ÀÉΣσς naïve café " * 60, "how " * 900, "a b c d e f g"]


def _questions() -> list[str]:
    data = FAQ_EXAMPLE / "data"
    texts = [json.loads(line)["text"] for f in ("duplicates.jsonl", "originals.jsonl")
             for line in (data / f).read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts + UNRELATED


@pytest.fixture
def matcher(faq_dir: Path) -> FAQMatcher:
    """A private copy (tests switch its fast paths off)."""
    model: FAQMatcher = load_scorer(settings(faq_dir)).model  # type: ignore[attr-defined]
    return model


def _random_rows(rng: np.random.Generator, n_rows: int, n_cols: int, nnz: int, empty: tuple[int, ...] = ()) -> Rows:
    m = sparse.random(n_rows, n_cols, density=nnz / (n_rows * n_cols), format="csr", dtype=np.float32,
                      random_state=np.random.RandomState(int(rng.integers(1 << 30))))
    for r in empty:
        m.data[m.indptr[r]:m.indptr[r + 1]] = 0
    m.eliminate_zeros()
    m.sort_indices()
    return Rows.of(m)


@pytest.mark.parametrize("n_rows", [1, 5])
def test_gathered_products_equal_scipys(n_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(n_rows)
    m_t = sparse.random(2000, 37, density=0.05, format="csr", dtype=np.float32, random_state=1)
    q = _random_rows(rng, n_rows, 2000, 60 * n_rows, empty=(0,) if n_rows > 1 else ())
    want = (q.csr(2000) @ m_t).toarray()
    got = fp._scores(q, m_t)
    assert got.shape == (n_rows, 37) and got.dtype == np.float32 and np.abs(want).sum() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(fp, "GATHER_MAX", 0)  # big batches go to scipy: the same numbers
    np.testing.assert_allclose(fp._scores(q, m_t), want, rtol=1e-5, atol=1e-6)


def test_pair_dots_of_gathered_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    known = _random_rows(rng, 300, 5000, 300 * 40, empty=(3, 4)).csr(5000)
    q = _random_rows(rng, 4, 5000, 4 * 80, empty=(2,))
    qrow = rng.integers(0, 4, 500)
    krow = rng.integers(0, 300, 500)
    want = np.asarray(q.csr(5000)[qrow].multiply(known[krow]).sum(axis=1)).ravel()
    assert (want > 0).sum() > 50
    np.testing.assert_allclose(fp._sparse_dots(q, qrow, known, krow), want, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(fp, "NEAREST_NNZ", 200)  # a few pairs at a time
    np.testing.assert_allclose(fp._sparse_dots(q, qrow, known, krow), want, rtol=1e-5, atol=1e-7)


def test_the_linear_reranker_formula_is_predict_proba() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, fp.N_FEATURES)) * rng.uniform(0.1, 10, fp.N_FEATURES)
    x[:, 5] = 1.0  # a constant feature: the scaler's scale is 1 there
    y = (x[:, 0] + rng.normal(size=400) > 0).astype(int)
    feats = rng.normal(size=(50, fp.N_FEATURES)) * 3
    models: list[Any] = [Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.1))]),
                         LogisticRegression(C=1.0),
                         Pipeline([("scale", StandardScaler(with_mean=False)), ("clf", LogisticRegression())])]
    for model in models:
        model.fit(x, y)
        assert linear_reranker(model) is not None
        m = FAQMatcher()
        m.reranker_ = model
        m._linear = linear_reranker(model)
        np.testing.assert_allclose(m.raw_scores(feats), model.predict_proba(feats)[:, 1], rtol=1e-12, atol=1e-15)
    # anything else is scored by its own predict_proba
    hgb = HistGradientBoostingClassifier(max_iter=5).fit(x, y)
    three = LogisticRegression().fit(x, np.arange(400) % 3)
    two_scalers = Pipeline([("a", StandardScaler()), ("b", StandardScaler()), ("c", LogisticRegression())])
    for other in (hgb, three, two_scalers):
        assert linear_reranker(other) is None


def _rank_each(model: FAQMatcher, questions: list[str], k: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    ranked = [model.rank([q], k) for q in questions]
    return np.vstack([t for t, _ in ranked]), np.vstack([s for _, s in ranked])


@pytest.mark.parametrize("k", [3, 10])
def test_rankings_with_and_without_the_fast_paths_are_the_same(matcher: FAQMatcher, k: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    questions = _questions()
    fast_one, fast_one_s = _rank_each(matcher, questions, k)
    fast_batch, fast_batch_s = matcher.rank(questions, k)
    # every fast path off: scipy's sparse products, the known-row lookups, scikit-learn's predict_proba
    index = matcher.prepare()
    assert matcher._linear is not None and index.known_in_products  # the fast paths were on
    monkeypatch.setattr(fp, "GATHER_MAX", -1)
    monkeypatch.setattr(index, "known_in_products", False)
    monkeypatch.setattr(matcher, "_linear", None)
    slow_one, slow_one_s = _rank_each(matcher, questions, k)
    slow_batch, slow_batch_s = matcher.rank(questions, k)
    for top, scores in ((fast_one, fast_one_s), (fast_batch, fast_batch_s), (slow_batch, slow_batch_s)):
        assert np.array_equal(top, slow_one)
        np.testing.assert_allclose(scores, slow_one_s, rtol=0, atol=2e-6)
    assert len(np.unique(slow_one[:, 0])) > 30  # not one answer for everything: the rankings say something


def test_tfidf_rows_are_unit_length_whatever_rows_follow_them() -> None:
    """A row's norm must not depend on its neighbours: empty rows (a question without a single word token,
    like "?!", batched after it) once cut the row before them short by its last term."""
    counts = sparse.csr_matrix(np.array([[2, 0, 1, 0], [0, 0, 0, 0], [1, 3, 0, 5], [0, 0, 0, 0], [0, 0, 0, 0]],
                                        dtype=np.float32))
    idf = np.array([1.0, 2.0, 1.5, 3.0], dtype=np.float32)
    out = fp.tfidf(counts, idf)
    np.testing.assert_allclose(np.sqrt(np.asarray(out.multiply(out).sum(axis=1)).ravel()), [1, 0, 1, 0, 0], rtol=1e-6)
    alone = fp.tfidf(sparse.csr_matrix(counts[2]), idf)
    np.testing.assert_allclose(out[2].toarray(), alone.toarray(), rtol=1e-6)
