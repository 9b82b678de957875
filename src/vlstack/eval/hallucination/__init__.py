"""Hallucination: the article's entity-level detector, POPE probes and CHAIR, on scenes with known objects.

- **Entities** are read from a response with the suite's lexicon (objects, attributes, places
  and their synonyms, any language; English plurals derived): a noun phrase is an object with
  the attributes before it ("two red circles", "红色的圆形") or after a copula ("the
  circle is red"); a negation earlier in its clause ("there is no blue square",
  "没有三角形") marks it as not claimed. spaCy is not used: no model ships with vlstack.
- **Detector**: each claimed entity is scored with the model's ITC embeddings. The
  response's entities are rendered in the caption grammar the model was pretrained on
  ("a red circle on the left and ..."), which makes Chinese and English responses one
  case; then the entity's attribute is swapped for every other attribute of the lexicon,
  and its object for every other object. Each part's score is the softmax (at the ITC
  temperature) of the original caption's cosine with the image among its swaps: the
  probability that the image shows this colour (shape) rather than another in the same
  context. The entity's score is the lower of the two. Raw phrase cosines ("a red
  circle") separate faithful from hallucinated entities far worse (measured: caption
  AUROC 0.65 vs 0.88 on one tiny checkpoint). Labels: below `low` hallucination, above
  `high` reliable, uncertain between; the article's thresholds are 0.15 / 0.3, ours are
  fitted on held-out faithful vs hallucinated captions and stored in the checkpoint
  (`hallucination_calibration.json`, read by `HallucinationDetector.from_checkpoint`).
- **POPE** (Li et al. 2023; AoiDragon/POPE `utils.py`): yes/no probes from ground-truth
  objects with random, popular and adversarial (co-occurrence) negatives, answered
  through the Engine and scored by `metrics.pope_metrics`.
- **CHAIR** (Rohrbach et al. 2018; LisaAnne/Hallucination `utils/chair.py`): CHAIR_s and
  CHAIR_i of generated captions against each scene's objects, through the synonym list.

Modules: `entities` (lexicon, extraction), `detector` (scores, calibration, labels), `pope`,
`chair`, `suite` (the scenes on disk), `run` (the evaluation); their public names are re-exported here.
"""

from vlstack.eval.hallucination.chair import chair  # noqa: F401
from vlstack.eval.hallucination.detector import (  # noqa: F401
    ARTICLE_THRESHOLDS,
    CALIBRATION_FILE,
    LABELS,
    SCORER,
    Calibration,
    Detection,
    HallucinationDetector,
    auroc,
    fit_calibration,
)
from vlstack.eval.hallucination.entities import (  # noqa: F401
    BOUNDARIES,
    COPULAS,
    FILLERS,
    GENERIC_NOUNS,
    LEXICON_FILE,
    NEGATIONS,
    Entity,
    Lexicon,
    extract_entities,
    render,
)
from vlstack.eval.hallucination.pope import (  # noqa: F401
    POPE_SETTINGS,
    POPE_TEMPLATE,
    PopeProbe,
    co_occurrence,
    pope_probes,
)
from vlstack.eval.hallucination.run import (  # noqa: F401
    HallucinationConfig,
    evaluate_chair,
    evaluate_detector,
    evaluate_pope,
    run_hallucination,
    summarize,
)
from vlstack.eval.hallucination.suite import Scene, SceneObject, Suite, read_suite, write_suite  # noqa: F401
