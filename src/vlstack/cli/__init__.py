"""The `vlstack` command. Each subcommand parses its arguments and calls the library.

Every subcommand with a config takes `--set key.sub=value` (repeatable) to override any config
field; an unknown key or a wrong type stops with a message listing the valid keys.
"""

from __future__ import annotations

import argparse
import json
import sys

from vlstack.cli.apps import add_app_commands
from vlstack.cli.data import add_data_commands
from vlstack.cli.parsing import add_command, configured
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

    info = add_command(commands, "info", "Show parameters per component of a model preset.",
                    "Counts are taken on the meta device, so even the 19B preset needs no memory.")
    info.add_argument("--preset", default="qwen-image-s", help="preset name (default: %(default)s)")
    info.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    info.set_defaults(handler=_info)

    demo = add_command(commands, "demo", "Run the whole stack end to end on a tiny model.",
                    "Every stage on synthetic data, in order: pretraining with the mixed ITC + ITM + MLM + VTM "
                    "loss (a tokenizer and a tiny model from scratch), cleaning a spoiled corpus, progressive "
                    "fine-tuning (general, domain, safety), DPO, the six benchmarks, hallucination, deployment "
                    "(int8, ONNX, the Engine's caches) and the applications. Each stage's output goes to "
                    "OUT_DIR/<stage>/; OUT_DIR/report.md and report.json hold every figure against chance. "
                    "About 15 minutes on 2 CPU cores; --quick, a minute or two.")
    demo.add_argument("--quick", action="store_true", help="a one-minute version of every stage")
    demo.add_argument("--config", help="a YAML recipe (see configs/demo.yaml)")
    demo.set_defaults(handler=_demo)

    pretrain = add_command(commands, "pretrain", "Pretrain with the mixed ITC + ITM + MLM + VTM loss.",
                        "Writes OUT_DIR/train_log.jsonl, OUT_DIR/checkpoint/ (resumable dcp/ state plus "
                        "config.yaml, model.safetensors and tokenizer/ for inference) and OUT_DIR/pretrain.json "
                        "with held-out retrieval and matching accuracy. Several processes: "
                        "torchrun --nproc_per_node=N -m vlstack.cli pretrain --set train.parallel.mode=fsdp2")
    pretrain.add_argument("--config", help="a YAML recipe, e.g. configs/tiny.yaml (default: the built-in tiny run)")
    pretrain.add_argument("--resume", metavar="DIR", help="continue from OUT_DIR/checkpoint of an earlier run")
    pretrain.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    pretrain.set_defaults(handler=_pretrain)

    serve = add_command(commands, "serve", "Serve a checkpoint behind an OpenAI-compatible API, with a chat page at /.",
                     "Routes: /v1/chat/completions (streaming too), /v1/models, /health, /metrics. Every "
                     "ServerConfig field can be --set, e.g. allowed_image_hosts=[images.example.com].")
    serve.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, help="port (default: 8000)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: $VLSTACK_API_KEY; "
                                         "the variable keeps the key out of the process list)")
    serve.set_defaults(handler=_serve)

    evaluate = add_command(commands, "eval", "Evaluate a checkpoint on benchmarks in their official formats.",
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

    quantize = add_command(commands, "quantize", "Quantize every Linear layer of a checkpoint to int8 (torchao).",
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

    export_onnx = add_command(commands, "export-onnx",
                           "Export the image path (vision tower + projector) to ONNX, with ORT int8 copies.",
                           "Writes OUT/vision.onnx (dynamic batch axis), OUT/vision.int8-dynamic.onnx, "
                           "OUT/vision.int8-static.onnx (with --set calibration_dir=DIR: activation ranges "
                           "calibrated on those images) and OUT/export.json (parity with PyTorch, max diff and "
                           "cosine of each, on --set check_dir=DIR images or random pixels). Serve with one: "
                           "vlstack serve --set engine.vision_onnx=OUT/vision.onnx.")
    export_onnx.add_argument("--model", required=True, metavar="CKPT", help="fp32 checkpoint directory")
    export_onnx.add_argument("--out", required=True, metavar="DIR", help="output directory")
    export_onnx.set_defaults(handler=_export_onnx)

    export = add_command(commands, "export", "Write a checkpoint in a format other tools load.",
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

    import_ = add_command(commands, "import", "Read a model another tool wrote into a vlstack checkpoint.",
                       "--format hf reads a LlavaForConditionalGeneration directory whose tower is SigLIP or CLIP "
                       "and whose projector takes the tower's last layer, whole (vision_feature_layer -1, "
                       "vision_feature_select_strategy full: what `vlstack export --format hf` writes). The fusion "
                       "encoder and pretraining heads, which LLaVA lacks, start fresh.", settable=False)
    import_.add_argument("--format", required=True, choices=["hf"], help="hf: transformers LLaVA")
    import_.add_argument("source", metavar="DIR", help="the LLaVA directory")
    import_.add_argument("out", metavar="OUT", help="the vlstack checkpoint directory to write")
    import_.set_defaults(handler=_import)

    finetune = add_command(commands, "finetune", "Fine-tune a checkpoint in progressive stages (SFT, safety).",
                        "Runs the recipe's stages in order, each with its datasets, lr, frozen modules, optional "
                        "LoRA and loss; writes OUT_DIR/<nn>-<stage>/model/ (LoRA merged) and stage.json per stage, "
                        "and OUT_DIR/finetune.json with held-out VQA accuracy and refusal rates. The preference "
                        "stage follows with `vlstack align`.")
    finetune.add_argument("--config", help="a YAML recipe, e.g. configs/finetune.yaml (default: the article's plan)")
    finetune.add_argument("--resume", action="store_true",
                          help="continue OUT_DIR: skip finished stages, resume the interrupted one")
    finetune.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    finetune.set_defaults(handler=_finetune)

    align = add_command(commands, "align", "Align a checkpoint with a reward model, PPO, DPO or GRPO.",
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

    add_data_commands(commands)
    add_app_commands(commands)
    return parser




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
              f"{after['itm_accuracy']:.3f}, word accuracy {after['word_accuracy']:.3f} (chance 0.5 each); "
              f"checkpoint: {results['checkpoint']}")
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
    serve(configured(ServerConfig, flags, args.overrides))
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
    config = configured(EvalConfig, flags, args.overrides)
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


def _human(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
