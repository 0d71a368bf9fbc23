"""Training the FAQ matcher: grouped k-fold cross-validation, model selection, calibration, no-match threshold.

`fit_matcher(data)` does, in order:

1. **Cross-validation** (k folds over the labelled rephrasings, grouped so texts equal up to case,
   punctuation and spacing stay in one fold, each original's rephrasings dealt over the folds). In
   each fold the index (IDF, profiles, nearest-neighbour texts) is built from the training folds
   only; the held-out questions are ranked by each reranker config (`CONFIGS`, trained on the
   training folds' leave-one-out features) and by two baselines on the same index: word TF-IDF
   cosine to the original question, and character n-gram TF-IDF cosine to the profile.
2. **Model selection**: the config with the best pooled out-of-fold MRR. Every config's CV score is
   in the report, so the (small) optimism of picking the best of three is visible.
3. **Calibration**: Platt scaling of the chosen config's out-of-fold candidate scores.
4. **No-match threshold**: out of fold, held-out questions are also asked with their own original
   removed from the FAQ (a real question the FAQ cannot answer) and with their characters shuffled
   (gibberish). The threshold on the calibrated top score maximises Youden's J = (share of right
   top answers kept) - (share of wrong top answers, removed-original and gibberish queries kept).
5. **The final model** is fitted on ALL the data: the index holds every rephrasing; the reranker
   learns from leave-one-out features (each training question is taken out of its own original's
   profile and nearest-neighbour set, so it sees what an unseen question would).

With too few labelled rephrasings (`MIN_SUPERVISED`) there is no reranker: the model is the
unsupervised character-profile cosine (no calibrated probability, no threshold) and the report says
so. Big FAQs are subsampled for the reranker and for evaluation (`Caps`); the report counts the
questions evaluated.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from scoring_runtime.flavours.faq_pipeline import (
    CANDIDATES_PER_RETRIEVER,
    FEATURE_NAMES,
    Array,
    Candidates,
    Counts,
    FAQMatcher,
    Index,
    platt_apply,
)

#: fewer labelled rephrasings than this: no reranker, the unsupervised character-profile cosine
MIN_SUPERVISED = 20
_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class Caps:
    """Subsampling for big FAQs (the reranker needs thousands of questions, not hundreds of thousands)."""

    train_questions: int = 1500  # questions whose candidates train the reranker (per fit)
    eval_questions: int = 1000  # held-out questions ranked per fold
    ood_questions: int = 300  # held-out questions re-asked as out-of-domain queries per fold (threshold)
    chunk: int = 256  # questions per batch of sparse products


#: no reranker: the character-profile cosine alone (calibrated), chosen if no reranker beats it in CV
PROFILE_COSINE = "char profile cosine"
#: reranker candidates, simplest first; the one with the best cross-validated MRR is used
CONFIGS: dict[str, Callable[[], Any]] = {
    "logreg C=0.1": lambda: Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=0.1, max_iter=2000))]),
    "logreg C=1": lambda: Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=1.0, max_iter=2000))]),
    "hgb": lambda: HistGradientBoostingClassifier(max_leaf_nodes=15, learning_rate=0.1, max_iter=100,
                                                  min_samples_leaf=20, l2_regularization=1.0,
                                                  early_stopping=False, random_state=0),
}


@dataclass
class FAQData:
    """Originals (text, answer) and labelled rephrasings (`owner[i]`: index of question i's original)."""

    texts: list[str]
    answers: list[str]
    questions: list[str]
    owner: Array


@dataclass
class Report:
    """What training measured; `lines()` is what train.py prints."""

    n_originals: int
    n_questions: int
    folds: int = 0
    evaluated: int = 0
    supervised: bool = False
    calibrated: bool = False
    fallback_reason: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    configs: dict[str, dict[str, float]] = field(default_factory=dict)  # CV metrics of every reranker config
    final_config: str = ""
    threshold: float | None = None
    threshold_stats: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def flat_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"n_originals": float(self.n_originals), "n_duplicates": float(self.n_questions),
                                 "cv_folds": float(self.folds), "cv_questions": float(self.evaluated)}
        for who, m in self.metrics.items():
            for k, v in m.items():
                out[f"cv_{k}_{who}"] = v
        if self.threshold is not None:
            out["no_match_threshold"] = round(self.threshold, 4)
            out.update({f"no_match_{k}": v for k, v in self.threshold_stats.items()})
        return out

    def lines(self) -> list[str]:
        out = []
        if self.folds:
            out.append(f"{self.folds}-fold cross-validation over {self.evaluated} held-out rephrasings of "
                       f"{self.n_originals} originals (folds grouped by text; index and reranker built from "
                       "the training folds only):")
            out.append(f"  {'':34} {'top1':>6} {'top3':>6} {'MRR':>6}")
            names = {"model": "model" + ("" if self.supervised else " (unsupervised fallback)"),
                     "word_original": "baseline: word TF-IDF vs original", "char_profile":
                     "baseline: char TF-IDF vs profile"}
            for who, label in names.items():
                if who in self.metrics:
                    m = self.metrics[who]
                    out.append(f"  {label:34} {m['top1']:6.3f} {m['top3']:6.3f} {m['mrr']:6.3f}")
        else:
            out.append("no cross-validation: too few labelled rephrasings to hold any out")
        if not self.supervised:
            out.append(f"no reranker: {self.fallback_reason}; scores are character-profile cosines, not probabilities, "
                       "and there is no no-match threshold (pass min_score to set one)")
        else:
            tried = ", ".join(f"{c} {m['mrr']:.3f}" for c, m in self.configs.items())
            out.append(f"reranker: {self.final_config}, the best cross-validated MRR of {tried}")
            if self.final_config == PROFILE_COSINE:
                out.append("no reranker beat the character-profile cosine in CV: the model scores with it (calibrated)")
        if self.threshold is not None:
            s = self.threshold_stats
            out.append(f"no-match threshold {self.threshold:.3f} (max Youden J on out-of-fold scores): keeps "
                       f"{s['kept_right']:.1%} of right answers, {s['kept_wrong']:.1%} of wrong ones, "
                       f"{s['kept_absent']:.1%} of questions whose original was removed, "
                       f"{s['kept_gibberish']:.1%} of shuffled-character questions")
        out.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return out


