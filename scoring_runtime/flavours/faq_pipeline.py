"""The FAQ-matching model: sparse retrieval of candidate originals, then a learned reranker.

Scoring a question is two stages, both on sparse matrices built once:

1. **Retrieval.** The question is hashed into word (1-2 gram) and character (3-5 gram, within word
   boundaries) TF-IDF vectors and multiplied with the matrices of every original: its *profile*
   (the original plus every known rephrasing of it, summed), the original question, the answer,
   and BM25 weights of "original question + answer". The best few originals of each retriever
   form the candidate set (a union; typically 20-40 of 10,000 originals).
2. **Reranking.** For each candidate a handful of similarities (`FEATURE_NAMES`) go into a
   classifier (logistic regression or histogram gradient boosting, chosen by cross-validation at
   training time) whose output, Platt-calibrated on out-of-fold data, is the probability that the
   candidate is the question's original. A threshold on it (chosen on held-out folds, see
   `faq_training`) says "no match".

Nothing per pair is ever a Python string: texts are hashed (no vocabulary to store or load) and
all features come from sparse products and row gathers. The class lives in the runtime package
because skops rebuilds it by import path when loading; call `prepare()` once after loading (the
flavour does) to derive the transposed matrices the products need.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

import numpy as np
from scipy import sparse
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import murmurhash3_32

Array = np.ndarray[Any, Any]

#: per (question, candidate) features the reranker sees, in column order
FEATURE_NAMES = (
    "orig_word_cos", "orig_char_cos", "profile_word_cos", "profile_char_cos", "answer_word_cos",
    "nn_word_cos", "nn_char_cos", "bm25", "idf_overlap",
    "profile_char_gap", "profile_word_gap", "nn_char_gap", "bm25_rel",
    "rank_profile_char", "rank_profile_word", "rank_bm25",
    "log_question_chars", "log_length_ratio",
)
N_FEATURES = len(FEATURE_NAMES)
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (3, 5)
HASH_BITS = 20
BM25_K1, BM25_B = 1.2, 0.75
_SPARSE = "csr_shape"
#: candidates taken from each retriever (their union is reranked)
CANDIDATES_PER_RETRIEVER = 10
#: distinct words whose hashed character n-grams are cached (~0.5 KB each with the word: ~15 MB when full)
WORD_CACHE = 2**15
#: known texts join the retrieval products (`Index`) when there are at most this many (a batch of 32
#: questions then sums into at most 4 MB per product) with at most KNOWN_T_MAX_NNZ nonzeros (the copy:
#: about 32 MB at most)
KNOWN_T_MAX_ROWS = 2**14
KNOWN_T_MAX_NNZ = 2**22


def hashers(bits: int = HASH_BITS) -> tuple[HashingVectorizer, HashingVectorizer]:
    """Stateless word and character hashers: nothing to fit, store or load."""
    common: dict[str, Any] = {"n_features": 2**bits, "alternate_sign": False, "norm": None,
                              "strip_accents": "unicode", "lowercase": True, "dtype": np.float32}
    return (HashingVectorizer(analyzer="word", ngram_range=WORD_NGRAMS, **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, **common))


class Rows(NamedTuple):
    """CSR rows as their three plain arrays (row `i` is `indices/data[indptr[i]:indptr[i + 1]]`, sorted).

    A batch of questions is a few hundred nonzeros: scipy's per-object checks and its two-pass sparse
    product cost more than the arithmetic at that size, so the scoring path works on the arrays."""

    indptr: Array  # int64, rows + 1
    indices: Array  # int32 column (term) of each nonzero, ascending within a row
    data: Array  # float32

    @classmethod
    def of(cls, m: sparse.csr_matrix) -> Rows:
        """The arrays of a canonical CSR matrix (sorted indices, no duplicates)."""
        return cls(m.indptr.astype(np.int64, copy=False), m.indices, m.data)

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def row_of_nnz(self) -> Array:
        """The row of each nonzero."""
        return np.repeat(np.arange(self.n_rows), np.diff(self.indptr))

    def slice(self, start: int, stop: int) -> Rows:
        """Rows start..stop-1 (views, no copies)."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return Rows(self.indptr[start:stop + 1] - lo, self.indices[lo:hi], self.data[lo:hi])

    def with_data(self, data: Array) -> Rows:
        return Rows(self.indptr, self.indices, data)

    def csr(self, n_cols: int) -> sparse.csr_matrix:
        return sparse.csr_matrix((self.data, self.indices, self.indptr), shape=(self.n_rows, n_cols))


