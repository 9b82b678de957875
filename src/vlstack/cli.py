"""The `vlstack` command. Each subcommand parses its arguments and calls the library.

Every subcommand with a config takes `--set key.sub=value` (repeatable) to override any config
field; an unknown key or a wrong type stops with a message listing the valid keys.
"""

from __future__ import annotations

import argparse
import json
import sys

from vlstack.errors import ConfigError, VlstackError

EPILOG = """\
commands:
  info      parameters per component of a model preset (vision / language / fusion / total)
  pretrain  joint pretraining (ITC + ITM + MLM + VTM) on 1 process, or DDP / FSDP2 under torchrun
  finetune  progressive instruction tuning: stages with their own data, lr, frozen modules, LoRA and
            loss (sft | safety), a checkpoint per stage, resumable (--resume)
  align     the preference stage: reward model (Bradley-Terry), PPO (KL penalty, GAE), DPO or GRPO
            (verifiable rewards) on synthetic VQA, from a fine-tuned checkpoint
  data      data tools: `data ingest` reads a corpus (image folder, COCO, LLaVA, OpenAI messages, VQAv2,
            img2dataset, HF datasets) into shards, `data clean` cleans shards, `data synth` writes a
            synthetic corpus (six kinds, optional defects)
  serve     an OpenAI-compatible API (/v1/chat/completions) and a chat page for a checkpoint
  eval      benchmarks in their official formats (synthetic mini-suites without --data-root);
            results.json + report.md/html; --hallucination adds the detector's AUROC, POPE and CHAIR
  quantize  int8 checkpoint (torchao; int8-dynamic | int8-weight-only) + accuracy/speed report vs fp32
  export-onnx  vision tower + projector to ONNX (dynamic batch), ORT int8 dynamic/static, parity report
  export    a checkpoint as a transformers LlavaForConditionalGeneration directory (vLLM, lmms-eval load it)
  import    a LLaVA directory (SigLIP / CLIP tower) as a vlstack checkpoint
  medical   a DICOM study folder -> de-identified findings per series (report.json/html, thumbnails)
  inspect   defect inspection of an image folder or a video: detector, model analysis per defect
            (report.jsonl streamed per frame, summary.json, report.html)
  embodied  a checkpoint plans MiniGrid episodes as JSON steps: act, validate, replan; transcripts
  demo      the whole stack end to end on a tiny model: data, tokenizer, pretraining,
            evaluation, checkpoint, report (runs/demo/report.md)

examples:
  vlstack info --preset qwen-image-s
  vlstack info --preset tiny --set vision.layers=6 --json
  vlstack demo --quick
  vlstack demo --set pretrain.train.steps=1000 --set out_dir=runs/long
  vlstack data ingest folder photos/ runs/data/raw --captions photos/captions.jsonl
  vlstack data clean runs/data/raw runs/data/clean
  vlstack pretrain --config configs/tiny.yaml --set train.steps=50
  vlstack finetune --config configs/finetune.yaml --set base=runs/pretrain/checkpoint [--resume]
  vlstack align --method grpo --config configs/align_grpo.yaml --set checkpoint=runs/finetune/03-safety/model
  torchrun --nproc_per_node=2 -m vlstack.cli pretrain --set train.parallel.mode=fsdp2
  vlstack serve --model runs/demo/checkpoint --port 8000 --set batch_wait_ms=10
  vlstack eval --model runs/demo/checkpoint --benchmarks none --hallucination --set hallucination.pope_scenes=20
  vlstack quantize --model runs/demo/checkpoint --method int8-dynamic --out runs/demo/int8
  vlstack export-onnx --model runs/demo/checkpoint --out runs/demo/onnx
  vlstack export --format hf runs/llava/02-instruct/model runs/llava/hf && vllm serve runs/llava/hf
  vlstack medical STUDY_DIR --model runs/demo/checkpoint --out runs/medical --lang en
  vlstack inspect line.mp4 --model runs/demo/checkpoint --out runs/inspect --reference good_part.png
  vlstack embodied --env MiniGrid-Empty-5x5-v0 --model runs/demo/checkpoint --out runs/embodied --episodes 5
"""


