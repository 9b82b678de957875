"""The `vlstack` command. Each subcommand parses its arguments and calls the library.

Every subcommand takes `--set key.sub=value` (repeatable) to override any config
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
  data      data tools: `data synth` writes a synthetic corpus (six kinds, optional defects) as shards
  serve     an OpenAI-compatible API (/v1/chat/completions) and a chat page for a checkpoint
  eval      benchmarks in their official formats (synthetic mini-suites without --data-root);
            results.json + report.md/html
  demo      the whole stack end to end on a tiny model: data, tokenizer, pretraining,
            evaluation, checkpoint, report (runs/demo/report.md)

examples:
  vlstack info --preset qwen-image-s
  vlstack info --preset tiny --set vision.layers=6 --json
  vlstack demo --quick
  vlstack demo --set pretrain.train.steps=1000 --set out_dir=runs/long
  vlstack pretrain --config configs/tiny.yaml --set train.steps=50
  torchrun --nproc_per_node=2 -m vlstack.cli pretrain --set train.parallel.mode=fsdp2
  vlstack serve --model runs/demo/checkpoint --port 8000 --set batch_wait_ms=10
"""


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
                    "Synthesises shape scenes, trains a tokenizer and a tiny Qwen-Image model with the "
                    "contrastive loss, measures held-out image->text retrieval against chance, and writes "
                    "OUT_DIR/report.md, report.json, loss.png and a checkpoint.")
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
                        "and OUT/report.html with the seed article's numbers beside ours. Without --data-root, "
                        "synthetic mini-suites in the official formats are written to OUT/suites and evaluated.")
    evaluate.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    evaluate.add_argument("--benchmarks", metavar="A,B,...",
                          help="comma-separated benchmark names (default: vqav2,gqa,docvqa,chartqa,vqarad,aokvqa)")
    evaluate.add_argument("--data-root", metavar="DIR", help="folder with one sub-folder of official files per "
                                                             "benchmark (vqav2/, gqa/, ...)")
    evaluate.add_argument("--out", metavar="DIR", help="output directory (default: runs/eval)")
    evaluate.add_argument("--limit", type=int, metavar="N", help="evaluate the first N questions of each benchmark")
    evaluate.set_defaults(handler=_eval)

    _data_commands(commands)
    return parser


def _data_commands(commands) -> None:
    from vlstack.data.schema import KINDS
    from vlstack.data.synthetic import SPLITS

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


def _command(commands, name: str, summary: str, details: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=summary, description=f"{summary} {details}")
    sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set train.steps=200 (repeatable)")
    return sub


def _info(args: argparse.Namespace) -> int:
    from vlstack.config import apply_overrides
    from vlstack.models.config import SEED_TABLE, ModelConfig
    from vlstack.models.vlm import count_parameters

    config = apply_overrides(ModelConfig.from_preset(args.preset), args.overrides)
    counts = count_parameters(config)
    seed = SEED_TABLE.get(args.preset) if not args.overrides else None
    if args.json:
        print(json.dumps({"preset": args.preset, **counts, **({"seed_table": seed} if seed else {})}))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.preset}: parameters")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("", justify="right")
    if seed:
        table.add_column("seed article", justify="right")
        table.add_column("difference", justify="right")
    for name, count in counts.items():
        extra = [_human(seed[name]), f"{(count / seed[name] - 1) * 100:+.2f}%"] if seed else []
        table.add_row(name, f"{count:,}", _human(count), *extra)
    Console().print(table)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vlstack.config import apply_overrides, from_dict, read_yaml
    from vlstack.demo import DemoConfig, run_demo

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
    results = run_pretraining(config, resume=args.resume)
    after = results["after_training"]
    if after:
        print(f"held-out image->text R@1 {after['r@1']:.3f} (chance {after['chance@1']:.3f}), ITM accuracy "
              f"{after['itm_accuracy']:.3f} (chance 0.5); checkpoint: {results['checkpoint']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from vlstack.config import apply_overrides
    from vlstack.infer.server import ServerConfig, serve

    flags = {"model": args.model, "host": args.host, "port": args.port, "api_key": args.api_key}
    serve(apply_overrides(ServerConfig(**{k: v for k, v in flags.items() if v is not None}), args.overrides))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vlstack.config import apply_overrides
    from vlstack.eval.harness import EvalConfig, run_eval
    from vlstack.eval.report import summary

    benchmarks = [name.strip() for name in args.benchmarks.split(",") if name.strip()] if args.benchmarks else None
    flags = {"benchmarks": benchmarks, "data_root": args.data_root, "out_dir": args.out, "limit": args.limit}
    config = apply_overrides(EvalConfig(**{k: v for k, v in flags.items() if v is not None}), args.overrides)
    print(summary(run_eval(args.model, config)) + f"\nreport: {config.out_dir}/report.md")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from vlstack.data.synthesize import synthesize

    summary = synthesize(args.kind, args.n, args.out, args.defects, args.seed, args.lang, split=args.split,
                         image_size=args.image_size, samples_per_shard=args.per_shard)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _data_clean(args: argparse.Namespace) -> int:
    from vlstack.config import load_config
    from vlstack.data.clean.pipeline import CleanConfig
    from vlstack.data.clean.run import clean

    config = load_config(CleanConfig, args.config, args.overrides)
    summary = clean(args.input, args.output, config, executor=args.executor, workers=args.workers)
    print(f"kept {summary['kept']} of {summary['total']}, rejected {summary['rejected']} "
          f"({', '.join(f'{k} {v}' for k, v in summary['by_first_reason'].items()) or 'none'}); "
          f"report: {summary['output']}/report.md")
    return 0


def _human(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


if __name__ == "__main__":
    sys.exit(main())
