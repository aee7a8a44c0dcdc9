"""The metrics of an evaluation, as pure functions of strings and numbers: SQuAD's exact match and token F1,
ROUGE-L (rouge-score), percentile-bootstrap confidence intervals over rows and the paired comparison of two models
scored on the same rows.

Exact match and F1 follow the SQuAD v1.1 evaluation script: both texts are lowercased, stripped of punctuation
and of the articles a/an/the, and their whitespace collapsed before comparing. An aggregate is a mean over rows,
weighted when rows count differently (the loss: by each reference answer's tokens, as training's eval_loss is a
mean over tokens), and its interval resamples rows, never tokens, since rows are what was sampled.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

RESAMPLES = 1000
GENERATION_METRICS = ("exact_match", "f1", "rouge_l")
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
SAME_TOLERANCE = 1e-9  # two row scores closer than this are the same (float noise between equal answers)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WORDS = re.compile(r"\w+")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, punctuation and articles removed, whitespace collapsed."""
    text = (text or "").lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalised answer equals the normalised reference, else 0.0."""
    return float(normalize_answer(answer) == normalize_answer(reference))


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's token F1 of the normalised answer against the normalised reference (1.0 when both are empty)."""
    got, want = normalize_answer(answer).split(), normalize_answer(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


class _WordTokenizer:
    """rouge-score's tokenizer interface: lowercased Unicode words, split as F1's words are, punctuation dropped
    (its own default keeps only [a-z0-9], so any other script scored 0). Articles stay: ROUGE counts them."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall((text or "").lower())


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_WordTokenizer())


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words, in any script) of the answer against the
    reference."""
    return float(_rouge().score(reference or "", answer or "")["rougeL"].fmeasure)


def generation_scores(answer: str, reference: str, metrics: Sequence[str]) -> dict[str, float]:
    """The generation metrics among `metrics` for one answer."""
    scorers = {"exact_match": exact_match, "f1": token_f1, "rouge_l": rouge_l}
    return {m: scorers[m](answer, reference) for m in metrics if m in scorers}


def _arrays(values: Sequence[float], weights: Sequence[float] | None) -> tuple[Any, Any]:
    import numpy as np

    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    if v.shape != w.shape:
        raise ValueError(f"{len(v)} values but {len(w)} weights")
    return v, w


def weighted_mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float | None:
    """The (weighted) mean, or None for no values."""
    v, w = _arrays(values, weights)
    return float((v * w).sum() / w.sum()) if len(v) and w.sum() > 0 else None


def bootstrap_ci(values: Sequence[float], *, weights: Sequence[float] | None = None, confidence: float = 0.95,
                 seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the (weighted) mean: rows drawn with replacement `resamples` times with a
    seeded generator, so one evaluation gives one interval. None for no values."""
    import numpy as np

    v, w = _arrays(values, weights)
    if not len(v):
        return None
    idx = np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))
    means = (v[idx] * w[idx]).sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-300)
    return _percentiles(means, confidence)


def _percentiles(samples: Any, confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(values: Sequence[float | None], *, name: str, weights: Sequence[float] | None = None,
              confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """`{name: mean, name_ci: [lo, hi]}` over the rows that have a value (None: the row could not be scored, e.g.
    a judge that failed; their count is `name_failed`). The loss brings `perplexity` = exp(loss) and its interval."""
    kept = [i for i, v in enumerate(values) if v is not None]
    vals = [float(values[i]) for i in kept]  # type: ignore[arg-type]
    wts = [float(weights[i]) for i in kept] if weights is not None else None
    mean = weighted_mean(vals, wts)
    ci = bootstrap_ci(vals, weights=wts, confidence=confidence, seed=seed)
    out: dict[str, Any] = {name: mean, f"{name}_ci": list(ci) if ci else None}
    if len(kept) < len(values):
        out[f"{name}_failed"] = len(values) - len(kept)
    if name == "loss":
        out["perplexity"] = _exp(mean)
        out["perplexity_ci"] = [_exp(ci[0]), _exp(ci[1])] if ci else None
    return out


def _exp(value: float | None) -> float | None:
    if value is None:
        return None
    return math.exp(value) if value < 700 else None  # past a float: no number JSON can carry


def compare(model: Sequence[float | None], baseline: Sequence[float | None], *, name: str,
            weights: tuple[Sequence[float], Sequence[float]] | None = None, confidence: float = 0.95,
            seed: int = 0, resamples: int = RESAMPLES) -> dict[str, Any]:
    """The model against the baseline on the same rows for one metric: `delta` (model mean - baseline mean over
    the rows both scored), its paired-bootstrap interval (both sides resampled with the same rows), and how many
    rows got better, worse or stayed the same (for the loss, lower is better)."""
    import numpy as np

    both = [i for i, (a, b) in enumerate(zip(model, baseline)) if a is not None and b is not None]
    m = np.asarray([model[i] for i in both], dtype=float)
    b = np.asarray([baseline[i] for i in both], dtype=float)
    wm = np.asarray([weights[0][i] for i in both], dtype=float) if weights else np.ones_like(m)
    wb = np.asarray([weights[1][i] for i in both], dtype=float) if weights else np.ones_like(b)
    sign = -1.0 if name in LOWER_IS_BETTER else 1.0
    diff = (m - b) * sign
    out: dict[str, Any] = {
        "delta": None, "delta_ci": None,
        "better": int((diff > SAME_TOLERANCE).sum()), "worse": int((diff < -SAME_TOLERANCE).sum()),
        "same": int((np.abs(diff) <= SAME_TOLERANCE).sum()),
    }
    if not both:
        return out
    out["delta"] = float((m * wm).sum() / wm.sum() - (b * wb).sum() / wb.sum())
    idx = np.random.default_rng(seed).integers(0, len(both), size=(resamples, len(both)))
    deltas = (m[idx] * wm[idx]).sum(1) / wm[idx].sum(1) - (b[idx] * wb[idx]).sum(1) / wb[idx].sum(1)
    out["delta_ci"] = list(_percentiles(deltas, confidence))
    return out


def row_change(model: dict[str, Any], baseline: dict[str, Any], metrics: Sequence[str]) -> str:
    """Whether a row got better, worse or stayed the same: by how many of its metrics improved against how many
    got worse (a metric the row lacks on either side does not vote)."""
    votes = 0
    for name in metrics:
        a, b = model.get(name), baseline.get(name)
        if a is None or b is None:
            continue
        diff = (a - b) * (-1.0 if name in LOWER_IS_BETTER else 1.0)
        votes += (diff > SAME_TOLERANCE) - (diff < -SAME_TOLERANCE)
    return "better" if votes > 0 else "worse" if votes < 0 else "same"