def text_key(text: str) -> str:
    """Texts equal up to case, punctuation and spacing are one CV group (they never straddle folds)."""
    return " ".join(_WORDS.findall(text.lower()))


def assign_folds(owner: Array, questions: list[str], k: int, seed: int) -> Array:
    """Fold of each question: groups of equal texts together, each original's groups spread round-robin."""
    rng = np.random.default_rng(seed)
    keys = [text_key(q) for q in questions]
    group_of: dict[str, int] = {}
    gid = np.array([group_of.setdefault(key, len(group_of)) for key in keys])
    g_owner = np.zeros(len(group_of), dtype=np.int64)
    g_owner[gid] = owner  # a group spanning originals takes one of them: fine for spreading
    shuffle = rng.permutation(len(group_of))
    # groups sorted by original (random within), dealt round-robin: an original's groups land in
    # different folds, and the folds come out the same size
    order = np.lexsort((shuffle, g_owner))
    g_fold = np.empty(len(group_of), dtype=np.int64)
    g_fold[order] = (np.arange(len(order)) + int(rng.integers(0, k))) % k
    return np.asarray(g_fold[gid])


def candidates_for(ix: Index, counts: Counts, per: int, chunk: int, baselines: bool = False,
                   **rowwise: Array | None) -> Candidates:
    """`Index.candidates` over a large batch in chunks; per-question arrays in `rowwise` are split too."""
    n = counts.word.shape[0]
    parts = []
    for s in range(0, n, chunk):
        sl = np.arange(s, min(s + chunk, n))
        kw: dict[str, Any] = {k: (None if v is None else v[sl]) for k, v in rowwise.items()}
        c = ix.candidates(counts.rows(sl), per, baselines=baselines, **kw)
        c.query = c.query + s
        parts.append(c)
    out = Candidates(np.concatenate([p.query for p in parts]), np.concatenate([p.original for p in parts]),
                     np.vstack([p.features for p in parts]))
    if parts and parts[0].baseline_word is not None:
        out.baseline_word = np.vstack([p.baseline_word for p in parts if p.baseline_word is not None])
        out.baseline_char = np.vstack([p.baseline_char for p in parts if p.baseline_char is not None])
    return out


def rank_of_truth(query: Array, original: Array, score: Array, truth: Array, fallback: Array) -> Array:
    """1-based rank of each question's true original: among its candidates by `score`; a true original
    that was not retrieved ranks after all candidates, by `fallback` (the full character-profile row)."""
    nq = len(truth)
    is_true = original == truth[query]
    true_score = np.full(nq, np.nan)
    true_score[query[is_true]] = score[is_true]
    found = ~np.isnan(true_score)
    better = np.zeros(nq)
    np.add.at(better, query, score > np.nan_to_num(true_score, nan=np.inf)[query])
    rank = better + 1
    n_cand = np.bincount(query, minlength=nq)
    if (~found).any():
        miss = np.nonzero(~found)[0]
        cand_mask = np.zeros_like(fallback, dtype=bool)
        cand_mask[query, original] = True
        fb = np.where(cand_mask, -np.inf, fallback)
        t = fallback[miss, truth[miss]]
        rank[miss] = n_cand[miss] + (fb[miss] > t[:, None]).sum(axis=1) + 1
    return rank


