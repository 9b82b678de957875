"""Cleaning filters: one module per filter, each a pure function (or a small stateful index) over
PIL images and strings that returns a `Verdict` — a score to histogram and, when the sample
should be dropped, a reason code for `rejected.jsonl`.

- `quality`: decode/validate (pixel limit, mode conversion, min side, aspect ratio) and blur
- `perplexity`: text perplexity under an n-gram (Kneser–Ney) or a local HF causal LM
- `relevance`: image–text relevance through a scorer interface (CLIP, vlstack ITC heads)
- `privacy`: text PII → typed placeholders, face blurring, EXIF/GPS stripping
- `dedup`: exact, perceptual-hash and MinHash-LSH duplicate detection
- `normalize`: resize + mean/std at load time

Put together: `pipeline` (CleanConfig and the per-sample stages), `run` (`clean()`:
executors, the ordered dedup pass, output shards, `rejected.jsonl`) and `report`
(report.md and histograms). Scoring a run against injected defects is `vlstack.synthetic.truth`.
"""

from vlstack.data.clean.verdict import Verdict

__all__ = ["Verdict"]
