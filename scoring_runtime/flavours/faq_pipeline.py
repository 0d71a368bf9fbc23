"""The FAQ-matching model: a scikit-learn Pipeline over (question, original FAQ question) pairs.

`PairFeatures` turns each pair into a few similarity features, and a logistic regression turns
those into P(question duplicates original). Features per pair:

- cosine similarity of word (1-2 gram) and character (2-5 gram) TF-IDF vectors;
- cosine similarity to the original's *profile*: the original plus the training questions known
  to duplicate it, in both spaces. This is how the model learns paraphrase vocabulary ("remove
  my profile" ~ "delete my account") from labelled duplicates. In `fit_transform` a training
  question is left out of its own original's profile (leave-one-out), so the classifier is fitted
  on the same kind of feature it sees at scoring time, not on an optimistic one;
- Jaccard overlap of the word sets.

The class lives in the runtime package because skops rebuilds it by import path when loading.
Scoring one question against every original takes a millisecond or so: call `cache_texts`
with the originals once after loading and only the question is vectorised per request.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer, strip_accents_unicode
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")
FEATURE_NAMES = (
    "word_cos", "char_cos", "profile_word_cos", "profile_char_cos", "answer_word_cos", "answer_char_cos",
    "word_jaccard",
)


def _as_pairs(X: Any) -> np.ndarray[Any, Any]:
    arr = np.asarray(X, dtype=object)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(
            f"expected rows of (question, original question, original answer), shape (n, 3); got shape {arr.shape}"
        )
    return arr


def _words(text: str) -> list[str]:
    return _TOKEN_RE.findall(strip_accents_unicode(text.lower()))


def _row_norms(m: sparse.csr_matrix) -> np.ndarray[Any, Any]:
    return np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())


class PairFeatures(TransformerMixin, BaseEstimator):
    """(question, original) pairs -> the similarity features listed in `FEATURE_NAMES`."""

    def __init__(
        self,
        word_ngram_range: tuple[int, int] = (1, 2),
        char_ngram_range: tuple[int, int] = (2, 5),
        sublinear_tf: bool = True,
    ) -> None:
        self.word_ngram_range = word_ngram_range
        self.char_ngram_range = char_ngram_range
        self.sublinear_tf = sublinear_tf

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None) -> Self:
        self._fit(_as_pairs(X), y)
        return self

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray[Any, Any]:
        pairs = _as_pairs(X)
        self._fit(pairs, y)
        return self._features(pairs, leave_out=None if y is None else np.asarray(y) == 1)

    def _fit(self, pairs: np.ndarray[Any, Any], y: Any) -> None:
        texts = sorted({str(t) for t in pairs.ravel()})
        common = {"sublinear_tf": self.sublinear_tf, "strip_accents": "unicode", "dtype": np.float64}
        self.word_ = TfidfVectorizer(analyzer="word", ngram_range=self.word_ngram_range, **common).fit(texts)
        self.char_ = TfidfVectorizer(analyzer="char_wb", ngram_range=self.char_ngram_range, **common).fit(texts)
        # Profiles: each original plus its known duplicates (positive pairs), as sums of unit vectors.
        originals = sorted({str(o) for o in pairs[:, 1]})
        self.profile_index_ = {o: i for i, o in enumerate(originals)}
        members: list[set[str]] = [{o} for o in originals]
        if y is not None:
            for (q, o, _), label in zip(pairs, np.asarray(y), strict=True):
                if label == 1:
                    members[self.profile_index_[str(o)]].add(str(q))
        rows = [t for m in members for t in sorted(m)]
        owner = np.repeat(np.arange(len(members)), [len(m) for m in members])
        agg = sparse.csr_matrix((np.ones(len(rows)), (owner, np.arange(len(rows)))), shape=(len(members), len(rows)))
        self.profile_word_ = sparse.csr_matrix(agg @ self.word_.transform(rows))
        self.profile_char_ = sparse.csr_matrix(agg @ self.char_.transform(rows))
        self.n_features_in_ = 2

    # ------------------------------------------------------------------ scoring
    def cache_texts(self, texts: list[str]) -> None:
        """Pre-vectorise texts seen in every request (the originals); the cache is never saved."""
        check_is_fitted(self, "word_")
        self._cache = {"index": {t: i for i, t in enumerate(texts)}, "side": self._side(texts)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_cache", None)
        return state

    def transform(self, X: Any) -> np.ndarray[Any, Any]:
        check_is_fitted(self, "word_")
        return self._features(_as_pairs(X), leave_out=None)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray[Any, Any]:
        return np.asarray(FEATURE_NAMES, dtype=object)

    def _side(self, texts: list[str], profiles: bool = True) -> _Side:
        """Vectors, profiles and token sets of texts (a profile is the text itself if unseen in training).

        Matrices are stored transposed (vocabulary x texts), ready to be multiplied with questions.
        """
        word = sparse.csr_matrix(self.word_.transform(texts))
        char = sparse.csr_matrix(self.char_.transform(texts))
        tokens = [frozenset(_words(t)) for t in texts]
        if not profiles:
            return _Side(word.T.tocsr(), char.T.tocsr(), None, None, np.zeros(0), np.zeros(0), tokens)
        pidx = [self.profile_index_.get(t, -1) for t in texts]
        if all(p >= 0 for p in pidx):
            pword, pchar = self.profile_word_[pidx], self.profile_char_[pidx]
        else:
            pword = sparse.vstack([self.profile_word_[p] if p >= 0 else word[i] for i, p in enumerate(pidx)])
            pchar = sparse.vstack([self.profile_char_[p] if p >= 0 else char[i] for i, p in enumerate(pidx)])
        pword, pchar = sparse.csr_matrix(pword), sparse.csr_matrix(pchar)
        return _Side(word.T.tocsr(), char.T.tocsr(), pword.T.tocsr(), pchar.T.tocsr(),
                     _row_norms(pword) ** 2, _row_norms(pchar) ** 2, tokens)

    def _index(self, column: np.ndarray[Any, Any]) -> tuple[_Side, np.ndarray[Any, Any]]:
        """The vectors of a column's texts and each row's index into them (cached texts cost nothing)."""
        cache = getattr(self, "_cache", None)
        if cache is not None:
            index = cache["index"]
            with contextlib.suppress(KeyError):
                return cache["side"], np.fromiter((index[t] for t in column), dtype=np.intp, count=len(column))
        uniq, inv = np.unique(column, return_inverse=True)
        return self._side(list(uniq)), inv

    def _features(self, pairs: np.ndarray[Any, Any], leave_out: np.ndarray[Any, Any] | None) -> np.ndarray[Any, Any]:
        q_text, o_text = pairs[:, 0].astype(str), pairs[:, 1].astype(str)
        qs, qi = np.unique(q_text, return_inverse=True)
        q = self._side(list(qs), profiles=False)
        o, oi = self._index(o_text)
        a, ai = self._index(pairs[:, 2].astype(str))
        qw, qc = q.word.T.tocsr(), q.char.T.tocsr()
        answer_word = (qw @ a.word).toarray()[qi, ai]
        answer_char = (qc @ a.char).toarray()[qi, ai]
        word = (qw @ o.word).toarray()[qi, oi]
        char = (qc @ o.char).toarray()[qi, oi]
        pw_dot = (qw @ o.pword).toarray()[qi, oi]
        pc_dot = (qc @ o.pchar).toarray()[qi, oi]
        pw_sq, pc_sq = o.pword_sq[oi], o.pchar_sq[oi]
        if leave_out is not None:
            # A training duplicate sits inside its own original's profile s; take it out again:
            # with |q| = 1, q.(s - q) = q.s - 1 and |s - q|^2 = |s|^2 - 2 q.s + 1.
            out = leave_out & (q_text != o_text)
            pw_sq = np.where(out, pw_sq - 2.0 * pw_dot + 1.0, pw_sq)
            pc_sq = np.where(out, pc_sq - 2.0 * pc_dot + 1.0, pc_sq)
            pw_dot = np.where(out, pw_dot - 1.0, pw_dot)
            pc_dot = np.where(out, pc_dot - 1.0, pc_dot)
        pword = np.where(pw_sq > 1e-9, pw_dot / np.sqrt(np.maximum(pw_sq, 1e-9)), 0.0)
        pchar = np.where(pc_sq > 1e-9, pc_dot / np.sqrt(np.maximum(pc_sq, 1e-9)), 0.0)
        qt, ot = q.tokens, o.tokens
        jac = np.fromiter(
            (len(qt[i] & ot[j]) / max(1, len(qt[i] | ot[j])) for i, j in zip(qi, oi, strict=True)),
            dtype=np.float64,
            count=len(pairs),
        )
        return np.column_stack([word, char, pword, pchar, answer_word, answer_char, jac])


@dataclass(frozen=True, slots=True)
class _Side:
    """Per-text vectors of one side of the pairs, transposed: (vocabulary, texts)."""

    word: Any
    char: Any
    pword: Any
    pchar: Any
    pword_sq: np.ndarray[Any, Any]
    pchar_sq: np.ndarray[Any, Any]
    tokens: list[frozenset[str]]



def build_pipeline(C: float = 1.0) -> Pipeline:
    """The untrained FAQ matcher: pair features -> scaling -> logistic regression."""
    return Pipeline(
        [
            ("pairs", PairFeatures()),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=C, max_iter=1000)),
        ]
    )
