"""Inference speed: our Engine vs transformers' LlavaForConditionalGeneration, the feature cache, int8.

Why: users compare a serving stack with what they already run (Hugging Face `generate`), and
the Engine's speed claims (its caches, int8) need numbers. Everything is measured
in one run, on the same prompts:
1. generation throughput (generated tokens/s) and latency p50/p95 at batch 1 and batch 8:
   the Engine (caches cold: every image new; and warm: the same images asked about before, so
   their visual tokens and image-prefix KV states are cached) against
   `LlavaForConditionalGeneration` at identical sizes. The language model and the projector
   weights are copied into Llava (checked: text-only greedy decoding gives the same tokens);
   Llava's vision tower is a CLIP ViT of the same width, depth, heads, MLP and patch grid with
   its own random weights (our tower's hierarchical attention has no Llava counterpart), and
   the visual token count is identical (`num_prompts=1`, Llava keeps CLS: 1 + grid² each);
2. the image path of a repeated image with the cache cold (vision tower + projector run)
   and warm (an LRU hit);
3. fp32 vs int8 for each int8 variant: on the Linear layers alone (one MLP block of the
   vision tower and of the LM, at the token counts of a batch of 8), on the Linear-heavy
   passes (image path, LM prefill: attention, norms and the rest stay fp32), and the
   Engine's tokens/s at batch 8 with int8-dynamic;
4. bf16 at batch 8 (the fast matmul path of CPUs with AVX-512 bf16): the Engine with bf16
   autocast against Llava's generate under the same autocast.
Models have random weights: speed does not depend on what they learned, and both sides stop
only at the same stop ids or the token budget (the generated counts are in the JSON).

Run: `python benchmarks/infer_throughput.py` (the `small` preset; several minutes on 2 idle
cores) or `--quick` (tiny preset, fewer rounds); writes benchmarks/out/infer_throughput.json
(`--out`). The cores may be shared: the JSON records the load average before and after, and
`--threads 1` keeps small ops from waiting on a descheduled second thread (on 2 oversubscribed
cores a nano-sized vision pass took 316 ms with 2 threads and 1.4 ms with 1).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from vlstack.data.collate import image_to_tensor
from vlstack.eval.deployment import feature_cache_figures
from vlstack.infer.engine import Engine, EngineConfig, Request, SamplingParams
from vlstack.infer.quantize import best_seconds, linear_heavy_passes, quantize_model
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import IM_END, special_token_ids, train_tokenizer
from vlstack.models.vlm import QwenImageModel
from vlstack.synthetic.scenes import shape_scenes, split_seed
from vlstack.train.flops import matmul_peak

QUESTIONS = ["What colour is the largest shape in this picture?", "How many shapes are there in the image?",
             "Describe the picture in one sentence, please.", "Which shape is on the left side of the image?"]
INT8_VARIANTS = (("int8-dynamic", "fbgemm"), ("int8-dynamic", "torchao"), ("int8-weight-only", "auto"))


def build(preset: str, seed: int = 0) -> tuple[QwenImageModel, object]:
    """A random-weight model of `preset` with one visual prompt token, and a BPE tokenizer."""
    config = ModelConfig.from_preset(preset)
    config.vision.num_prompts = 1  # 1 + grid² visual tokens, as Llava's CLIP with its CLS token
    captions = [s.caption for s in shape_scenes(300, seed=seed)] + QUESTIONS
    tokenizer = train_tokenizer(captions, vocab_size=min(2048, config.language.vocab_size))
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(seed)
    return QwenImageModel(config).eval(), tokenizer


def llava_like(model: QwenImageModel) -> LlavaForConditionalGeneration:
    """LlavaForConditionalGeneration at identical sizes, with our LM and projector weights copied in."""
    v = model.config.vision
    vision = CLIPVisionConfig(hidden_size=v.width, intermediate_size=round(v.width * v.mlp_ratio),
                              num_hidden_layers=v.layers, num_attention_heads=v.heads, image_size=v.image_size,
                              patch_size=v.patch_size, hidden_act="gelu", layer_norm_eps=v.norm_eps)
    config = LlavaConfig(vision_config=vision, text_config=model.language_model.config,
                         image_token_id=model.config.image_token_id, vision_feature_select_strategy="full",
                         vision_feature_layer=-1, projector_hidden_act="gelu", multimodal_projector_bias=True)
    config._attn_implementation = "sdpa"
    torch.manual_seed(1)
    llava = LlavaForConditionalGeneration(config).eval()
    llava.model.language_model.load_state_dict(model.language_model.model.state_dict())
    llava.lm_head.load_state_dict(model.language_model.lm_head.state_dict())
    projector = llava.model.multi_modal_projector
    projector.linear_1.load_state_dict(model.projector.fc1.state_dict())
    projector.linear_2.load_state_dict(model.projector.fc2.state_dict())
    return llava


class HFRunner:
    """The same requests through `LlavaForConditionalGeneration.generate` (left-padded batch)."""

    def __init__(self, llava: LlavaForConditionalGeneration, engine: Engine, bf16: bool = False):
        self.llava, self.engine, self.bf16 = llava, engine, bf16
        self.device = next(llava.parameters()).device
        ids = special_token_ids(engine.tokenizer)
        self.stop_ids = [ids.eos, engine.tokenizer.convert_tokens_to_ids(IM_END)]  # the Engine's stop ids
        self.pad_id = ids.pad

    @torch.no_grad()
    def generate(self, requests: list[Request]) -> list[int]:
        """Generated token counts per request."""
        prompts = [self.engine.prompt_ids(r) for r in requests]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        vision = self.engine.model.config.vision
        pixels = torch.stack([image_to_tensor(r.images[0], vision) for r in requests]).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.llava.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, do_sample=False,
                                      max_new_tokens=requests[0].params.max_new_tokens,
                                      eos_token_id=self.stop_ids, pad_token_id=self.pad_id)
        new = out[:, width:].cpu()
        return [int(((row != self.pad_id) & ~torch.isin(row, torch.tensor(self.stop_ids))).sum()) for row in new]


def requests_for(round_index: int, n: int, max_new_tokens: int, image_size: int) -> list[Request]:
    scenes = shape_scenes(n, seed=1000 + round_index, image_size=image_size)
    return [Request.ask(QUESTIONS[i % len(QUESTIONS)], s.image, max_new_tokens=max_new_tokens)
            for i, s in enumerate(scenes)]


@dataclass
class Setting:
    """One way of answering requests: a generate function (-> generated token counts) and an untimed
    preparation before each timed call (e.g. clearing or priming the feature cache)."""

    name: str
    generate: Callable[[list[Request]], list[int]]
    prepare: Callable[[list[Request]], object] = lambda requests: None


def interleaved_throughput(settings: list[Setting], batch: int, rounds: int, max_new_tokens: int,
                           image_size: int) -> list[dict]:
    """tokens/s and per-request latency p50/p95 of each setting over `rounds` rounds of 8 requests (or one
    batch, if larger) at `batch`. The settings take turns on each batch, so load from other jobs on shared cores falls on
    all of them alike; `vs_hf` is the median over batches of the first setting's (HF's) time over this one's."""
    for setting in settings:  # warm-up, untimed
        setting.generate(requests_for(999, batch, max_new_tokens, image_size))
    times: dict[str, list[float]] = {s.name: [] for s in settings}
    tokens = dict.fromkeys(times, 0)
    per_round = max(8, batch)
    for r in range(rounds):
        requests = requests_for(r, per_round, max_new_tokens, image_size)
        for start in range(0, per_round, batch):
            chunk = requests[start : start + batch]
            for setting in settings:
                setting.prepare(chunk)
                started = time.perf_counter()
                tokens[setting.name] += sum(setting.generate(chunk))
                times[setting.name].append(time.perf_counter() - started)
    rows, first = [], times[settings[0].name]
    for setting in settings:
        calls = times[setting.name]
        latencies = sorted(t for t in calls for _ in range(batch))  # every request of a batch ends with it
        rows.append({"name": setting.name, "batch": batch, "tokens": tokens[setting.name],
                     "seconds": round(sum(calls), 3), "tokens_per_s": round(tokens[setting.name] / sum(calls), 2),
                     "latency_p50_s": round(statistics.median(latencies), 4),
                     "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4),
                     "vs_hf": round(statistics.median(f / t for f, t in zip(first, calls)), 2)})
    return rows


