"""The GPU check: what vlstack does on one CUDA GPU, measured in one run of under 8 minutes.

Run it through `bash benchmarks/gpu_check.sh` on a machine with a CUDA GPU: it writes
benchmarks/out/gpu_check.json and appends a section to benchmarks/RESULTS.md. `--dry-run` runs every part
at toy sizes (the `nano` preset, a few steps) on whatever device there is, the CPU in CI, and appends
nothing: the script is known to start before a GPU is spent on it.

1. the device's bf16 matmul peak (the best of several square matmuls), the yardstick of every MFU below;
2. the SDPA kernels the model's attention runs (flash, memory-efficient, cuDNN or the math fallback),
   counted from the profiler over one pretraining forward and one SFT forward in bf16;
3. pretraining steps of `qwen-image-s` (2.6B): the mixed ITC + ITM + MLM + VTM loss, bf16 autocast,
   activation checkpointing, the model built on the meta device and initialised on the GPU by the
   Trainer (tokens/s, samples/s, MFU against 1, peak memory);
4. SFT steps of the same model (an image's 737 visual tokens + 64 text tokens per row);
5. FSDP2 on one rank under torchrun with torch.compile'd blocks against eager (`tiny`): equal losses and
   the step time of each;
6. generation: the Engine against `transformers`' LlavaForConditionalGeneration.generate on the same
   LM weights at batch 1, 8 and 32 (bf16 autocast; `benchmarks/infer_throughput.py` builds both).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_throughput import HFRunner, Setting, build, clear, engine_counts, interleaved_throughput, llava_like  # noqa: E402
from vlstack.data.conversations import IGNORE_INDEX  # noqa: E402
from vlstack.devices import resolve_device  # noqa: E402
from vlstack.infer.engine import Engine, EngineConfig  # noqa: E402
from vlstack.models.config import ModelConfig  # noqa: E402
from vlstack.models.initialize import build_empty, init_weights, materialize  # noqa: E402
from vlstack.models.vlm import QwenImageModel  # noqa: E402
from vlstack.train.config import ParallelConfig  # noqa: E402
from vlstack.train.distributed import init_distributed  # noqa: E402
from vlstack.train.flops import matmul_peak  # noqa: E402
from vlstack.train.objectives import PretrainLossConfig, PretrainObjective, sft_objective  # noqa: E402
from vlstack.train.trainer import TrainConfig, Trainer  # noqa: E402

FULL = {"preset": "qwen-image-s", "matmul_sizes": (4096, 8192, 16384), "pretrain_batch": 16, "pretrain_steps": 8,
        "sft_batch": 8, "sft_steps": 6, "text_tokens": 64, "compile_preset": "tiny", "compile_steps": 8,
        "generate_batches": (1, 8, 32), "generate_rounds": 2, "max_new_tokens": 32}
DRY = {"preset": "nano", "matmul_sizes": (256,), "pretrain_batch": 4, "pretrain_steps": 2, "sft_batch": 2,
       "sft_steps": 2, "text_tokens": 8, "compile_preset": "nano", "compile_steps": 2, "generate_batches": (1, 2),
       "generate_rounds": 1, "max_new_tokens": 4}
SDPA_OPS = {"aten::_scaled_dot_product_flash_attention": "flash",
            "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
            "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
            "aten::_scaled_dot_product_cudnn_attention": "cudnn",
            "aten::_scaled_dot_product_attention_math": "math"}
"""The op each SDPA backend dispatches to: what the profiler names when the model's attention runs."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on any device (CI); appends nothing")
    parser.add_argument("--out", default="benchmarks/out/gpu_check.json")
    parser.add_argument("--results", default="benchmarks/RESULTS.md", help="the Markdown file a full run appends to")
    parser.add_argument("--compile-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = DRY if args.dry_run else FULL
    if args.compile_worker:
        compile_worker(sizes, args.compile_worker, compile_blocks=not args.dry_run)
        return
    device = resolve_device("auto")
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("no CUDA GPU: run on a GPU machine, or with --dry-run to check the script on this one")
    started = time.perf_counter()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "dry_run": args.dry_run, "machine": machine(device), "sizes": {k: list(v) if isinstance(v, tuple) else v
                                                                            for k, v in sizes.items()}}
    peak, by_size = matmul_peak(torch.bfloat16, device, sizes=sizes["matmul_sizes"])
    report["bf16_matmul_peak_tflops"] = round(peak / 1e12, 2)
    report["bf16_matmul_tflops_by_size"] = {size: round(v / 1e12, 2) for size, v in by_size.items()}
    step("matmul peak", report["bf16_matmul_peak_tflops"], "TFLOP/s", started)

    model, tokenizer = build_on(device, sizes["preset"])
    report["sdpa_kernels"] = sdpa_kernels(model, sizes)
    step("SDPA kernels", report["sdpa_kernels"], "", started)
    report["generation"] = generation(model, tokenizer, sizes)  # before training wraps the blocks for checkpointing
    step("generation", [(r["name"], r["batch"], r["tokens_per_s"]) for r in report["generation"]], "", started)
    report["pretrain"] = pretrain_steps(model, sizes, peak)
    step("pretraining", report["pretrain"], "", started)
    report["sft"] = sft_steps(model, sizes, peak)
    step("SFT", report["sft"], "", started)
    del model
    release(device)
    report["fsdp2_compile"] = fsdp2_compile(args.dry_run)
    step("FSDP2 + compile", report["fsdp2_compile"], "", started)
    report["seconds"] = round(time.perf_counter() - started, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    print(f"wrote {out}")
    if not args.dry_run:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + markdown(report))
        print(f"appended to {args.results}")


