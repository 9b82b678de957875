"""`vlstack data ...`: synthetic corpora, ingest and cleaning."""

from __future__ import annotations

import argparse
import json

from vlstack.cli.parsing import add_command
from vlstack.errors import ConfigError


def add_data_commands(commands) -> None:
    from vlstack.data.schema import KINDS
    from vlstack.synthetic.scenes import SPLITS

    data = commands.add_parser("data", help="Data tools: synthetic corpora, cleaning, shards.",
                               description="Data tools: synthetic corpora, cleaning, shards.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_commands.add_parser(
        "synth", help="Write a synthetic corpus of one kind, with injected defects, as WebDataset shards.",
        description="Writes OUT/shard-*.tar, OUT/manifest.jsonl, OUT/defects.jsonl (the ground truth of every "
                    "injected defect) and OUT/synth.json. The same arguments write the same bytes.")
    synth.add_argument("--kind", required=True, choices=KINDS)
    synth.add_argument("--n", type=int, required=True, help="number of samples")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--defects", type=float, default=0.0, metavar="RATE",
                       help="fraction of samples to spoil, in [0, 1] (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    synth.add_argument("--lang", choices=("en", "zh"), default="en", help="text language (default: %(default)s)")
    synth.add_argument("--split", choices=SPLITS, default="train",
                       help="each split draws from its own seed, so val/test are held out (default: %(default)s)")
    synth.add_argument("--image-size", type=int, help="pixels; default 64 for shape scenes, 256 for documents/charts")
    synth.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default: %(default)s)")
    synth.set_defaults(handler=_data_synth)

    synth_instructions = data_commands.add_parser(
        "synth-instructions", help="Write a synthetic instruction dataset (conversations) as shards.",
        description="Writes OUT/shard-*.tar and OUT/manifest.jsonl: samples with LLaVA-style conversations (and "
                    "their question type, refusal flags, ...) that `vlstack finetune` stages and `vlstack align` "
                    "read. --rejected adds a rejected answer to each (preference pairs; shapes_vqa only).")
    synth_instructions.add_argument("--dataset", required=True,
                                    help="shapes_vqa, shapes_chat, grounding, interleaved, documents_vqa, charts_vqa, "
                                         "safety, scans or surface_defects")
    synth_instructions.add_argument("--n", type=int, required=True, help="number of conversations")
    synth_instructions.add_argument("--out", required=True, help="output directory")
    synth_instructions.add_argument("--split", choices=SPLITS, default="train",
                                    help="each split draws from its own seed (default: %(default)s)")
    synth_instructions.add_argument("--lang", choices=("en", "zh"), default="en", help="(default: %(default)s)")
    synth_instructions.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    synth_instructions.add_argument("--rejected", choices=("wrong", "absent"),
                                    help="add a rejected answer: any wrong one, or a colour/shape absent from the scene")
    synth_instructions.add_argument("--question-types", metavar="A,B",
                                    help="shapes_vqa with --rejected: only these (color,shape,count,count_color,position)")
    synth_instructions.set_defaults(handler=_data_synth_instructions)

    synth_eval = data_commands.add_parser(
        "synth-eval", help="Write synthetic evaluation suites: the six benchmarks in their official formats and a "
                           "hallucination suite.",
        description="Writes OUT/<benchmark>/ for vqav2, gqa, docvqa, chartqa, vqarad and aokvqa in their official "
                    "file formats (shape scenes, documents, charts, scans) and OUT/hallucination/ (scenes with their "
                    "objects, faithful and hallucinated captions, the lexicon): `vlstack eval --data-root OUT`.")
    synth_eval.add_argument("out", metavar="OUT", help="output directory")
    synth_eval.add_argument("--n", type=int, default=32, help="questions per benchmark (default: %(default)s)")
    synth_eval.add_argument("--scenes", type=int, default=200,
                            help="hallucination scenes per split (default: %(default)s)")
    synth_eval.add_argument("--seed", type=int, default=0, help="suite seed (default: %(default)s)")
    synth_eval.set_defaults(handler=_data_synth_eval)

    from vlstack.data.ingest import FORMATS

    summary = "Read a corpus in a public format into vlstack shards, ready for `data clean`."
    ingest = data_commands.add_parser(
        "ingest", help=summary,
        description=f"{summary} Writes OUT/shard-*.tar + manifest.jsonl (the samples, images still encoded), "
                    "OUT/rejected.jsonl (every record not taken, with its reason: missing image, malformed "
                    "record, ...) and OUT/ingest.json. Nothing is downloaded: remote image URLs are rejected. "
                    "Formats: " + "; ".join(f"{name}: {text}" for name, text in FORMATS.items()) + ".")
    ingest.add_argument("format", metavar="FORMAT", choices=FORMATS, help=", ".join(FORMATS))
    ingest.add_argument("input", metavar="IN", help="the corpus: a file or folder, as FORMAT says")
    ingest.add_argument("output", metavar="OUT", help="output directory (new, empty, or an earlier ingest)")
    ingest.add_argument("--images", metavar="DIR", help="image root (coco and vqav2: required; llava, messages and "
                                                        "hf: default the folder of IN)")
    ingest.add_argument("--captions", metavar="FILE", help="folder: the captions file (JSONL or CSV/TSV)")
    ingest.add_argument("--annotations", metavar="FILE", help="vqav2: the annotations file")
    ingest.add_argument("--image-pattern", metavar="PATTERN",
                        help="vqav2: image file names, e.g. '{image_id:012d}.jpg' (default: COCO's)")
    ingest.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default: %(default)s)")
    ingest.set_defaults(handler=_data_ingest)

    clean = add_command(data_commands, "clean",
                     "Clean a shard directory: quality, text and relevance filters, PII, dedup.",
                     "Writes OUT/shard-*.tar + manifest.jsonl (kept samples, each with the provenance of every "
                     "step in meta.clean), OUT/rejected.jsonl (every dropped id with its reasons), OUT/clean.json "
                     "and OUT/report.md with score histograms. See configs/clean.yaml for every setting.")
    clean.add_argument("input", metavar="IN", help="input shard directory")
    clean.add_argument("output", metavar="OUT", help="output directory (new, empty, or an earlier clean run)")
    clean.add_argument("--config", help="a YAML recipe, e.g. configs/clean.yaml (default: built-in defaults)")
    clean.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local processes or Ray Data (pip install 'vlstack[ray]') (default: %(default)s)")
    clean.add_argument("--workers", type=int, help="processes or Ray actors (default: the config's workers)")
    clean.set_defaults(handler=_data_clean)


