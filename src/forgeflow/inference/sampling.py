"""How one sequence picks its next token from the model's logits, the same way in every runtime.

Order of work on a step's logits (a 1-D array over the vocabulary):

1. log-probabilities, when asked for, from the raw logits (what the model said, before anything below);
2. OpenAI's logit bias (added), frequency and presence penalties over the tokens generated so far
   (`logit -= count * frequency_penalty + (count > 0) * presence_penalty`);
3. the grammar's mask (inference/grammar.py): tokens it does not allow next can never be picked;
4. greedy: the largest; else temperature, top-k, top-p (nucleus), and a draw from the sequence's own
   seeded generator, so a seed repeats whatever else shares the batch.

A sequence with none of these (greedy, no bias, penalties, grammar or logprobs) is `plain`: a runtime
may take its batch's argmax for it without calling `pick`.

The work is numpy on one thread, in float64: the `llamacpp` runtime's threads must have the cores to
themselves (torch's thread pool would compete with them at every token), and no bias or penalty can
overflow. Top-p ranks a bounded candidate set, then a wider one or the whole vocabulary only while
the nucleus is wider than the set, so the distribution is exactly the nucleus's; the draw is one
uniform number from the sequence's generator against the cumulative weights. Logits that are not
finite (a broken model) never fail the pick: NaN counts as impossible, +inf as certain.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from forgeflow.chat import Sampling
from forgeflow.inference.grammar import Matcher
from forgeflow.inference.runtimes.base import RawLogprob

CANDIDATES = 256  # tokens ranked for top-p first (then 16 times as many, then all)
LOGPROB_FLOOR = -9999.0  # the logprob OpenAI reports for a token the model gives no chance
_CERTAIN = 1e300  # where a logit is +inf: finite, so differences stay numbers


class Sampler:
    """One sequence's token picker, with the state its settings need (token counts, generator, grammar)."""

    def __init__(self, sampling: Sampling = Sampling(), *, matcher: Matcher | None = None,
                 logprobs: int | None = None) -> None:
        self.sampling = sampling
        self.matcher = matcher
        self.logprobs = logprobs
        self.penalized = bool(sampling.frequency_penalty or sampling.presence_penalty)
        self.plain = (sampling.greedy and matcher is None and logprobs is None and not self.penalized
                      and not sampling.logit_bias)
        self._seen: Counter[int] = Counter()  # tokens generated so far, for the penalties
        self._counts: np.ndarray | None = None  # the same over the vocabulary, made at the first pick
        self._rng: np.random.Generator | None = None

    def pick(self, logits: Any) -> tuple[int, RawLogprob | None]:
        """The next token for this step's logits (a 1-D array on the CPU), and its raw logprob (with the top
        alternatives) if asked."""
        raw = _finite(np.array(logits, dtype=np.float64))  # a copy: never the runtime's own buffer
        described = None if self.logprobs is None else _LogSoftmax(raw)
        scores = self._adjusted(raw)
        token = int(scores.argmax()) if self.sampling.greedy else self._draw(scores)
        return token, (None if described is None else described.describe(token, self.logprobs or 0))

    def accept(self, token: int) -> bool:
        """Record the token picked; True when the grammar allows nothing after it (the answer is complete)."""
        if self.penalized:
            self._seen[token] += 1
            if self._counts is not None:
                self._counts[token] += 1
        if self.matcher is None:
            return False
        self.matcher.consume(token)
        return self.matcher.finished

    def _adjusted(self, raw: np.ndarray) -> np.ndarray:
        s = self.sampling
        scores = raw
        if s.logit_bias:
            scores = scores.copy()
            for token, bias in s.logit_bias:
                scores[token] += bias
            scores = _finite(scores)
        if self.penalized:
            if self._counts is None:
                self._counts = np.zeros(raw.shape[0])
                for token, count in self._seen.items():
                    self._counts[token] = count
            seen = self._counts > 0
            scores = scores.copy()
            with np.errstate(invalid="ignore", over="ignore"):  # only settings out of range overflow
                scores[seen] -= self._counts[seen] * s.frequency_penalty + s.presence_penalty
            scores = _finite(scores)
        allowed = None
        if self.matcher is not None:
            allowed = self.matcher.allowed()[: raw.shape[0]]
            if not allowed.any():
                raise RuntimeError("the grammar allows no next token")
            scores = np.where(allowed, scores, -np.inf)
        if not scores.max() > -np.inf:  # the model gave every allowed token no chance: any allowed one will do
            scores = np.zeros(raw.shape[0]) if allowed is None else np.where(allowed, 0.0, -np.inf)
        return scores

    def _draw(self, scores: np.ndarray) -> int:
        s = self.sampling
        if self._rng is None:
            self._rng = np.random.default_rng(None if s.seed is None else s.seed % 2**64)
        ids, weights = distribution(scores, s)
        index = self._choose(weights)
        return index if ids is None else int(ids[index])

    def _choose(self, weights: np.ndarray) -> int:
        """An index drawn with probability proportional to its weight, from one uniform number."""
        assert self._rng is not None
        cumulative = np.cumsum(weights)
        index = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        if index >= len(weights):  # rounding at the very top: the last token with any weight
            index = int(np.flatnonzero(weights)[-1])
        return index


