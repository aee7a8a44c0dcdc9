"""How one sequence picks its next token from the model's logits, the same way in every runtime.

Order of work on a step's logits (a 1-D tensor over the vocabulary):

1. log-probabilities, when asked for, from the raw logits (what the model said, before anything below);
2. OpenAI's logit bias (added), frequency and presence penalties over the tokens generated so far
   (`logit -= count * frequency_penalty + (count > 0) * presence_penalty`);
3. the grammar's mask (inference/grammar.py): tokens it does not allow next can never be picked;
4. greedy: the largest; else temperature, top-k, top-p (nucleus), and a draw from the sequence's own
   seeded generator, so a seed repeats whatever else shares the batch.

A sequence with none of these (greedy, no bias, penalties, grammar or logprobs) is `plain`: a runtime
may take its batch's argmax for it without calling `pick`.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from forgeflow.chat import Sampling
from forgeflow.inference.grammar import Matcher
from forgeflow.inference.runtimes.base import RawLogprob


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
        self._counts: Any = None  # the same as a tensor over the vocabulary, made at the first pick
        self._generator: Any = None
        self._bias: tuple[Any, Any] | None = None

    def pick(self, logits: Any) -> tuple[int, RawLogprob | None]:
        """The next token for this step's logits, and its raw logprob (with the top alternatives) if asked."""
        import torch

        raw = logits.float()
        logprob = None
        if self.logprobs is not None:
            logprob = torch.log_softmax(raw, dim=-1)
        scores = self._adjusted(raw)
        s = self.sampling
        if s.greedy:
            token = int(scores.argmax())
        else:
            token = self._draw(scores, torch)
        return token, (None if logprob is None else self._describe(logprob, token, torch))

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

    def _adjusted(self, raw: Any) -> Any:
        import torch

        s = self.sampling
        scores = raw
        if s.logit_bias:
            if self._bias is None:
                ids, values = zip(*s.logit_bias)
                self._bias = (torch.tensor(ids, device=raw.device), torch.tensor(values, device=raw.device))
            scores = scores.index_add(0, self._bias[0], self._bias[1].to(scores.dtype))
        if self.penalized:
            if self._counts is None:
                self._counts = torch.zeros_like(raw)
                for token, count in self._seen.items():
                    self._counts[token] = count
            scores = scores - self._counts * s.frequency_penalty - (self._counts > 0).to(raw.dtype) * s.presence_penalty
        if self.matcher is not None:
            allowed = torch.from_numpy(self.matcher.allowed()[: raw.shape[-1]]).to(raw.device)
            if not bool(allowed.any()):
                raise RuntimeError("the grammar allows no next token")
            scores = scores.masked_fill(~allowed, float("-inf"))
        return scores

    def _draw(self, scores: Any, torch: Any) -> int:
        s = self.sampling
        if self._generator is None:
            seed = s.seed if s.seed is not None else random.getrandbits(63)
            self._generator = torch.Generator(device=scores.device).manual_seed(seed)
        scores = scores / max(s.temperature, 1e-5)
        if 0 < s.top_k < scores.shape[-1]:
            kth = torch.topk(scores, s.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if s.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            drop = ordered.cumsum(-1) - ordered >= s.top_p
            ordered[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, ordered)
        return int(torch.multinomial(probs, 1, generator=self._generator).item())

    def _describe(self, logprob: Any, token: int, torch: Any) -> RawLogprob:
        top: tuple[tuple[int, float], ...] = ()
        if self.logprobs:
            values, ids = torch.topk(logprob, min(self.logprobs, logprob.shape[-1]))
            top = tuple(zip(ids.tolist(), values.tolist()))
        return float(logprob[token]), top