def _data_synth(args: argparse.Namespace) -> int:
    from vlstack.synthetic.corpus import synthesize

    summary = synthesize(args.kind, args.n, args.out, args.defects, args.seed, args.lang, split=args.split,
                         image_size=args.image_size, samples_per_shard=args.per_shard)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _data_synth_instructions(args: argparse.Namespace) -> int:
    from vlstack.synthetic.instructions import write_instructions
    from vlstack.synthetic.preferences import DATASET, QUESTION_TYPES, write_preferences

    if args.rejected is None:
        out = write_instructions(args.out, args.dataset, args.n, args.seed, args.split, args.lang)
    elif args.dataset != DATASET:
        raise ConfigError(f"--rejected is for --dataset {DATASET}: its answers are checkable")
    else:
        types = args.question_types.split(",") if args.question_types else QUESTION_TYPES
        out = write_preferences(args.out, args.n, args.split, types, args.rejected, args.seed)
    print(f"wrote {args.n} {args.dataset} conversations ({args.split}) to {out}")
    return 0


def _data_synth_eval(args: argparse.Namespace) -> int:
    from vlstack.synthetic.suites import write_evaluation_data

    folders = write_evaluation_data(args.out, args.n, args.scenes, args.seed)
    print(f"wrote {', '.join(folders)} under {args.out}; evaluate with vlstack eval --data-root {args.out}")
    return 0


def _data_ingest(args: argparse.Namespace) -> int:
    from vlstack.data.ingest import IngestInputs, ingest

    inputs = IngestInputs(args.images, args.captions, args.annotations, args.image_pattern)
    summary = ingest(args.format, args.input, args.output, inputs, samples_per_shard=args.per_shard)
    reasons = ", ".join(f"{k} {v}" for k, v in summary["rejected_by_reason"].items()) or "none"
    print(f"kept {summary['kept']} of {summary['total']} ({summary['text_only']} text-only), rejected "
          f"{summary['rejected']} ({reasons}); {summary['shards']} shard(s) in {summary['output']}: "
          f"vlstack data clean {summary['output']} CLEAN_DIR")
    return 0


def _data_clean(args: argparse.Namespace) -> int:
    from vlstack.config import load_config
    from vlstack.data.clean.pipeline import CleanConfig
    from vlstack.data.clean.run import clean

    config = load_config(CleanConfig, args.config, args.overrides)
    from vlstack.synthetic.truth import score_cleaning

    summary = clean(args.input, args.output, config, executor=args.executor, workers=args.workers)
    truth = score_cleaning(args.input, args.output)  # a synthetic corpus with defects.jsonl: recall per defect
    if truth is not None:
        print("recall per injected defect: " + ", ".join(f"{k} {v['recall']:.2f}" for k, v in truth["defects"].items()))
    print(f"kept {summary['kept']} of {summary['total']}, rejected {summary['rejected']} "
          f"({', '.join(f'{k} {v}' for k, v in summary['by_first_reason'].items()) or 'none'}); "
          f"report: {summary['output']}/report.md")
    return 0