def clear(engine: Engine) -> Callable[[list[Request]], None]:
    """Caches cold: every image of the timed call is new to the Engine."""
    return lambda requests: engine.clear_caches()


def prime(engine: Engine) -> Callable[[list[Request]], None]:
    """Caches warm: the timed call's images were asked about before (their visual tokens and image-prefix
    KV states are cached)."""
    return lambda requests: engine.generate([dataclasses.replace(r, params=SamplingParams(max_new_tokens=1))
                                             for r in requests])


def engine_counts(engine: Engine) -> Callable[[list[Request]], list[int]]:
    return lambda requests: [len(r.token_ids) for r in engine.generate(requests)]


def mlp_passes(model: QwenImageModel, batch: int = 8, text_tokens: int = 64) -> dict[str, Callable[[], object]]:
    """The Linear layers alone: the first MLP block of the vision tower on `batch` images' tokens,
    and of the LM on `batch` x `text_tokens` tokens."""
    vision_mlp, lm_mlp = model.vision.blocks[0].mlp, model.language_model.model.layers[0].mlp
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(batch, model.num_image_tokens(), model.config.vision.width, generator=generator)
    text = torch.randn(batch, text_tokens, model.config.language.hidden_size, generator=generator)
    return {"vision_mlp": lambda: vision_mlp(patches), "lm_mlp": lambda: lm_mlp(text)}