class TextHasher:
    """Hashes texts into raw term counts exactly as `hashers()`' HashingVectorizers do (the same preprocessing
    and n-grams, the same signed murmurhash3 of the UTF-8 n-gram, term ``abs(h) mod 2**bits``), minus their
    per-call set-up (analyzers and a FeatureHasher rebuilt on every call) and sparse-matrix construction:
    for one question that set-up cost several times the hashing.

    Character n-grams (`char_wb`) never cross a space: each word is padded with a space on both sides and
    cut on its own, so a text's n-grams are its words' n-grams. Those are hashed once per distinct word and
    kept in a bounded LRU cache (a pure function of the word, like a tokenizer's cache), so the usual
    question costs a dictionary lookup per word; memory stays bounded for any text (no list of all of a
    long text's n-grams is ever built). Thread-safe."""

    def __init__(self, bits: int = HASH_BITS, cache_words: int = WORD_CACHE) -> None:
        hw, hc = hashers(bits)
        self.bits = bits
        self._mask = (1 << bits) - 1
        self._word: Callable[[str], list[str]] = hw.build_analyzer()
        self._preprocess: Callable[[str], str] = hc.build_preprocessor()  # lowercase, strip accents
        self._word_char_terms = functools.lru_cache(maxsize=cache_words)(self._char_terms_of)

    def word(self, texts: list[str]) -> Rows:
        """Word 1- and 2-gram counts (scikit-learn's analyzer: tokens of two or more word characters)."""
        return self._counts([self._hash(self._word(t)) for t in texts])

    def char(self, texts: list[str]) -> Rows:
        """Character 3- to 5-gram counts within word boundaries."""
        per_text = []
        for text in texts:
            words = self._preprocess(text).split()  # as char_wb: any run of whitespace separates words
            per_text.append(np.concatenate([self._word_char_terms(w) for w in words]) if len(words) > 1
                            else self._word_char_terms(words[0]) if words else np.zeros(0, np.int64))
        return self._counts(per_text)

    def _char_terms_of(self, word: str) -> Array:
        """The hashed character n-grams of one (preprocessed) word, padded: scikit-learn's `char_wb` rule,
        where a padded word no longer than n is one n-gram and ends the sizes."""
        w = f" {word} "
        grams: list[str] = []
        for n in range(CHAR_NGRAMS[0], CHAR_NGRAMS[1] + 1):
            if len(w) <= n:
                grams.append(w)
                break
            grams += [w[i:i + n] for i in range(len(w) - n + 1)]
        out = self._hash(grams)
        out.flags.writeable = False  # shared by every later call through the cache
        return out

    def _hash(self, grams: list[str]) -> Array:
        h = np.fromiter(map(murmurhash3_32, grams), dtype=np.int64, count=len(grams))
        return np.abs(h) & self._mask  # abs(-2**31) & mask == sklearn's special case for it (0)

    def _counts(self, terms: list[Array]) -> Rows:
        """CSR rows of the counts of each text's terms: one sort of (text << bits) | term orders and counts all."""
        bits = self.bits
        keys = np.concatenate([t | (i << bits) for i, t in enumerate(terms)]) if terms else np.zeros(0, np.int64)
        keys.sort()
        first = np.ones(len(keys), dtype=bool)
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        at = np.flatnonzero(first)
        uniq = keys[at]
        counts = np.diff(np.append(at, len(keys)))
        indptr = np.searchsorted(uniq >> bits, np.arange(len(terms) + 1)).astype(np.int64)
        return Rows(indptr, (uniq & self._mask).astype(np.int32), counts.astype(np.float32))


@functools.cache
def text_hasher(bits: int = HASH_BITS) -> TextHasher:
    return TextHasher(bits)


@dataclass(slots=True)
class Counts:
    """Raw hashed term counts of some texts (rows), word and character, plus their lengths."""

    word: sparse.csr_matrix
    char: sparse.csr_matrix
    chars: Array  # text length in characters

    @classmethod
    def of(cls, texts: list[str], bits: int = HASH_BITS, char: bool = True) -> Counts:
        """Hash texts; `char=False` skips the character n-grams (answers: long, used by words only)."""
        h = text_hasher(bits)
        empty = sparse.csr_matrix((len(texts), 2**bits), dtype=np.float32)
        return cls(h.word(texts).csr(2**bits), h.char(texts).csr(2**bits) if char else empty,
                   _lengths(texts))

    def rows(self, idx: Array) -> Counts:
        return Counts(self.word[idx], self.char[idx], self.chars[idx])


def _lengths(texts: list[str]) -> Array:
    return np.fromiter(map(len, texts), dtype=np.float32, count=len(texts))


def _csr(m: Any) -> sparse.csr_matrix:
    out = sparse.csr_matrix(m, dtype=np.float32)
    out.sort_indices()
    return out


