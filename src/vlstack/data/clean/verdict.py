"""The one result type every filter returns, so the pipeline can log, plot and account uniformly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """One filter's judgement of one sample."""

    score: float | None = None
    """The filter's measurement (blur score, perplexity, cosine, ...) for histograms; None if it has none."""
    reason: str | None = None
    """Reason code when the sample should be dropped (e.g. 'blur'); None keeps it."""
    detail: str = ""
    """Specifics for `rejected.jsonl` and the report: a decoder error, 'duplicate of s12', ..."""

    @property
    def keep(self) -> bool:
        return self.reason is None