def same_lm_weights(engine: Engine, hf: HFRunner) -> bool:
    """Text-only greedy decoding of both stacks gives the same tokens (the LM weights were copied)."""
    request = Request.ask(QUESTIONS[0], max_new_tokens=12)
    ours = engine.generate([request])[0].token_ids
    ids = torch.tensor([engine.prompt_ids(request)], device=hf.device)
    with torch.no_grad():
        theirs = hf.llava.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=12, eos_token_id=hf.stop_ids, pad_token_id=hf.pad_id)
    return theirs[0, ids.shape[1] : ids.shape[1] + len(ours)].tolist() == ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 8 requests per setting")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 1 round, 16 new tokens")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice); on cores shared "
                        "with other jobs use 1: a 2-thread op waits for both threads to be scheduled")
    parser.add_argument("--out", default="benchmarks/out/infer_throughput.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.preset, args.rounds, args.max_new_tokens = "tiny", 1, 16
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    model, tokenizer = build(args.preset)
    size = model.config.vision.image_size
    config = EngineConfig(fast_path_max_new_tokens=0, max_batch_size=8)
    engine = Engine(model, tokenizer, config)
    llava = llava_like(model)
    hf = HFRunner(llava, engine)
    result: dict = {
        "preset": args.preset, "visual_tokens": model.num_image_tokens(), "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds, "lm_weights_identical_greedy": same_lm_weights(engine, hf),
        "fp32_matmul_peak_gflops": round(matmul_peak(torch.float32, torch.device("cpu"))[0] / 1e9, 1),
        "generation": [],
    }
    common = {"rounds": args.rounds, "max_new_tokens": args.max_new_tokens, "image_size": size}
    int8 = {f"{method}/{kernel}": quantize_model(copy.deepcopy(model), method, kernel)
            for method, kernel in INT8_VARIANTS}
    int8_engine = Engine(int8["int8-dynamic/fbgemm"], tokenizer, config)
    bf16_engine = Engine(model, tokenizer, dataclasses.replace(config, precision="bf16"))
    hf_bf16 = HFRunner(llava, bf16_engine, bf16=True)
    for batch in (1, 8):
        settings = [Setting("hf_llava_generate", hf.generate),
                    Setting("engine_cache_cold", engine_counts(engine), clear(engine)),
                    Setting("engine_cache_warm", engine_counts(engine), prime(engine))]
        if batch == 8:
            settings += [Setting("engine_int8_dynamic_cache_cold", engine_counts(int8_engine), clear(int8_engine)),
                         Setting("hf_llava_generate_bf16_autocast", hf_bf16.generate),
                         Setting("engine_bf16_cache_cold", engine_counts(bf16_engine), clear(bf16_engine)),
                         Setting("engine_bf16_cache_warm", engine_counts(bf16_engine), prime(bf16_engine))]
        result["generation"] += interleaved_throughput(settings, batch, **common)
    result["vision_path"] = feature_cache_figures(engine, [s.image for s in shape_scenes(17, seed=split_seed(0, "test"))])

    variants = {"fp32": model, **int8}
    seconds = best_seconds({name: {**mlp_passes(m), **linear_heavy_passes(m)} for name, m in variants.items()})
    result["linear_heavy_seconds"] = {
        name: {**row, **({"speedup": {k: round(seconds["fp32"][k] / v, 2) for k, v in row.items()}}
                         if name != "fp32" else {})} for name, row in seconds.items()}
    result["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version(),
                         "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0]}
    result["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    _print(result)
    print(f"wrote {out}")


def _print(result: dict) -> None:
    print(f"{result['preset']}: {result['visual_tokens']} visual tokens, {result['max_new_tokens']} new tokens; "
          f"LM weights identical (greedy text-only): {result['lm_weights_identical_greedy']}")
    print(f"{'setting':34} {'batch':>5} {'tok/s':>8} {'p50 s':>8} {'p95 s':>8} {'vs HF':>6}")
    for row in result["generation"]:
        print(f"{row['name']:34} {row['batch']:>5} {row['tokens_per_s']:>8} {row['latency_p50_s']:>8} "
              f"{row['latency_p95_s']:>8} {row['vs_hf']:>6}")
    vision = result["vision_path"]
    print(f"image path of a repeated image: cold {vision['cold_ms']} ms, warm {vision['warm_ms']} ms "
          f"({vision['speedup']}x)")
    for name, row in result["linear_heavy_seconds"].items():
        if name != "fp32":
            print(f"{name}: speed-up over fp32 {row['speedup']}")
    machine = result["machine"]
    print(f"load average {machine['load_avg_1min_before']} before, {machine['load_avg_1min_after']} after")


if __name__ == "__main__":
    main()