def idf_of(*docs: sparse.csr_matrix) -> Array:
    """Smoothed IDF over the rows of the given count matrices: ln((1 + n) / (1 + df)) + 1."""
    n = sum(d.shape[0] for d in docs)
    df = np.zeros(docs[0].shape[1], dtype=np.float64)
    for d in docs:
        df += np.bincount(d.indices, minlength=d.shape[1])
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


def tfidf(counts: sparse.csr_matrix, idf: Array, copy: bool = True) -> sparse.csr_matrix:
    """Sublinear TF (1 + ln tf) times IDF, rows scaled to unit length (empty rows stay zero).

    `copy=False` overwrites `counts` (for a temporary matrix: one copy less of a big one)."""
    out = counts.copy() if copy else counts
    out.data = _tfidf_values(out.indptr, out.indices, out.data, idf)
    return out


def _tfidf_values(indptr: Array, indices: Array, data: Array, idf: Array) -> Array:
    """The TF-IDF values of CSR rows of raw counts (`tfidf`'s arithmetic, on the arrays)."""
    out = (1.0 + np.log(np.maximum(data, 1.0))) * idf[indices]
    norms = np.sqrt(_row_sums(indptr, out.astype(np.float64) ** 2))
    out /= np.repeat(np.where(norms > 0, norms, 1.0), np.diff(indptr)).astype(np.float32)
    return out


def _row_sums(indptr: Array, values: Array) -> Array:
    """Per CSR row: the sum of its `values` (one per nonzero), in order; 0 for empty rows."""
    lengths = np.diff(indptr)
    out = np.zeros(len(lengths), dtype=np.result_type(values.dtype, np.float64))
    nonempty = lengths > 0
    if len(values):
        # reduceat over the non-empty rows' starts only, each segment then ending where the next non-empty
        # row starts: an empty row's start would end its predecessor's segment early (an empty last row
        # used to cut the row before it short by its last term, so a question's TF-IDF norm depended on the
        # questions batched after it)
        out[nonempty] = np.add.reduceat(values, indptr[:-1][nonempty])
    return out


def _stacked_t(*blocks: sparse.csr_matrix) -> sparse.csr_matrix:
    """[a; b; ...] transposed, as CSR (vocabulary x stacked rows): CSR stacking is a concatenation and the
    transpose one CSR->CSC pass, far cheaper than stacking transposed blocks side by side."""
    stacked = sparse.vstack([sparse.csr_matrix(b, dtype=np.float32) for b in blocks], format="csr")
    return sparse.csr_matrix(stacked.tocsc().T)


def _row_sq(m: sparse.csr_matrix) -> Array:
    """Squared length of each row (0 for empty rows)."""
    return _row_sums(m.indptr, m.data.astype(np.float64) ** 2)


def _binary(m: sparse.csr_matrix) -> sparse.csr_matrix:
    out = m.copy()
    out.data = np.ones_like(out.data)
    return out


#: a product gathering more posting entries than this goes to scipy's sparse product, faster there (big FAQs,
#: big training batches; measured: one question against 10,000 originals 3.3 ms this way, 5.8 ms gathering)
GATHER_MAX = 2**15
#: nonzeros of the question rows gathered at once for the nearest-known-text features (~1 MB)
NEAREST_NNZ = 2**17


def _ranges(starts: Array, counts: Array) -> Array:
    """Concatenated ``arange(s, s + c)`` for each (s, c): the positions of several slices at once."""
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - counts), counts)


def _scores(q: Rows, m_t: sparse.csr_matrix) -> Array:
    """Dense (questions x columns) q @ m_t, m_t a (vocabulary x columns) CSR matrix.

    For a few questions against a small FAQ: gather the posting rows of their terms and add the products
    up by (question, column) in one bincount: a handful of array operations, where scipy's sparse product
    builds several sparse objects and makes two passes, which only pays off for big products (GATHER_MAX)."""
    n_cols = m_t.shape[1]
    terms = q.indices
    starts = m_t.indptr[terms].astype(np.int64)
    counts = m_t.indptr[terms + 1] - starts
    if int(counts.sum()) > GATHER_MAX:
        return _dense(q.csr(m_t.shape[0]) @ m_t)
    pos = _ranges(starts, counts)
    weights = m_t.data[pos] * np.repeat(q.data, counts)
    cols = m_t.indices[pos].astype(np.int64)
    if q.n_rows > 1:
        cols += np.repeat(q.row_of_nnz() * n_cols, counts)
    dense = np.bincount(cols, weights=weights, minlength=q.n_rows * n_cols)
    return dense.astype(np.float32).reshape(q.n_rows, n_cols)


