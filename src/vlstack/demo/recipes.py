"""Every recipe of `vlstack demo`: `DemoConfig()` is the full demo (~15 minutes on 2 CPU cores),
`DemoConfig.quick()` checks the plumbing in a few minutes.

One config reaches every stage, so `configs/demo.yaml` and `--set` can change any of them. The
library configs inside it are the ones the CLI commands take; the demo fills in what it makes
itself (the data paths of the synthetic corpora it writes, the checkpoints of earlier stages).
Instruction datasets are named by their synthetic generator (`vlstack.synthetic.instructions.DATASETS`)
with a sample count; the demo writes each one and points the stage at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlstack.align.dpo import DPOConfig
from vlstack.align.preference import PreferenceDataConfig
from vlstack.apps.embodied import EmbodiedConfig, EpisodeConfig
from vlstack.demo.deployment import DemoDeploymentConfig
from vlstack.eval.deployment import DeploymentEvalConfig
from vlstack.eval.hallucination import HallucinationConfig
from vlstack.eval.harness import EvalConfig
from vlstack.infer.quantize import QuantizeConfig
from vlstack.synthetic.phrasings import CHOICE_HEADERS, CHOICE_INSTRUCTIONS
from vlstack.train.finetune import DatasetSpec, FinetuneConfig, FinetuneEvalConfig, StageConfig
from vlstack.train.pretrain import PretrainConfig
from vlstack.train.trainer import TrainConfig

TRAINED_PHRASING = {name: "{question}" for name in ("vqav2", "gqa", "docvqa", "chartqa", "vqarad")} | {
    "aokvqa": f"{{question}}\n{CHOICE_HEADERS[1]}{{options}}\n{CHOICE_INSTRUCTIONS[1]}"}
"""A training phrasing of each benchmark's questions: the bare question; A-OKVQA's options under a header and
another instruction."""


@dataclass
class DemoCorpusConfig:
    """The pretraining corpus: shape scenes with true captions, written as shards."""

    train_samples: int = 6000
    """Scenes of corpus `pretrain.train.seed` for training."""
    test_samples: int = 500
    """Held-out scenes (corpus seed + 10000) for retrieval and matching accuracy."""


@dataclass
class DemoCleanConfig:
    """The cleaning stage: a spoiled caption corpus with ground truth, cleaned end to end."""

    samples: int = 800
    """Synthetic captions to clean."""
    defect_rate: float = 0.5
    """Fraction of them spoiled, spread over every defect type (recorded in defects.jsonl)."""
    trusted: int = 300
    """Held-out clean captions: the perplexity reference and the relevance calibration set."""
    workers: int = 2


@dataclass
class DemoAppsConfig:
    """One short, checkable run of each application."""

    study_scans: int = 16
    """Synthetic scans in the medical demo's study folder (besides pydicom's files)."""
    findings_tokens: int = 64
    line_frames: int = 60
    """Frames of the inspection demo's production-line video."""
    analysis_tokens: int = 48
    embodied: EmbodiedConfig = field(default_factory=lambda: EmbodiedConfig(episode=EpisodeConfig(max_plans=2)))


def _finetune() -> FinetuneConfig:
    """The article's plan sized for the `tiny` preset after the demo's few pretraining minutes.

    Larger learning rates than the article's (which suit a pretrained model of real size), fewer
    steps, and the domain stage adds the applications' data (synthetic scans, surface-defect
    crops) so the demo's medical and inspection runs get answers their reports can parse. Unlike
    the article, the domain stage trains the vision tower: a tiny tower pretrained on shape scenes
    has never seen a scan: frozen, 66% of held-out "is there a lesion?" answers were right, trained,
    97%. The general stage trains the vision tower at a tenth of the rate: at the full rate one run
    lost the colours pretraining taught (held-out colour questions 0.14); at a tenth, held-out shapes
    VQA (first answer token) was 0.723 against 0.705 at the full rate, within the run-to-run spread. The
    safety stage uses the plain `sft` loss: at the sizes tried the `safety` loss either refused nearly
    every request or few more harmful than safe ones; `sft` at 3e-4 for 250 steps refused every held-out
    harmful request and none of the safe look-alikes (150 steps refused 31% of the look-alikes). The
    general stage has most of the steps: 450 rather than 250 (at 100 domain steps rather than 200) raised
    the full demo's GQA from 37.0 to 55.0 and 77.0 (two runs) and its A-OKVQA from chance to 29-31.
    The safety stage replays every kind of benign request: without `shapes_chat` the final model
    answered CHAIR's "Describe the image." with scan findings or a refusal (0 objects in 50
    captions); without documents and charts it refused 36% of the DocVQA suite's questions and 57%
    of ChartQA's; without surface-defect crops the inspection app got scan findings ("No focal
    lesion.") for every defect."""
    general = [DatasetSpec("shapes_vqa", samples=4000), DatasetSpec("shapes_chat", samples=1000)]
    domain = [DatasetSpec("documents_vqa", samples=300), DatasetSpec("charts_vqa", samples=300),
              DatasetSpec("scans", samples=2000), DatasetSpec("surface_defects", samples=600),
              DatasetSpec("shapes_vqa", samples=600)]
    safety = [DatasetSpec("safety", samples=2000), DatasetSpec("shapes_vqa", samples=1500),
              DatasetSpec("shapes_chat", samples=500), DatasetSpec("scans", samples=500),
              DatasetSpec("surface_defects", samples=200),
              DatasetSpec("documents_vqa", samples=200), DatasetSpec("charts_vqa", samples=200)]
    return FinetuneConfig(
        stages=[
            StageConfig("general", general, lr=5e-4, steps=450, batch_size=32, lr_scale={"vision": 0.1}),
            StageConfig("domain", domain, lr=5e-4, steps=100, batch_size=32),
            StageConfig("safety", safety, lr=3e-4, steps=250, batch_size=32),
        ],
        train=TrainConfig(warmup_steps=10, log_every=10, measure_mfu=False, tensorboard=False, validate_every=50),
        validation=[DatasetSpec(name, samples=64) for name in
                    dict.fromkeys(spec.name for specs in (general, domain, safety) for spec in specs)],
        eval=FinetuneEvalConfig(datasets=[DatasetSpec(name, samples=100) for name in ("shapes_vqa", "scans", "safety")],
                                max_new_tokens=40, every_stage=False),
    )