TRUST_HELP = ("resume training state that this user's runs did not write (signed by another key, or not at all): "
              "it is pickled, so loading it runs code its author chose")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except VlstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlstack",
        description="vlstack: train, align, evaluate and serve Qwen-Image vision-language models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = _command(commands, "info", "Show parameters per component of a model preset.",
                    "Counts are taken on the meta device, so even the 19B preset needs no memory.")
    info.add_argument("--preset", default="qwen-image-s", help="preset name (default: %(default)s)")
    info.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    info.set_defaults(handler=_info)

    demo = _command(commands, "demo", "Run the whole stack end to end on a tiny model.",
                    "Every stage on synthetic data, in order: pretraining with the mixed ITC + ITM + MLM + VTM "
                    "loss (a tokenizer and a tiny model from scratch), cleaning a spoiled corpus, progressive "
                    "fine-tuning (general, domain, safety), DPO, the six benchmarks, hallucination, deployment "
                    "(int8, ONNX, the Engine's caches) and the applications. Each stage's output goes to "
                    "OUT_DIR/<stage>/; OUT_DIR/report.md and report.json hold every figure against chance. "
                    "About 15 minutes on 2 CPU cores; --quick, a minute or two.")
    demo.add_argument("--quick", action="store_true", help="a one-minute version of every stage")
    demo.add_argument("--config", help="a YAML recipe (see configs/demo.yaml)")
    demo.set_defaults(handler=_demo)

    pretrain = _command(commands, "pretrain", "Pretrain with the mixed ITC + ITM + MLM + VTM loss.",
                        "Writes OUT_DIR/train_log.jsonl, OUT_DIR/checkpoint/ (resumable dcp/ state plus "
                        "config.yaml, model.safetensors and tokenizer/ for inference) and OUT_DIR/pretrain.json "
                        "with held-out retrieval and matching accuracy. Several processes: "
                        "torchrun --nproc_per_node=N -m vlstack.cli pretrain --set train.parallel.mode=fsdp2")
    pretrain.add_argument("--config", help="a YAML recipe, e.g. configs/tiny.yaml (default: the built-in tiny run)")
    pretrain.add_argument("--resume", metavar="DIR", help="continue from OUT_DIR/checkpoint of an earlier run")
    pretrain.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    pretrain.set_defaults(handler=_pretrain)

    serve = _command(commands, "serve", "Serve a checkpoint behind an OpenAI-compatible API, with a chat page at /.",
                     "Routes: /v1/chat/completions (streaming too), /v1/models, /health, /metrics. Every "
                     "ServerConfig field can be --set, e.g. allowed_image_hosts=[images.example.com].")
    serve.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, help="port (default: 8000)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: $VLSTACK_API_KEY; "
                                         "the variable keeps the key out of the process list)")
    serve.set_defaults(handler=_serve)

    evaluate = _command(commands, "eval", "Evaluate a checkpoint on benchmarks in their official formats.",
                        "Writes OUT/results.json (every prediction, metrics, config, versions, timing), OUT/report.md "
                        "and OUT/report.html with the article's numbers beside ours. `vlstack data synth-eval DIR` "
                        "writes synthetic suites in the official formats (and a hallucination suite) to try it.")
    evaluate.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    evaluate.add_argument("--benchmarks", metavar="A,B,...",
                          help="comma-separated benchmark names (default: vqav2,gqa,docvqa,chartqa,vqarad,aokvqa)")
    evaluate.add_argument("--data-root", metavar="DIR", required=True,
                          help="folder with one sub-folder of official files per benchmark (vqav2/, gqa/, ...) "
                               "and, for --hallucination, a hallucination/ suite")
    evaluate.add_argument("--out", metavar="DIR", help="output directory (default: runs/eval)")
    evaluate.add_argument("--limit", type=int, metavar="N", help="evaluate the first N questions of each benchmark")
    evaluate.add_argument("--hallucination", action="store_true",
                          help="also evaluate hallucination on DATA_ROOT/hallucination: the entity-level detector's "
                               "AUROC (its calibration is stored in CKPT), POPE and CHAIR; --benchmarks none for only "
                               "this")
    evaluate.set_defaults(handler=_eval)

    quantize = _command(commands, "quantize", "Quantize every Linear layer of a checkpoint to int8 (torchao).",
                        "Writes OUT, an int8 checkpoint that the Engine, eval and serve load like any other "
                        "(config.yaml, int8 model.safetensors, quantization.yaml, tokenizer/), and "
                        "OUT/quantize.json: weight bytes and the speed of the Linear-heavy passes against fp32. "
                        "For accuracy, run `vlstack eval` on both checkpoints. --set sets QuantizeConfig fields "
                        "(kernel=torchao, speed_repeats=10).")
    quantize.add_argument("--model", required=True, metavar="CKPT", help="fp32 checkpoint directory")
    quantize.add_argument("--method", required=True, metavar="METHOD",
                          help="int8-dynamic (int8 weights and activations) or int8-weight-only")
    quantize.add_argument("--out", required=True, metavar="DIR", help="the int8 checkpoint to write")
    quantize.set_defaults(handler=_quantize)

    export_onnx = _command(commands, "export-onnx",
                           "Export the image path (vision tower + projector) to ONNX, with ORT int8 copies.",
                           "Writes OUT/vision.onnx (dynamic batch axis), OUT/vision.int8-dynamic.onnx, "
                           "OUT/vision.int8-static.onnx (with --set calibration_dir=DIR: activation ranges "
                           "calibrated on those images) and OUT/export.json (parity with PyTorch, max diff and "
                           "cosine of each, on --set check_dir=DIR images or random pixels). Serve with one: "
                           "vlstack serve --set engine.vision_onnx=OUT/vision.onnx.")
    export_onnx.add_argument("--model", required=True, metavar="CKPT", help="fp32 checkpoint directory")
    export_onnx.add_argument("--out", required=True, metavar="DIR", help="output directory")
    export_onnx.set_defaults(handler=_export_onnx)

    export = _command(commands, "export", "Write a checkpoint in a format other tools load.",
                      "--format hf writes a transformers LlavaForConditionalGeneration directory: config.json, "
                      "safetensors, a LlavaProcessor (tokenizer, chat template, an image processor with the "
                      "model's preprocessing) and generation_config.json. Load it with "
                      "LlavaForConditionalGeneration.from_pretrained, serve it with `vllm serve OUT`, evaluate it "
                      "with lmms-eval. Only models LLaVA can express export: a plain ViT tower (global attention, "
                      "no prompt tokens but a CLIP class token, no final norm) and patch_positions: false, as the "
                      "LLaVA recipes train (configs/llava_stage1.yaml); anything else is an error naming the field. "
                      "The fusion encoder and pretraining heads stay behind. For ONNX see export-onnx.", settable=False)
    export.add_argument("--format", required=True, choices=["hf"], help="hf: transformers LLaVA")
    export.add_argument("checkpoint", metavar="CKPT", help="a vlstack checkpoint directory (fp32)")
    export.add_argument("out", metavar="OUT", help="the directory to write")
    export.set_defaults(handler=_export)

    import_ = _command(commands, "import", "Read a model another tool wrote into a vlstack checkpoint.",
                       "--format hf reads a LlavaForConditionalGeneration directory whose tower is SigLIP or CLIP "
                       "and whose projector takes the tower's last layer, whole (vision_feature_layer -1, "
                       "vision_feature_select_strategy full: what `vlstack export --format hf` writes). The fusion "
                       "encoder and pretraining heads, which LLaVA lacks, start fresh.", settable=False)
    import_.add_argument("--format", required=True, choices=["hf"], help="hf: transformers LLaVA")
    import_.add_argument("source", metavar="DIR", help="the LLaVA directory")
    import_.add_argument("out", metavar="OUT", help="the vlstack checkpoint directory to write")
    import_.set_defaults(handler=_import)

    finetune = _command(commands, "finetune", "Fine-tune a checkpoint in progressive stages (SFT, safety).",
                        "Runs the recipe's stages in order, each with its datasets, lr, frozen modules, optional "
                        "LoRA and loss; writes OUT_DIR/<nn>-<stage>/model/ (LoRA merged) and stage.json per stage, "
                        "and OUT_DIR/finetune.json with held-out VQA accuracy and refusal rates. The preference "
                        "stage follows with `vlstack align`.")
    finetune.add_argument("--config", help="a YAML recipe, e.g. configs/finetune.yaml (default: the article's plan)")
    finetune.add_argument("--resume", action="store_true",
                          help="continue OUT_DIR: skip finished stages, resume the interrupted one")
    finetune.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    finetune.set_defaults(handler=_finetune)

    align = _command(commands, "align", "Align a checkpoint with a reward model, PPO, DPO or GRPO.",
                     "Trains from --set checkpoint=DIR (normally the last fine-tuning stage's model) on "
                     "--set data.train=DIR --set data.held_out=DIR: conversations whose last answer is the "
                     "reference (and, for DPO and the reward model, meta.rejected the rejected one; `vlstack data "
                     "synth-instructions --dataset shapes_vqa --rejected wrong` writes synthetic ones). Writes "
                     "OUT_DIR/align.json (reward, KL, held-out accuracy before and after), OUT_DIR/train_log.jsonl, "
                     "OUT_DIR/align_log.jsonl (PPO/GRPO, per iteration) and OUT_DIR/checkpoint (resumable). "
                     "Recipes: configs/align_{ppo,dpo,grpo}.yaml.")
    align.add_argument("--method", required=True, choices=("ppo", "dpo", "grpo", "reward"),
                       help="reward: train a reward model for PPO's reward=model")
    align.add_argument("--config", help="a YAML recipe, e.g. configs/align_grpo.yaml (default: the method's defaults)")
    align.add_argument("--resume", action="store_true",
                       help="continue the run in OUT_DIR from its checkpoint (written on SIGTERM and every "
                            "train.save_every steps)")
    align.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    align.set_defaults(handler=_align)

    _data_commands(commands)
    _app_commands(commands)
    return parser