def _dense(m: Any) -> Array:
    return np.asarray(m.toarray(), dtype=np.float32)


LinearReranker = tuple[Array, Array, Array, float]


def linear_reranker(reranker: Any) -> LinearReranker | None:
    """(mean, scale, coef, intercept) of a fitted binary logistic regression, alone or after a StandardScaler;
    None for anything else. Its P(class 1) is then ``expit(((x - mean) / scale) @ coef + intercept)``, what
    `predict_proba` computes, without its per-call input validation (several times the arithmetic here)."""
    steps = [s for _, s in reranker.steps] if isinstance(reranker, Pipeline) else [reranker]
    scaler = steps[0] if len(steps) == 2 and type(steps[0]) is StandardScaler else None
    clf = steps[-1]
    if len(steps) != (2 if scaler is not None else 1) or type(clf) is not LogisticRegression \
            or len(clf.classes_) != 2 or clf.coef_.shape[0] != 1:
        return None
    n = clf.coef_.shape[1]
    # (a scaler fitted with_mean=False still has a mean_: only the flags say what transform() applies)
    mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler is not None and scaler.with_mean else np.zeros(n)
    scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler is not None and scaler.with_std else np.ones(n)
    return mean, scale, np.asarray(clf.coef_[0], dtype=np.float64), float(clf.intercept_[0])


class FAQMatcher(BaseEstimator):
    """Fitted FAQ index + reranker; built by `faq_training.fit_matcher`, served by the sklearn-faq flavour.

    Fitted attributes (all numeric arrays or sparse matrices, so skops stores them as arrays):
    ``idf_word_``, ``idf_char_``, ``bm25_idf_``, ``known_word_``/``known_char_`` (TF-IDF rows of each
    original followed by its known rephrasings), ``known_ptr_`` (row range of each original),
    ``orig_word_``, ``orig_char_``, ``answer_word_``, ``bm25_`` (BM25 weights of original + answer),
    ``orig_chars_``, ``reranker_`` (a scikit-learn classifier, or None: the character-profile
    cosine scores), ``calibrated_`` and ``platt_`` (a, b: p = sigmoid(a * logit(raw) + b)),
    ``threshold_`` (the no-match threshold, NaN when none could be chosen).
    """

    def __init__(self, candidates: int = CANDIDATES_PER_RETRIEVER, hash_bits: int = HASH_BITS) -> None:
        self.candidates = candidates
        self.hash_bits = hash_bits

    # ------------------------------------------------------------------ building
    @classmethod
    def from_index(cls, index: Index, reranker: Any, platt: tuple[float, float] | None, threshold: float | None,
                   candidates: int = CANDIDATES_PER_RETRIEVER) -> Self:
        """`platt` None: uncalibrated (scores are raw cosines or reranker outputs)."""
        m = cls(candidates=candidates, hash_bits=index.hash_bits)
        m.idf_word_, m.idf_char_, m.bm25_idf_ = index.idf_word, index.idf_char, index.bm25_idf
        m.known_word_, m.known_char_, m.known_ptr_ = index.known_word, index.known_char, index.known_ptr
        m.orig_word_, m.orig_char_, m.answer_word_ = index.orig_word, index.orig_char, index.answer_word
        m.bm25_, m.orig_chars_ = index.bm25, index.orig_chars
        m.reranker_ = reranker
        m.calibrated_ = platt is not None
        m.platt_ = np.asarray(platt if platt is not None else (1.0, 0.0), dtype=np.float64)
        m.threshold_ = float("nan") if threshold is None else float(threshold)
        m.n_originals_ = int(index.n)
        return m

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_index", None)  # derived at load by prepare(); never saved
        state.pop("_linear", None)
        # sparse matrices as their plain arrays: skops would save them as compressed .npz, and
        # inflating ~100 MB costs seconds at every load
        for key, value in list(state.items()):
            if sparse.issparse(value):
                m = sparse.csr_matrix(value)
                state[key] = {_SPARSE: np.asarray(m.shape, dtype=np.int64), "data": m.data, "indices": m.indices,
                              "indptr": m.indptr}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for key, value in list(state.items()):
            if isinstance(value, dict) and _SPARSE in value:
                state[key] = sparse.csr_matrix((value["data"], value["indices"], value["indptr"]),
                                               shape=tuple(int(d) for d in value[_SPARSE]))
        super().__setstate__(state)

    def prepare(self) -> Index:
        """Derive the serving index (transposed matrices, profile sums) once; idempotent."""
        index: Index | None = getattr(self, "_index", None)
        if index is None:
            index = Index(self.idf_word_, self.idf_char_, self.bm25_idf_, self.known_word_, self.known_char_,
                          self.known_ptr_, self.orig_word_, self.orig_char_, self.answer_word_, self.bm25_,
                          self.orig_chars_, self.hash_bits)
            self._index = index
            self._linear = None if self.reranker_ is None else linear_reranker(self.reranker_)
        return index

    @property
    def threshold(self) -> float | None:
        t = float(self.threshold_)
        return None if math.isnan(t) else t

    @property
    def calibrated(self) -> bool:
        """Scores are probabilities (Platt-calibrated out of fold), not raw cosines."""
        return bool(getattr(self, "calibrated_", self.reranker_ is not None))

    # ------------------------------------------------------------------ scoring
    def raw_scores(self, feats: Array) -> Array:
        """The reranker's uncalibrated P(right original) per candidate row."""
        if self.reranker_ is None:
            return np.clip(feats[:, FEATURE_NAMES.index("profile_char_cos")], 0.0, 1.0)
        linear: LinearReranker | None = getattr(self, "_linear", None)
        if linear is not None:
            mean, scale, coef, intercept = linear
            return np.asarray(expit(((feats - mean) / scale) @ coef + intercept), dtype=np.float64)
        return np.asarray(self.reranker_.predict_proba(feats)[:, 1], dtype=np.float64)

    def calibrate(self, raw: Array) -> Array:
        if not self.calibrated:
            return raw  # unsupervised fallback: a cosine, not a probability (the manifest says so)
        return platt_apply(self.platt_, raw)

    def rank(self, questions: list[str], k: int) -> tuple[Array, Array]:
        """(original indices, scores), each (len(questions), k), best first."""
        index = self.prepare()
        k = max(1, min(k, index.n))
        hasher = text_hasher(self.hash_bits)
        word, char, chars = hasher.word(questions), hasher.char(questions), _lengths(questions)
        top = np.zeros((len(questions), k), dtype=np.intp)
        scores = np.zeros((len(questions), k), dtype=np.float64)
        for start in range(0, len(questions), 32):  # bounds the dense (questions x originals) buffers
            stop = min(start + 32, len(questions))
            cand = index.score_rows(word.slice(start, stop), char.slice(start, stop), chars[start:stop],
                                    self.candidates, min_candidates=k)
            prob = self.calibrate(self.raw_scores(cand.features))
            order = np.lexsort((-prob, cand.query))  # by question, best first
            q, c, p = cand.query[order], cand.original[order], prob[order]
            starts = np.searchsorted(q, np.arange(stop - start))
            pos = np.arange(len(q)) - starts[q]
            keep = pos < k
            top[start + q[keep], pos[keep]] = c[keep]
            scores[start + q[keep], pos[keep]] = p[keep]
        return top, scores