def full_rank(scores: Array, truth: Array) -> Array:
    t = scores[np.arange(len(truth)), truth]
    return (scores > t[:, None]).sum(axis=1) + 1.0


def summarize(ranks: Array) -> dict[str, float]:
    return {"top1": round(float(np.mean(ranks <= 1)), 4), "top3": round(float(np.mean(ranks <= 3)), 4),
            "mrr": round(float(np.mean(1.0 / ranks)), 4)}


def _fit(model: Any, x: Array, y: Array) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds
        return model.fit(x, y)


def _training_rows(ix: Index, counts: Counts, owner: Array, rows: Array, caps: Caps, per: int,
                   rng: np.random.Generator) -> tuple[Array, Array, Array]:
    """Leave-one-out candidate features of indexed questions `rows` (positions in the index's questions)."""
    if len(rows) > caps.train_questions:
        rows = np.sort(rng.choice(rows, caps.train_questions, replace=False))
    c = candidates_for(ix, counts.rows(rows), per, caps.chunk, own=owner[rows], own_row=ix.question_row[rows])
    y = (c.original == owner[rows][c.query]).astype(np.int64)
    return c.features, y, c.query


def _shuffled(texts: list[str], rng: np.random.Generator) -> list[str]:
    out = []
    for t in texts:
        chars = list(t)
        rng.shuffle(chars)
        out.append("".join(chars))
    return out


def youden(pos: Array, neg: Array) -> tuple[float, float]:
    """(threshold, J): the score cut maximising TPR - FPR (accept when score >= threshold)."""
    cuts = np.unique(np.concatenate([pos, neg]))
    if len(cuts) == 0:
        return 0.5, 0.0
    mids = np.concatenate([[cuts[0] - 1e-6], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1e-6]])
    ps, ns = np.sort(pos), np.sort(neg)
    tpr = 1 - np.searchsorted(ps, mids, side="left") / max(len(ps), 1)
    fpr = 1 - np.searchsorted(ns, mids, side="left") / max(len(ns), 1)
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(np.clip(mids[best], 0.0, 1.0)), float(j[best])


def _top_per_query(query: Array, score: Array, nq: int) -> Array:
    out = np.full(nq, 0.0)
    np.maximum.at(out, query, score)
    return out


def fit_matcher(data: FAQData, folds: int = 5, seed: int = 0, caps: Caps | None = None,
                log: Callable[[str], None] = lambda _m: None) -> tuple[FAQMatcher, Report]:
    """Cross-validate, calibrate, choose the threshold, then fit on all the data (see the module docstring)."""
    # Many small fits: OpenMP thread pools cost more than they give (and spin badly on a busy machine).
    with threadpool_limits(limits=1):
        return _fit_matcher(data, folds, seed, caps or Caps(), log)


