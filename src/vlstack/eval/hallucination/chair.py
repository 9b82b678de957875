"""CHAIR_s and CHAIR_i (Rohrbach et al. 2018; LisaAnne/Hallucination `utils/chair.py`) of captions
against each scene's objects, through the lexicon's synonyms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from vlstack.errors import DataError
from vlstack.eval.hallucination.entities import Lexicon, extract_entities


def chair(captions: Sequence[str], ground_truth: Sequence[Iterable[str]], lexicon: Lexicon) -> dict[str, Any]:
    """CHAIR_s (captions with a hallucinated object / captions) and CHAIR_i (hallucinated object
    mentions / object mentions) of captions against each image's objects (canonical names).

    As chair.py: every mention counts, repeated or negated ("no dog" mentions a dog), and a
    mention is mapped to its canonical object through the synonym list (`lexicon`) before it
    is compared. chair.py singularises words with `pattern`; the lexicon lists the plurals
    instead. Where chair.py divides by zero (no object mentioned anywhere), CHAIR_i is 0.
    """
    if len(captions) != len(ground_truth):
        raise DataError(f"CHAIR needs one ground-truth object list per caption: {len(captions)} captions, "
                        f"{len(ground_truth)} lists")
    known = set(lexicon.names["object"])
    sentences, mentions, hallucinated = [], 0, 0
    for caption, objects in zip(captions, ground_truth):
        truth = set(objects)
        unknown = sorted(truth - known)
        if unknown:
            raise DataError(f"CHAIR: ground-truth objects {unknown} are not in the lexicon's objects "
                            f"({', '.join(sorted(known))}); a caption could never match them")
        words = [e.object for e in extract_entities(caption, lexicon) if e.object]
        wrong = [w for w in words if w not in truth]
        mentions += len(words)
        hallucinated += len(wrong)
        sentences.append({"caption": caption, "objects": sorted(truth), "mentioned": words, "hallucinated": wrong,
                          "chair_s": float(bool(wrong)), "chair_i": len(wrong) / len(words) if words else 0.0})
    return {"chair_s": sum(s["chair_s"] for s in sentences) / len(sentences) if sentences else 0.0,
            "chair_i": hallucinated / mentions if mentions else 0.0,
            "captions": len(sentences), "mentions": mentions, "hallucinated_mentions": hallucinated,
            "sentences": sentences}