def platt_apply(platt: Array, raw: Array) -> Array:
    eps = 1e-6
    r = np.clip(raw, eps, 1 - eps)
    z = platt[0] * np.log(r / (1 - r)) + platt[1]
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


@dataclass(slots=True)
class Candidates:
    """Candidate (question, original) pairs of a batch and their features."""

    query: Array  # row of the question in the batch
    original: Array  # index of the original
    features: Array  # (pairs, N_FEATURES)
    #: per question: its best character-profile cosine over all originals, and the full score rows
    #: of the two baselines (only when asked for: evaluation)
    baseline_word: Array | None = None
    baseline_char: Array | None = None


class Index:
    """Everything scoring needs, as sparse matrices: the fitted state of `FAQMatcher` plus derived views."""

    def __init__(self, idf_word: Array, idf_char: Array, bm25_idf: Array, known_word: sparse.csr_matrix,
                 known_char: sparse.csr_matrix, known_ptr: Array, orig_word: sparse.csr_matrix,
                 orig_char: sparse.csr_matrix, answer_word: sparse.csr_matrix, bm25: sparse.csr_matrix,
                 orig_chars: Array, hash_bits: int = HASH_BITS) -> None:
        self.idf_word, self.idf_char, self.bm25_idf = idf_word, idf_char, bm25_idf
        self.known_word, self.known_char, self.known_ptr = known_word, known_char, np.asarray(known_ptr)
        self.orig_word, self.orig_char, self.answer_word = orig_word, orig_char, answer_word
        self.bm25, self.orig_chars, self.hash_bits = bm25, orig_chars, hash_bits
        self.n = int(orig_word.shape[0])
        #: training only: the known-text row of each indexed question (see `build`)
        self.question_row: Array = np.zeros(0, dtype=np.intp)
        counts = np.diff(self.known_ptr)
        self.owner = np.repeat(np.arange(self.n), counts)
        agg = sparse.csr_matrix((np.ones(len(self.owner), dtype=np.float32), (self.owner, np.arange(len(self.owner)))),
                                shape=(self.n, len(self.owner)))
        # Profiles: sums of the unit vectors of an original and its rephrasings (not normalised, so a
        # training question can be taken out again exactly: leave-one-out).
        prof_word, prof_char = _csr(agg @ known_word), _csr(agg @ known_char)
        self.prof_word_sq, self.prof_char_sq = _row_sq(prof_word), _row_sq(prof_char)
        # (vocabulary x originals) CSR, side by side per question vector: one sparse product gives a
        # question's scores against every original for several retrievers at once
        # (the original questions themselves are the first known text of each entry: their cosines come
        # with the nearest-neighbour gathers, for candidates only)
        # When the FAQ is small, the known texts join the products too: a question's dot with every known
        # text comes with its profile scores, cheaper than gathering its candidates' known rows afterwards
        # (`_nearest`); that is a second copy of the known matrices, so only when they are small.
        self.known_in_products = (known_word.shape[0] <= KNOWN_T_MAX_ROWS
                                  and known_word.nnz + known_char.nnz <= KNOWN_T_MAX_NNZ)
        known = self.known_in_products
        self.word_t = _stacked_t(prof_word, answer_word, *([known_word] if known else []))
        self.char_t = _stacked_t(prof_char, *([known_char] if known else []))
        self._orig_word_t: sparse.csr_matrix | None = None  # evaluation only (the word baseline)
        self.bin_t = _stacked_t(bm25, _binary(bm25))
        # profile lengths as the cosines divide by them (leave-one-out changes them per question: training)
        self.prof_word_norm = np.sqrt(np.maximum(self.prof_word_sq, 1e-12), dtype=np.float32)
        self.prof_char_norm = np.sqrt(np.maximum(self.prof_char_sq, 1e-12), dtype=np.float32)

    # ------------------------------------------------------------------ construction from data
    @classmethod
    def build(cls, originals: Counts, answers: Counts, questions: Counts, owner: Array,
              hash_bits: int = HASH_BITS) -> Index:
        """Index the originals with the given known questions (`owner[i]`: the original of question i)."""
        n = originals.word.shape[0]
        idf_word = idf_of(originals.word, answers.word, questions.word)
        idf_char = idf_of(originals.char, questions.char)
        order = np.argsort(owner, kind="stable")
        # (built one at a time, rewritten in place: the character matrix is the biggest thing in training)
        known_word = sparse.vstack([originals.word, questions.word[order]], format="csr")
        # rows: all originals first, then questions by owner; reorder to [orig 0, its questions, orig 1, ...]
        per = np.bincount(owner, minlength=n) if len(owner) else np.zeros(n, dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(per + 1)])
        perm = np.empty(n + len(owner), dtype=np.intp)
        perm[ptr[:-1]] = np.arange(n)
        q_slots = np.ones(n + len(owner), dtype=bool)
        q_slots[ptr[:-1]] = False
        perm[q_slots] = n + np.arange(len(owner))
        known_word = tfidf(_csr(known_word[perm]), idf_word, copy=False)
        known_char = sparse.vstack([originals.char, questions.char[order]], format="csr")
        known_char = tfidf(_csr(known_char[perm]), idf_char, copy=False)
        # BM25 over each entry's "document": its original question and its answer
        doc = _csr(originals.word + answers.word)
        df = np.bincount(doc.indices, minlength=doc.shape[1]).astype(np.float64)
        bm25_idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        dl = np.asarray(doc.sum(axis=1)).ravel()
        norm = BM25_K1 * (1 - BM25_B + BM25_B * dl / max(float(dl.mean()), 1e-9))
        bm = doc.copy()
        lengths = np.diff(bm.indptr)
        bm.data = (bm.data * (BM25_K1 + 1) / (bm.data + np.repeat(norm, lengths))) * bm25_idf[bm.indices]
        ix = cls(idf_word, idf_char, bm25_idf, known_word, known_char, ptr, tfidf(originals.word, idf_word),
                 tfidf(originals.char, idf_char), tfidf(answers.word, idf_word), _csr(bm), originals.chars, hash_bits)
        # where each known question sits in the known rows (for leave-one-out)
        ix.question_row = perm_inverse(perm)[n + perm_inverse(order)] if len(owner) else np.zeros(0, np.intp)
        return ix

    # ------------------------------------------------------------------ features
    def vectors(self, word: Rows, char: Rows) -> tuple[Rows, Rows, Rows]:
        """(word TF-IDF, char TF-IDF, IDF-weighted binary words) of question rows (raw counts)."""
        qw = word.with_data(_tfidf_values(word.indptr, word.indices, word.data, self.idf_word))
        qc = char.with_data(_tfidf_values(char.indptr, char.indices, char.data, self.idf_char))
        return qw, qc, word.with_data(self.bm25_idf[word.indices])

    def candidates(self, counts: Counts, per_retriever: int, min_candidates: int = 0,
                   own: Array | None = None, own_row: Array | None = None, exclude: Array | None = None,
                   baselines: bool = False) -> Candidates:
        """Candidates and features for a batch of questions (see `score_rows`)."""
        return self.score_rows(Rows.of(counts.word), Rows.of(counts.char), counts.chars, per_retriever,
                               min_candidates, own, own_row, exclude, baselines)

    def score_rows(self, word: Rows, char: Rows, lengths: Array, per_retriever: int, min_candidates: int = 0,
                   own: Array | None = None, own_row: Array | None = None, exclude: Array | None = None,
                   baselines: bool = False) -> Candidates:
        """Candidates and features for a batch of questions, given their raw word and character counts and
        their lengths in characters.

        `own[i]`: the original of question i to always include (training: the positive), -1 for none;
        `own_row[i]`: its row among the known texts, left out of profile and nearest-neighbour features
        (leave-one-out), -1 for none; `exclude[i]`: an original to act as if absent (-1: none).
        """
        b = word.n_rows
        qw, qc, qb = self.vectors(word, char)
        n = self.n
        words, chars, bins = _scores(qw, self.word_t), _scores(qc, self.char_t), _scores(qb, self.bin_t)
        pw_dot, aw = words[:, :n], words[:, n:2 * n]
        pc_dot = chars[:, :n]
        known_dots = (words[:, 2 * n:], chars[:, n:]) if self.known_in_products else None
        bm = bins[:, :n]
        q_idf = _row_sums(qb.indptr, qb.data.astype(np.float64))
        ov = bins[:, n:] / np.maximum(q_idf, 1e-9)[:, None]
        pw_norm, pc_norm = self.prof_word_norm, self.prof_char_norm  # broadcast over questions
        if own_row is not None and own is not None:
            pw_sq = np.broadcast_to(np.maximum(self.prof_word_sq, 1e-12), (b, self.n)).copy()
            pc_sq = np.broadcast_to(np.maximum(self.prof_char_sq, 1e-12), (b, self.n)).copy()
            # leave-one-out: the question is one of the unit vectors summed in its own original's profile
            r = np.nonzero(own_row >= 0)[0]
            o = own[r]
            qw_sq = _row_sums(qw.indptr, qw.data.astype(np.float64) ** 2)[r]
            qc_sq = _row_sums(qc.indptr, qc.data.astype(np.float64) ** 2)[r]
            pw_sq[r, o] += qw_sq - 2 * pw_dot[r, o]
            pc_sq[r, o] += qc_sq - 2 * pc_dot[r, o]
            pw_dot[r, o] -= qw_sq
            pc_dot[r, o] -= qc_sq
            pw_norm = np.sqrt(np.maximum(pw_sq, 1e-12), dtype=np.float32)
            pc_norm = np.sqrt(np.maximum(pc_sq, 1e-12), dtype=np.float32)
        pw = pw_dot / pw_norm
        pc = pc_dot / pc_norm
        out = Candidates(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros((0, N_FEATURES)))
        if baselines:
            if self._orig_word_t is None:
                self._orig_word_t = _stacked_t(self.orig_word)
            out.baseline_word, out.baseline_char = _scores(qw, self._orig_word_t), pc.copy()
        if exclude is not None:
            r = np.nonzero(exclude >= 0)[0]
            for m in (pw, pc, aw, bm, ov):
                m[r, exclude[r]] = -np.inf
        # candidates: union of each retriever's best
        n_take = min(self.n, max(per_retriever, 1))
        if min_candidates <= n_take:  # one partition call for the four retrievers
            both = _top(np.concatenate([pc, pw, aw, bm], axis=1).reshape(b * 4, self.n), n_take)
            picks = [both.reshape(b, 4 * both.shape[1])]
        else:
            picks = [_top(pc, min(min_candidates, self.n)), _top(pw, n_take), _top(aw, n_take), _top(bm, n_take)]
        if own is not None:
            picks.append(np.where(own >= 0, own, picks[0][:, 0])[:, None])
        allc = np.sort(np.concatenate(picks, axis=1), axis=1)
        keep = np.ones(allc.shape, dtype=bool)
        keep[:, 1:] = allc[:, 1:] != allc[:, :-1]
        if exclude is not None:
            keep &= allc != exclude[:, None]
        qi, _ = np.nonzero(keep)
        ci = allc[keep]
        f = np.empty((len(qi), N_FEATURES), dtype=np.float64)
        col = {name: i for i, name in enumerate(FEATURE_NAMES)}
        for name, m in (("profile_word_cos", pw),
                        ("profile_char_cos", pc), ("answer_word_cos", aw), ("bm25", bm), ("idf_overlap", ov)):
            f[:, col[name]] = m[qi, ci]
        (nnw, ow), (nnc, oc) = self._nearest(qw, qc, qi, ci, own_row, known_dots)
        f[:, col["nn_word_cos"]], f[:, col["nn_char_cos"]] = nnw, nnc
        f[:, col["orig_word_cos"]], f[:, col["orig_char_cos"]] = ow, oc
        f[:, col["profile_char_gap"]] = f[:, col["profile_char_cos"]] - pc.max(axis=1)[qi]
        f[:, col["profile_word_gap"]] = f[:, col["profile_word_cos"]] - pw.max(axis=1)[qi]
        nn_best = np.full(b, -np.inf)
        np.maximum.at(nn_best, qi, nnc)
        f[:, col["nn_char_gap"]] = nnc - nn_best[qi]
        f[:, col["bm25_rel"]] = f[:, col["bm25"]] / np.maximum(bm.max(axis=1), 1e-9)[qi]
        for name, fcol in (("rank_profile_char", "profile_char_cos"), ("rank_profile_word", "profile_word_cos"),
                           ("rank_bm25", "bm25")):
            f[:, col[name]] = np.log1p(_rank_within(qi, f[:, col[fcol]], b))
        f[:, col["log_question_chars"]] = np.log1p(lengths[qi])
        f[:, col["log_length_ratio"]] = np.log1p(lengths[qi]) - np.log1p(self.orig_chars[ci])
        out.query, out.original, out.features = qi, ci, np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def _nearest(self, qw: Rows, qc: Rows, qi: Array, ci: Array, own_row: Array | None,
                 known_dots: tuple[Array, Array] | None = None) -> list[tuple[Array, Array]]:
        """Per space (word, char): each pair's best cosine to any single known text of its candidate, and
        its cosine to the candidate's original question (the first known text of every entry).

        `known_dots`: the questions' dots with every known text (word, char), when the products gave them."""
        starts, ends = self.known_ptr[ci], self.known_ptr[ci + 1]
        counts = ends - starts
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        krow = _ranges(starts, counts)
        kq = qi[np.repeat(np.arange(len(ci)), counts)]  # the question of each (pair, known text)
        out = []
        for space, (q, known) in enumerate(((qw, self.known_word), (qc, self.known_char))):
            if known_dots is not None:
                dots = known_dots[space][kq, krow].astype(np.float64)
            else:
                dots = _sparse_dots(q, kq, known, krow)
            original = dots[offsets].copy() if len(dots) else np.zeros(0)
            if own_row is not None:
                dots[krow == own_row[kq]] = -1.0
            best = np.maximum.reduceat(dots, offsets) if len(dots) else np.zeros(0)
            out.append((np.maximum(best, 0.0), original))
        return out