def _quick_pretrain() -> PretrainConfig:
    """100 steps of 32 at lr 5e-4: at the full recipe's 1e-3 the streamed order of the scene shards
    collapsed ITC to ln(batch) (every image embedding alike) in 2 of 4 quick runs, with only 10 warm-up
    steps; at 5e-4 each run learned (R@1 0.30 and 0.32). The full recipe (250 x 48, 25 warm-up steps)
    learns at 1e-3: at 5e-4 its R@1 rose (0.43 against 0.28) but its ITM head stayed near chance (0.54
    against 0.80) in 250 steps."""
    return PretrainConfig(train=TrainConfig(steps=100, batch_size=32, lr=5e-4, warmup_steps=10, log_every=5))


def _align() -> DPOConfig:
    """DPO against the fine-tuned model as reference, with the SFT term on the chosen answers (plain DPO
    lowered held-out VQA accuracy by 4 points, DPO + SFT by 1.25, on 400 questions), and 200 held-out
    questions so that a point of accuracy is two answers, not a fraction of one."""
    return DPOConfig(sft_weight=1.0, data=PreferenceDataConfig(train_items=512, eval_items=200))


@dataclass
class DemoConfig:
    """What the demo builds and how long it trains; every stage's config, in order."""

    out_dir: str = "runs/demo"
    corpus: DemoCorpusConfig = field(default_factory=DemoCorpusConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """The pretraining run; its data, tokenizer and out_dir are the demo's own."""
    clean: DemoCleanConfig = field(default_factory=DemoCleanConfig)
    finetune: FinetuneConfig = field(default_factory=_finetune)
    """Progressive fine-tuning from the pretrained checkpoint; datasets by synthetic generator name."""
    align: DPOConfig = field(default_factory=_align)
    """The preference stage from the fine-tuned checkpoint (shapes_vqa pairs, a wrong answer rejected)."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(blind=True))
    """The six benchmarks on synthetic suites in their official formats, each also answered blind."""
    trained_phrasing: dict[str, str] = field(default_factory=lambda: dict(TRAINED_PHRASING))
    """The same suites asked again in these phrasings, which the instruction data trains (`synthetic.phrasings`):
    an answer that holds only in its own template shows as a gap between the two. Empty: not asked."""
    suite_items: int = 200
    """Questions per synthetic benchmark suite: enough that a 95% interval is about ±7 points."""
    hallucination: HallucinationConfig = field(default_factory=HallucinationConfig)
    """Detector AUROC, POPE and CHAIR on a synthetic hallucination suite of these sizes."""
    deployment: DemoDeploymentConfig = field(default_factory=DemoDeploymentConfig)
    apps: DemoAppsConfig = field(default_factory=DemoAppsConfig)

    @classmethod
    def quick(cls) -> DemoConfig:
        """Every stage at a size that checks the plumbing (a few minutes on 2 cores; the tests run it)."""
        return cls(
            out_dir="runs/demo-quick",
            corpus=DemoCorpusConfig(train_samples=1500, test_samples=200),
            pretrain=_quick_pretrain(),
            clean=DemoCleanConfig(samples=200, trusted=100),
            finetune=FinetuneConfig(
                stages=[
                    StageConfig("general", [DatasetSpec("shapes_vqa", samples=256)], lr=1e-3, steps=12,
                                batch_size=16),
                    StageConfig("domain", [DatasetSpec("charts_vqa", samples=32), DatasetSpec("scans", samples=32),
                                           DatasetSpec("shapes_vqa", samples=32)], lr=3e-4, steps=2, batch_size=16,
                                freeze=["vision"]),
                    StageConfig("safety", [DatasetSpec("safety", samples=128), DatasetSpec("shapes_vqa", samples=64)],
                                lr=3e-4, steps=6, batch_size=16, loss="safety"),
                ],
                train=TrainConfig(warmup_steps=2, log_every=2, measure_mfu=False, tensorboard=False),
                eval=FinetuneEvalConfig(datasets=[DatasetSpec(name, samples=32) for name in ("shapes_vqa", "safety")],
                                        every_stage=False, max_new_tokens=12),
            ),
            align=DPOConfig(data=PreferenceDataConfig(train_items=64, eval_items=24),
                            train=TrainConfig(steps=6, batch_size=8, lr=5e-5, warmup_steps=1, precision="fp32",
                                              log_every=1, measure_mfu=False, tensorboard=False)),
            suite_items=4,
            hallucination=HallucinationConfig(calibration_scenes=60, test_scenes=60, languages=["en"], pope_scenes=6,
                                              chair_scenes=6, caption_max_new_tokens=24, answer_max_new_tokens=4),
            deployment=DemoDeploymentConfig(
                heldout_pairs=64, benchmarks=["vqav2"], suite_items=4, calibration_images=4, check_images=4,
                cache_images=4, eval=DeploymentEvalConfig(quantize=QuantizeConfig(speed_batch=4, speed_tokens=32,
                                                                                  speed_repeats=2))),
            apps=DemoAppsConfig(study_scans=4, findings_tokens=32, line_frames=8, analysis_tokens=24),
        )