def _fit_matcher(data: FAQData, folds: int, seed: int, caps: Caps,
                 log: Callable[[str], None]) -> tuple[FAQMatcher, Report]:
    per = CANDIDATES_PER_RETRIEVER
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    owner = np.asarray(data.owner, dtype=np.int64)
    originals, answers = Counts.of(data.texts), Counts.of(data.answers, char=False)
    questions = Counts.of(data.questions)
    report = Report(n_originals=len(data.texts), n_questions=len(data.questions))
    report.seconds["vectorise"] = time.perf_counter() - t0
    n_groups = len({text_key(q) for q in data.questions})
    k = min(folds, n_groups)
    report.supervised = len(data.questions) >= MIN_SUPERVISED and k >= 2
    if not report.supervised:
        report.fallback_reason = (f"{len(data.questions)} labelled rephrasings ({n_groups} distinct), fewer than the "
                                  f"{MIN_SUPERVISED} needed to train and check a reranker")

    configs = [*CONFIGS, PROFILE_COSINE] if report.supervised else []
    pc_col = FEATURE_NAMES.index("profile_char_cos")

    def scorer(name: str, x: Array, y: Array) -> Callable[[Array], Array]:
        if name == PROFILE_COSINE:
            return lambda f: np.clip(f[:, pc_col], 0.0, 1.0)
        model = _fit(CONFIGS[name](), x, y)
        return lambda f: np.asarray(model.predict_proba(f)[:, 1])

    # per config, out of fold: candidate scores + labels (calibration), top scores of each query kind (threshold)
    oof_raw: dict[str, list[Array]] = {c: [] for c in configs}
    oof_y: list[Array] = []
    tops: dict[str, dict[str, list[Array]]] = {c: {"in": [], "absent": [], "gibberish": []} for c in configs}
    ranks: dict[str, list[Array]] = {"word_original": [], "char_profile": [], **{c: [] for c in configs}}
    if k >= 2:
        t1 = time.perf_counter()
        report.folds = k
        fold = assign_folds(owner, data.questions, k, seed)
        for f in range(k):
            train_q, test_q = np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]
            if len(test_q) == 0:
                continue
            if len(test_q) > caps.eval_questions:
                test_q = np.sort(rng.choice(test_q, caps.eval_questions, replace=False))
            ix = Index.build(originals, answers, questions.rows(train_q), owner[train_q])
            test_counts, truth = questions.rows(test_q), owner[test_q]
            cand = candidates_for(ix, test_counts, per, caps.chunk, baselines=True)
            assert cand.baseline_word is not None and cand.baseline_char is not None
            base_char: Array = cand.baseline_char
            ranks["word_original"].append(full_rank(cand.baseline_word, truth))
            ranks["char_profile"].append(full_rank(base_char, truth))
            if not configs:
                del ix, cand, base_char
                continue
            x, y, _ = _training_rows(ix, questions.rows(train_q), owner[train_q], np.arange(len(train_q)), caps,
                                     per, rng)
            # out-of-domain queries for the threshold: a subsample of the held-out questions, asked with their
            # own original removed from the FAQ, and with their characters shuffled
            ood = np.sort(rng.choice(len(test_q), min(len(test_q), caps.ood_questions), replace=False))
            absent = candidates_for(ix, test_counts.rows(ood), per, caps.chunk, exclude=truth[ood])
            gib = candidates_for(ix, Counts.of(_shuffled([data.questions[i] for i in test_q[ood]], rng)), per,
                                 caps.chunk)
            oof_y.append((cand.original == truth[cand.query]).astype(np.int64))
            for name in configs:
                score = scorer(name, x, y)
                raw = score(cand.features)
                ranks[name].append(rank_of_truth(cand.query, cand.original, raw, truth, base_char))
                oof_raw[name].append(raw)
                tops[name]["in"].append(_top_per_query(cand.query, raw, len(test_q)))
                tops[name]["absent"].append(_top_per_query(absent.query, score(absent.features), len(ood)))
                tops[name]["gibberish"].append(_top_per_query(gib.query, score(gib.features), len(ood)))
            log(f"fold {f + 1}/{k}: " + ", ".join(f"{c} top1 {np.mean(ranks[c][-1] == 1):.3f}" for c in configs))
            del ix, cand, base_char, absent, gib, x, y  # one fold's index at a time (memory)
        pooled = {who: summarize(np.concatenate(r)) for who, r in ranks.items() if r}
        report.evaluated = sum(len(r) for r in ranks["char_profile"])
        report.configs = {c: pooled[c] for c in configs}
        if configs:
            # the reranker: best pooled out-of-fold MRR (ties: the earlier, simpler one)
            report.final_config = max(configs, key=lambda c: (pooled[c]["mrr"], -configs.index(c)))
            pooled["model"] = pooled[report.final_config]
        else:
            pooled["model"] = pooled["char_profile"]
        report.metrics = {who: pooled[who] for who in ("model", "word_original", "char_profile")}
        report.seconds["cross-validation"] = time.perf_counter() - t1

    platt: tuple[float, float] | None = None
    threshold: float | None = None
    if report.final_config:
        name = report.final_config
        platt = fit_platt(np.concatenate(oof_raw[name]), np.concatenate(oof_y))
        right = np.concatenate(ranks[name]) == 1
        cal = {kind: platt_apply(np.asarray(platt), np.concatenate(v)) for kind, v in tops[name].items()}
        report.calibrated = True
        groups = {"right": cal["in"][right], "wrong": cal["in"][~right], "absent": cal["absent"],
                  "gibberish": cal["gibberish"]}
        threshold, j = youden(groups["right"], np.concatenate([groups["wrong"], groups["absent"],
                                                                groups["gibberish"]]))
        report.threshold = threshold
        report.threshold_stats = {
            "youden_j": round(j, 4),
            **{f"kept_{kind}": round(float(np.mean(v >= threshold)) if len(v) else 0.0, 4)
               for kind, v in groups.items()},
        }

    t2 = time.perf_counter()
    ix = Index.build(originals, answers, questions, owner)
    reranker = None
    if report.final_config in CONFIGS:
        x, y, _ = _training_rows(ix, questions, owner, np.arange(len(owner)), caps, per, rng)
        reranker = _fit(CONFIGS[report.final_config](), x, y)
    report.seconds["final fit"] = time.perf_counter() - t2
    report.seconds["total"] = time.perf_counter() - t0
    return FAQMatcher.from_index(ix, reranker, platt, threshold, per), report


def fit_platt(raw: Array, y: Array) -> tuple[float, float]:
    """Platt scaling on the logit of the reranker's output: p = sigmoid(a * logit(raw) + b)."""
    if len(np.unique(y)) < 2:
        return 1.0, 0.0
    eps = 1e-6
    r = np.clip(raw, eps, 1 - eps)
    z = np.log(r / (1 - r)).reshape(-1, 1)
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(z, y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])