def _sparse_dots(q: Rows, qrow: Array, known: sparse.csr_matrix, krow: Array) -> Array:
    """``q[qrow[i]] . known[krow[i]]`` for every i: scipy's element-wise product of the gathered rows (its
    sorted merge beats a vectorised lookup on the big batches of training), a slice of pairs at a time
    so the copies of the question rows stay about NEAREST_NNZ nonzeros (long questions)."""
    out = np.zeros(len(krow))
    if not len(krow):
        return out
    qm = q.csr(known.shape[1])
    step = max(1, min(200_000, NEAREST_NNZ // max(1, int(np.diff(q.indptr).max(initial=0)))))
    for s in range(0, len(krow), step):
        sl = slice(s, s + step)
        out[sl] = np.asarray(qm[qrow[sl]].multiply(known[krow[sl]]).sum(axis=1)).ravel()
    return out


def perm_inverse(perm: Array) -> Array:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return inv


def _top(scores: Array, k: int) -> Array:
    k = min(k, scores.shape[1])
    if k >= scores.shape[1]:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _rank_within(qi: Array, values: Array, b: int) -> Array:
    """0-based rank of each row's value among the rows of the same question (higher is better)."""
    if b == 1:  # one question: the same stable order without the question key
        ranks = np.empty(len(qi), dtype=np.float64)
        ranks[np.argsort(-values, kind="stable")] = np.arange(len(qi))
        return ranks
    order = np.lexsort((-values, qi))
    starts = np.searchsorted(qi[order], np.arange(b))
    ranks = np.empty(len(qi), dtype=np.float64)
    ranks[order] = np.arange(len(qi)) - starts[qi[order]]
    return ranks