def _data_commands(commands) -> None:
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

    clean = _command(data_commands, "clean",
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


def _command(commands, name: str, summary: str, details: str, settable: bool = True) -> argparse.ArgumentParser:
    """A subcommand; `settable` ones take `--set` overrides of their config."""
    sub = commands.add_parser(name, help=summary, description=f"{summary} {details}")
    if settable:
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config field, e.g. --set train.steps=200 (repeatable)")
    return sub


def _info(args: argparse.Namespace) -> int:
    from vlstack.config import apply_overrides
    from vlstack.models.config import ARTICLE_TABLE, ModelConfig
    from vlstack.models.vlm import count_parameters

    config = apply_overrides(ModelConfig.from_preset(args.preset), args.overrides)
    counts = count_parameters(config)
    article = ARTICLE_TABLE.get(args.preset) if not args.overrides else None
    if args.json:
        print(json.dumps({"preset": args.preset, **counts, **({"article_table": article} if article else {})}))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.preset}: parameters")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("", justify="right")
    if article:
        table.add_column("article", justify="right")
        table.add_column("difference", justify="right")
    for name, count in counts.items():
        extra = [_human(article[name]), f"{(count / article[name] - 1) * 100:+.2f}%"] if article else []
        table.add_row(name, f"{count:,}", _human(count), *extra)
    Console().print(table)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vlstack.config import apply_overrides, from_dict, read_yaml
    from vlstack.demo.pipeline import run_demo
    from vlstack.demo.recipes import DemoConfig

    if args.config and args.quick:
        raise ConfigError("--quick and --config both choose the recipe; use one of them")
    if args.config:
        config = from_dict(DemoConfig, read_yaml(args.config))
    else:
        config = DemoConfig.quick() if args.quick else DemoConfig()
    config = apply_overrides(config, args.overrides)
    report = run_demo(config)
    retrieval = report["stages"]["pretrain"]["after_training"]
    print(f"held-out image->text R@1 {retrieval['r@1']:.3f} (chance {retrieval['chance@1']:.3f}); "
          f"report: {config.out_dir}/report.md")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from vlstack.config import load_config
    from vlstack.train.pretrain import PretrainConfig, run_pretraining

    config = load_config(PretrainConfig, args.config, args.overrides)
    results = run_pretraining(config, resume=args.resume, trust=args.trust_checkpoint)
    after = results["after_training"]
    if after:
        print(f"held-out image->text R@1 {after['r@1']:.3f} (chance {after['chance@1']:.3f}), ITM accuracy "
              f"{after['itm_accuracy']:.3f} (chance 0.5); checkpoint: {results['checkpoint']}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from vlstack.config import load_config
    from vlstack.train.finetune import FinetuneConfig, run_finetune, summary

    config = load_config(FinetuneConfig, args.config, args.overrides)
    print(summary(run_finetune(config, resume=args.resume, trust=args.trust_checkpoint)))
    return 0


def _align(args: argparse.Namespace) -> int:
    from vlstack.align.run import METHODS, run_alignment, summary
    from vlstack.config import load_config

    config = load_config(METHODS[args.method][0], args.config, args.overrides)
    print(summary(run_alignment(config, resume=args.resume, trust=args.trust_checkpoint)))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from vlstack.infer.server import ServerConfig, serve

    flags = {"model": args.model, "host": args.host, "port": args.port, "api_key": args.api_key}
    serve(_configured(ServerConfig, flags, args.overrides))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vlstack.eval.hallucination import HallucinationConfig
    from vlstack.eval.harness import EvalConfig, run_eval
    from vlstack.eval.report import summary

    benchmarks = None
    if args.benchmarks:
        benchmarks = [] if args.benchmarks == "none" else [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    flags = {"benchmarks": benchmarks, "data_root": args.data_root, "out_dir": args.out, "limit": args.limit,
             "hallucination": HallucinationConfig() if args.hallucination else None}
    config = _configured(EvalConfig, flags, args.overrides)
    print(summary(run_eval(args.model, config)) + f"\nreport: {config.out_dir}/report.md")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from vlstack.config import apply_overrides
    from vlstack.infer.quantize import QuantizeConfig, quantization_summary, run_quantize

    config = apply_overrides(QuantizeConfig(), args.overrides)
    print(quantization_summary(run_quantize(args.model, args.out, args.method, config)))
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from vlstack.config import apply_overrides
    from vlstack.infer.onnx import OnnxExportConfig, export_checkpoint, export_summary

    config = apply_overrides(OnnxExportConfig(), args.overrides)
    print(export_summary(export_checkpoint(args.model, args.out, config)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from vlstack.infer.llava import export_llava

    report = export_llava(args.checkpoint, args.out)
    print(f"wrote {args.out}: {report['architecture']} ({report['vision_tower']} + {report['language_model']}, "
          f"{report['image_tokens']} tokens per image); left behind: {report['left_behind']}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from vlstack.infer.llava import import_llava

    print(f"wrote {import_llava(args.source, args.out)}")
    return 0


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


def _app_commands(commands) -> None:
    medical = _command(commands, "medical", "Findings per series of a DICOM study folder, de-identified first.",
                       "Reads every file under STUDY_DIR, de-identifies it (PS3.15 Table E.1-1 basic profile; UIDs "
                       "remapped with a keyed hash: set $VLSTACK_DEID_KEY to keep pseudonyms stable across runs), "
                       "groups studies and series, renders the middle slice of each and asks the model about it. "
                       "Writes OUT/report.json, OUT/report.html and OUT/thumbnails/; unusable files are listed "
                       "with a reason. A series whose pixels may show identifiers (burned-in text: ultrasound, "
                       "secondary captures, scans, or BurnedInAnnotation=YES) is flagged; --refuse-burned-in skips "
                       "it. Every MedicalConfig field can be --set (e.g. show_paths=true).")
    medical.add_argument("study_dir", metavar="STUDY_DIR", help="folder of DICOM files (searched recursively)")
    medical.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    medical.add_argument("--out", required=True, metavar="DIR", help="output directory")
    medical.add_argument("--lang", choices=("zh", "en"), help="language of the default prompt (default: zh)")
    medical.add_argument("--prompt", help="the question asked about every series (default: the findings prompt)")
    medical.add_argument("--refuse-burned-in", action="store_true",
                         help="neither render nor ask about a series whose pixels may show identifiers")
    medical.set_defaults(handler=_medical)

    inspect = _command(commands, "inspect", "Inspect an image folder or a video for surface defects.",
                       "Each frame goes through the detector; each defect crop is analysed by the model. Writes "
                       "OUT/report.jsonl (one line per frame, flushed as it goes), OUT/summary.json with frames/s, "
                       "and OUT/report.html with annotated frames. Every InspectionConfig field can be --set "
                       "(e.g. classical.threshold=6).")
    inspect.add_argument("source", metavar="SOURCE", help="an image folder or a video file")
    inspect.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    inspect.add_argument("--out", required=True, metavar="DIR", help="output directory")
    inspect.add_argument("--reference", metavar="IMAGE", help="an image of a good part for the classical detector "
                                                              "(default: detect local anomalies)")
    inspect.add_argument("--yolo", metavar="WEIGHTS", help="use an ultralytics YOLO weights file as the detector "
                                                           "(pip install ultralytics)")
    inspect.add_argument("--lang", choices=("zh", "en"), help="language of the default prompt (default: zh)")
    inspect.add_argument("--prompt", help="the question asked about every defect crop")
    inspect.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    inspect.set_defaults(handler=_inspect)

    embodied = _command(commands, "embodied", "Run MiniGrid episodes with a checkpoint as the planner.",
                        "The model sees the agent's view and a depth map and replies with a JSON plan; each step "
                        "is checked against the new state and a failure triggers a replan, within budgets. Writes "
                        "OUT/episode-SEED/transcript.jsonl (+ frames) and OUT/summary.json. Every EmbodiedConfig "
                        "field can be --set (e.g. episode.max_plans=3).")
    embodied.add_argument("--env", default="MiniGrid-Empty-5x5-v0", help="a MiniGrid environment id "
                                                                          "(default: %(default)s)")
    embodied.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    embodied.add_argument("--out", required=True, metavar="DIR", help="output directory")
    embodied.add_argument("--episodes", type=int, help="number of episodes, on seeds 0, 1, ... (default: 1)")
    embodied.set_defaults(handler=_embodied)


def _medical(args: argparse.Namespace) -> int:
    from vlstack.apps.medical import MedicalConfig, run_medical

    flags = {"language": args.lang, "prompt": args.prompt, "refuse_burned_in": args.refuse_burned_in or None}
    config = _configured(MedicalConfig, flags, args.overrides)
    counts = run_medical(args.study_dir, args.model, args.out, config)["counts"]
    print(f"{counts['studies']} studies, {counts['series']} series, {counts['answered']} answered, "
          f"{counts['files_skipped']} files skipped; report: {args.out}/report.html")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vlstack.apps.inspection import InspectionConfig, run_inspection

    flags = {"language": args.lang, "prompt": args.prompt, "reference": args.reference, "max_frames": args.max_frames,
             "yolo_weights": args.yolo, "detector": "yolo" if args.yolo else None}
    config = _configured(InspectionConfig, flags, args.overrides)
    summary = run_inspection(args.source, args.model, args.out, config)
    print(f"{summary['frames']} frames, {summary['defects']} defects in {summary['frames_with_defects']} frames, "
          f"{summary['frames_per_second']} frames/s; report: {args.out}/report.html")
    return 0


def _embodied(args: argparse.Namespace) -> int:
    from vlstack.apps.embodied import EmbodiedConfig, run_minigrid_episodes

    flags = {"episodes": args.episodes}
    config = _configured(EmbodiedConfig, flags, args.overrides)
    summary = run_minigrid_episodes(args.model, args.env, args.out, config)
    print(f"{args.env}: success rate {summary['success_rate']:.2f} over {summary['episodes']} episode(s), "
          f"mean plans {summary['mean_plans']:.1f}, mean steps {summary['mean_steps']:.1f}; "
          f"summary: {args.out}/summary.json")
    return 0


def _configured(cls, flags: dict, overrides: list[str]):
    """A `cls` config from the command's flags (None: not given, keep the default), then the --set overrides."""
    from vlstack.config import apply_overrides

    return apply_overrides(cls(**{k: v for k, v in flags.items() if v is not None}), overrides)


def _human(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


if __name__ == "__main__":
    sys.exit(main())