def distribution(scores: np.ndarray, sampling: Sampling) -> tuple[np.ndarray | None, np.ndarray]:
    """The tokens a draw may pick (None: the whole vocabulary, in order) and their unnormalized probabilities,
    after temperature, top-k and top-p."""
    n = scores.shape[0]
    with np.errstate(over="ignore"):  # a huge gap over a tiny temperature is -inf: weight 0
        weights = np.exp((scores - scores.max()) / max(sampling.temperature, 1e-5))
    if 0 < sampling.top_k < n:  # every token at least as likely as the k-th stays (ties included)
        kth = np.partition(scores, n - sampling.top_k)[n - sampling.top_k]
        weights[scores < kth] = 0.0
    if sampling.top_p >= 1.0:
        return None, weights
    # the nucleus: the smallest prefix of the tokens, most likely first, whose mass reaches top_p
    total = weights.sum()
    for width in (CANDIDATES, CANDIDATES * 16, n):  # wider sets only while the nucleus is wider than the set
        ranked = _ranked(weights, width)
        mass = np.cumsum(weights[ranked]) / total
        if mass[-1] >= sampling.top_p:
            break
    kept = ranked[mass - weights[ranked] / total < sampling.top_p]
    return kept, weights[kept]


class _LogSoftmax:
    """The raw logits' log-probabilities, computed only for the tokens a response shows."""

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw
        top = raw.max()
        self.norm = top + np.log(np.exp(raw - top).sum()) if top > -np.inf else np.inf

    def describe(self, token: int, k: int) -> RawLogprob:
        top: tuple[tuple[int, float], ...] = ()
        if k:
            ids = _ranked(self.raw, min(k, self.raw.shape[0]))
            top = tuple((int(i), self._logprob(i)) for i in ids)
        return self._logprob(token), top

    def _logprob(self, token: int) -> float:
        value = float(self.raw[token] - self.norm)
        return value if value >= LOGPROB_FLOOR else LOGPROB_FLOOR  # also NaN, -inf


def _finite(raw: np.ndarray) -> np.ndarray:
    """The logits with NaN as -inf (never picked) and +inf as a huge finite value (certain)."""
    if not np.isfinite(raw).all():
        raw = np.nan_to_num(raw, nan=-np.inf, posinf=_CERTAIN, neginf=-np.inf)
    return raw


def _ranked(values: np.ndarray, m: int) -> np.ndarray:
    """The indices of the `m` largest values, largest first (a partition, then a sort of those only)."""
    n = values.shape[0]
    if m >= n:
        return np.argsort(-values)  # quicksort: several times faster than a stable sort over a vocabulary
    best = np.argpartition(values, n - m)[n - m:]
    return best[np.argsort(-values[best], kind="stable")]