def step(name: str, value, unit: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {name}: {value} {unit}", flush=True)


def machine(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update({"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
    return info


def build_on(device: torch.device, preset: str) -> tuple[QwenImageModel, object]:
    """`preset` with a small BPE tokenizer's `<image>` id (the vocabulary stays the preset's), built on the meta
    device and initialised on `device` as the Trainer does (`init_weights`, shard by shard)."""
    _, tokenizer = build("nano")  # infer_throughput's tokenizer (its model is dropped)
    config = ModelConfig.from_preset(preset)
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config.vision.num_prompts = 1  # 1 + grid² visual tokens, as Llava's CLIP with its CLS token
    model = build_empty(lambda: QwenImageModel(config))
    materialize(model, device)
    init_weights(model, seed=0)
    return model, tokenizer


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def pretrain_batch(config: ModelConfig, rows: int, text: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = config.vision.image_size
    return {"pixel_values": torch.randn(rows, 3, size, size, generator=generator),
            "input_ids": torch.randint(10, config.language.vocab_size, (rows, text), generator=generator),
            "attention_mask": torch.ones(rows, text, dtype=torch.long)}


def sft_batch(model: QwenImageModel, rows: int, text: int) -> dict[str, torch.Tensor]:
    """Rows of one image (its visual-token slots) and `text` tokens, the second half of them supervised."""
    config, generator = model.config, torch.Generator().manual_seed(1)
    size, slots = config.vision.image_size, model.num_image_tokens()
    words = torch.randint(10, config.language.vocab_size, (rows, text), generator=generator)
    ids = torch.cat([torch.full((rows, slots), config.image_token_id), words], dim=1)  # [B, Nv + T]
    labels = ids.clone()
    labels[:, : slots + text // 2] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(rows, 1, 3, size, size, generator=generator),
            "image_mask": torch.ones(rows, 1, dtype=torch.bool)}


def sdpa_kernels(model: QwenImageModel, sizes: dict) -> dict[str, dict[str, int]]:
    """Which SDPA op ran how often in one bf16 forward of each objective (the profiler's op names)."""
    device = next(model.parameters()).device
    pretrain = PretrainObjective(PretrainLossConfig(), mask_token_id=2, special_token_ids=[0, 1, 2, 3])
    runs = {"pretrain": (pretrain, pretrain_batch(model.config, 2, sizes["text_tokens"])),
            "sft": (sft_objective, sft_batch(model, 2, sizes["text_tokens"]))}
    found = {}
    for name, (objective, batch) in runs.items():
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16), torch.profiler.profile() as profile:
            objective(model, batch)
        counts = Counter(SDPA_OPS[event.name] for event in profile.events() if event.name in SDPA_OPS)
        found[name] = dict(counts)
    return found


def timed_training(model: QwenImageModel, objective, data: dict, steps: int, batch: int, peak: float) -> dict:
    """`steps` Trainer steps (bf16, activation checkpointing); the figures are the second half's."""
    device = next(model.parameters()).device
    train = TrainConfig(steps=steps, batch_size=batch, lr=1e-5, warmup_steps=1, precision="bf16",
                        activation_checkpointing=True, log_every=max(1, steps // 2), tensorboard=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(model, objective, train, data)
    timed = trainer.fit("gpu check")[-1]
    result = {"batch": batch, "steps": steps, "samples_per_s": timed["samples_per_s"],
              "tokens_per_s": timed["tokens_per_s"], "mfu": round(timed["flops_per_s"] / peak, 4),
              "tflops_per_s": round(timed["flops_per_s"] / 1e12, 2), "final_loss": round(timed["loss"], 4)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    del trainer  # its optimizer state
    release(device)
    return result


def pretrain_steps(model: QwenImageModel, sizes: dict, peak: float) -> dict:
    rows = sizes["pretrain_batch"] * 2
    objective = PretrainObjective(PretrainLossConfig(), mask_token_id=2, special_token_ids=[0, 1, 2, 3])
    return timed_training(model, objective, pretrain_batch(model.config, rows, sizes["text_tokens"]),
                          sizes["pretrain_steps"], sizes["pretrain_batch"], peak)


def sft_steps(model: QwenImageModel, sizes: dict, peak: float) -> dict:
    data = sft_batch(model, sizes["sft_batch"] * 2, sizes["text_tokens"])
    return timed_training(model, sft_objective, data, sizes["sft_steps"], sizes["sft_batch"], peak)


def fsdp2_compile(dry_run: bool) -> dict:
    """FSDP2 on one rank (torchrun), eager and with compiled blocks, in a process of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fsdp2.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                   str(Path(__file__).resolve()), "--compile-worker", str(out), *(["--dry-run"] if dry_run else [])]
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def compile_worker(sizes: dict, out: str, compile_blocks: bool) -> None:
    """Under torchrun: `compile_steps` FSDP2 steps of the compile preset eager, then with compiled blocks (on the
    CPU of a dry run, eager twice: inductor's C++ build alone takes longer than the rest of the check)."""
    info = init_distributed("fsdp2")
    runs = {}
    for name, compiled in (("eager", False), ("compiled", compile_blocks)):
        config = ModelConfig.from_preset(sizes["compile_preset"])
        model = build_empty(lambda config=config: QwenImageModel(config))
        data = pretrain_batch(config, 64, 16)
        train = TrainConfig(steps=sizes["compile_steps"], batch_size=8, lr=1e-4, warmup_steps=1, precision="bf16",
                            compile=compiled, log_every=1, tensorboard=False, measure_mfu=False,
                            parallel=ParallelConfig(mode="fsdp2"), device=str(info.device))
        started = time.perf_counter()
        history = Trainer(model, PretrainObjective(PretrainLossConfig(), 2, [0, 1, 2, 3]), train, data, dist_info=info,
                          fill=lambda m: init_weights(m, seed=0)).fit(name)
        runs[name] = {"losses": [round(r["loss"], 4) for r in history], "seconds": round(time.perf_counter() - started, 1),
                      "compiled": compiled}
    eager, compiled = runs["eager"]["losses"], runs["compiled"]["losses"]
    runs["max_loss_difference"] = round(max(abs(a - b) for a, b in zip(eager, compiled)), 4)
    Path(out).write_text(json.dumps(runs))
    torch.distributed.destroy_process_group()


def generation(model: QwenImageModel, tokenizer, sizes: dict) -> list[dict]:
    """The Engine against Llava's generate at each batch size, bf16 autocast on both, caches cold."""
    device = next(model.parameters()).device
    engine = Engine(model, tokenizer, EngineConfig(fast_path_max_new_tokens=0, precision="bf16",
                                                   max_batch_size=max(sizes["generate_batches"])))
    hf = HFRunner(llava_like(model).to(device), engine, bf16=True)
    rows = []
    for batch in sizes["generate_batches"]:
        settings = [Setting("hf_llava_generate", hf.generate), Setting("engine", engine_counts(engine), clear(engine))]
        rows += interleaved_throughput(settings, batch, sizes["generate_rounds"], sizes["max_new_tokens"],
                                       model.config.vision.image_size)
    del hf
    release(device)
    return rows


def markdown(report: dict) -> str:
    """The RESULTS.md section of a run."""
    m, p, s = report["machine"], report["pretrain"], report["sft"]
    memory = "peak_memory_gib" if "peak_memory_gib" in p else "peak_rss_gib"
    lines = [f"## GPU check (`benchmarks/gpu_check.sh`), {report['date']}{' (dry run)' if report['dry_run'] else ''}",
             "",
             f"{m.get('gpu', m['device'])}, torch {m['torch']}, CUDA {m.get('cuda')}, transformers {m['transformers']}; "
             f"{report['sizes']['preset']}; the whole check took {report['seconds']} s.",
             "",
             f"- bf16 matmul peak: **{report['bf16_matmul_peak_tflops']} TFLOP/s** (by size: "
             f"{report['bf16_matmul_tflops_by_size']})",
             f"- SDPA kernels (one bf16 forward): {report['sdpa_kernels']}",
             "",
             "| run | batch | samples/s | tokens/s | TFLOP/s | MFU | peak memory GiB |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| pretraining (mixed loss, bf16, activation checkpointing) | {p['batch']} | {p['samples_per_s']} | "
             f"{p['tokens_per_s']} | {p['tflops_per_s']} | {p['mfu']:.1%} | {p[memory]} |",
             f"| SFT | {s['batch']} | {s['samples_per_s']} | {s['tokens_per_s']} | {s['tflops_per_s']} | {s['mfu']:.1%} | "
             f"{s[memory]} |",
             "",
             f"- FSDP2 + torch.compile ({report['sizes']['compile_preset']}, 1 rank): eager "
             f"{report['fsdp2_compile']['eager']['seconds']} s, compiled {report['fsdp2_compile']['compiled']['seconds']} s "
             f"(compile included); largest loss difference {report['fsdp2_compile']['max_loss_difference']}",
             "",
             "| generation | batch | tokens/s | p50 s | vs HF |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['batch']} | {r['tokens_per_s']} | {r['latency_p50_s']} | {r['vs_hf']} |"
              for r in report["generation"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
