"""int8 quantization of every Linear layer: vision tower, language model, fusion, projector and heads.

Two methods, both with per-channel symmetric int8 weights (torchao's `Int8Tensor`):
- `int8-dynamic`: activations are quantized per call too, and the matmuls run in int8;
- `int8-weight-only`: int8 weights, dequantized inside the matmul; activations stay fp32.

Kernels. torchao quantizes and stores the weights everywhere. On CPU its int8-dynamic
matmul gains little (1.2-1.6x over fp32 on the small preset with 1 thread, slower than
fp32 with 2 threads for layers up to 512 wide; no better under torch.compile), while
torch.ao's fbgemm/x86 dynamic Linear is 2.3-3.1x faster (benchmarks/RESULTS.md). So on
CPU `int8-dynamic` runs on torch.ao's kernel by default: the same int8 weights and scales,
repacked (`kernel="fbgemm"`). Its activations are quantized per tensor, not per token as
in torchao: slightly less accurate, and a row's result depends on the other rows of its
batch (`kernel="torchao"` quantizes per token); over the full 8-bit range where the CPU has VNNI,
a 7-bit range where it has not (torchao's `should_reduce_range`: an overflow guard).
`int8-weight-only` has no CPU kernel faster than fp32: it makes weights 4x smaller, not
faster.

A quantized checkpoint (`vlstack.checkpoint`: int8 weights and scales in torchao's
safetensors layout, plus `quantization.yaml` naming the method) is about 4x smaller than
fp32 on the Linear weights; `checkpoint.load_model` loads it like any other, and
`Engine.from_checkpoint` then selects the kernel. Quantization is a deterministic function
of the fp32 weights, so quantizing in memory (`quantize_model`) gives the same model as
saving and loading.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from vlstack import checkpoint
from vlstack.checkpoint import check_method, int8_structure, load_model, quantization_of
from vlstack.config import to_dict
from vlstack.errors import ConfigError
from vlstack.files import write_json
from vlstack.models.vlm import QwenImageModel

Kernel = Literal["auto", "torchao", "fbgemm"]
KERNELS: tuple[str, ...] = ("auto", "torchao", "fbgemm")


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ConfigError(f"unknown int8 kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")


def quantize_model(model: QwenImageModel, method: str, kernel: Kernel = "auto") -> QwenImageModel:
    """Quantize every Linear layer of `model` in place (and return it) for inference.

    `kernel` picks the int8-dynamic matmul: fbgemm (torch.ao, the fast one on CPU), torchao,
    or auto (fbgemm on CPU, torchao elsewhere). int8-weight-only always runs on torchao.
    """
    check_method(method)
    check_kernel(kernel)
    int8_structure(model, method)
    select_kernel(model, method, kernel)
    return model.eval()


def quantize_checkpoint(source: str | Path, out: str | Path, method: str) -> Path:
    """Write an int8 checkpoint of the fp32 checkpoint `source` into `out` (atomically)."""
    check_method(method)
    source, out = Path(source), Path(out)
    if quantization_of(source) is not None:
        raise ConfigError(f"{source} is already an int8 checkpoint; quantize the fp32 checkpoint it came from")
    model = load_model(source)
    int8_structure(model, method)
    with checkpoint.atomic_directory(out) as tmp:
        checkpoint.write_int8_model(model, method, tmp, source / checkpoint.TOKENIZER_DIR)
    return out


def load_for_inference(directory: str | Path, kernel: Kernel = "auto",
                       device: torch.device | str = "cpu") -> QwenImageModel:
    """`checkpoint.load_model` on `device`, with an int8 checkpoint moved onto the chosen kernel."""
    check_kernel(kernel)
    quantization = quantization_of(directory)
    if quantization is not None and torch.device(device).type != "cpu" and kernel == "fbgemm":
        raise ConfigError(f"{directory} is int8 and kernel=fbgemm runs on the CPU only (torch.ao's x86 kernel); "
                          "use device=cpu, or kernel=torchao on the GPU")
    model = load_model(directory).to(device)
    if quantization is not None:
        select_kernel(model, quantization.method, kernel)
    return model


@dataclass
class QuantizeConfig:
    """`vlstack quantize`: the int8 checkpoint, and how its size and speed are measured against fp32."""

    kernel: Kernel = "auto"
    """The int8-dynamic matmul kernel the speed is measured with (the checkpoint is the same for all)."""
    speed_batch: int = 8
    """Images (and text rows) per timed pass."""
    speed_tokens: int = 64
    """Text length of the timed LM prefill."""
    speed_repeats: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check_kernel(self.kernel)
        if min(self.speed_batch, self.speed_tokens, self.speed_repeats) < 1:
            raise ConfigError("speed_batch, speed_tokens and speed_repeats must be at least 1")


REPORT_NAME = "quantize.json"


def run_quantize(source: str | Path, out: str | Path, method: str, config: QuantizeConfig | None = None) -> dict:
    """`vlstack quantize`: write the int8 checkpoint `out` of `source`, and measure its weight bytes and
    the speed of its Linear-heavy passes against fp32 (`out/quantize.json`). Accuracy is `vlstack eval`'s
    job: it loads int8 checkpoints like any other, so run it on both on the benchmarks that matter."""
    config = config or QuantizeConfig()
    started = time.perf_counter()
    out = quantize_checkpoint(source, out, method)
    report = {"method": method, "source": str(source), "checkpoint": str(out), "config": to_dict(config),
              **size_and_speed(load_model(source), load_for_inference(out, config.kernel), config)}
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / REPORT_NAME, report)
    return report


def size_and_speed(fp32: QwenImageModel, int8: QwenImageModel, config: QuantizeConfig) -> dict:
    """Weight bytes of both, and the best-of-repeats seconds of their Linear-heavy passes with the speed-up."""
    speed = best_seconds({name: linear_heavy_passes(model, config.speed_batch, config.speed_tokens, config.seed)
                          for name, model in (("fp32", fp32), ("int8", int8))}, config.speed_repeats)
    speed["speedup"] = {part: round(speed["fp32"][part] / speed["int8"][part], 3) for part in speed["fp32"]}
    return {"weight_bytes": {"fp32": weight_bytes(fp32), "int8": weight_bytes(int8)}, "speed_seconds": speed}


def quantization_summary(report: dict) -> str:
    """A few lines for the terminal: speed-ups and size."""
    speedup = ", ".join(f"{part} {x:.2f}x" for part, x in report["speed_seconds"]["speedup"].items())
    sizes = report["weight_bytes"]
    return (f"int8 checkpoint ({report['method']}): {report['checkpoint']}\n"
            f"speed-up over fp32: {speedup}; weights {sizes['fp32'] / 2**20:.1f} MiB -> "
            f"{sizes['int8'] / 2**20:.1f} MiB; report: {report['checkpoint']}/{REPORT_NAME}\n"
            f"accuracy: run `vlstack eval` on both checkpoints")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as stored (int8 data + scales for quantized layers)."""
    total = 0
    for tensor in model.state_dict().values():
        for part in tensor if isinstance(tensor, tuple) else (tensor,):  # torch.ao packs (weight, bias)
            total += _tensor_bytes(part)
    return total


def linear_heavy_passes(model: QwenImageModel, batch: int = 8, tokens: int = 64, seed: int = 0
                        ) -> dict[str, Callable[[], object]]:
    """The model's Linear-heavy forward passes, ready to time: the image path (vision tower +
    projector) on `batch` images, and a language-model prefill of `batch` x `tokens`."""
    generator = torch.Generator().manual_seed(seed)
    vision = model.config.vision
    pixels = torch.randn(batch, vision.in_channels, vision.image_size, vision.image_size, generator=generator)
    ids = torch.randint(model.config.language.vocab_size, (batch, tokens), generator=generator)
    lm = model.language_model
    return {"image_path": lambda: model.image_features(pixels),
            "lm_prefill": lambda: lm(input_ids=ids, use_cache=False, logits_to_keep=1)}


@torch.no_grad()
def best_seconds(passes: dict[str, dict[str, Callable[[], object]]], repeats: int = 5) -> dict[str, dict[str, float]]:
    """Wall seconds of each variant's passes ({variant: {pass: fn}}): the best of `repeats` after one
    warm-up, with the variants interleaved, so that other load on a shared machine hits them alike and
    the minimum is the run least disturbed by it."""
    best = {variant: {} for variant in passes}
    for round_index in range(repeats + 1):
        for variant, fns in passes.items():
            for name, fn in fns.items():
                started = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - started
                if round_index:  # round 0 warms up
                    best[variant][name] = min(best[variant].get(name, elapsed), elapsed)
    return best


# --- internals -----------------------------------------------------------------------------


def _tensor_bytes(tensor) -> int:
    if not isinstance(tensor, torch.Tensor):
        return 0
    if tensor.is_quantized:  # torch.ao per-channel int8: data + float scales
        return tensor.numel() + tensor.q_per_channel_scales().numel() * 4
    if hasattr(tensor, "qdata"):  # torchao Int8Tensor
        return tensor.qdata.numel() + tensor.scale.numel() * tensor.scale.element_size()
    return tensor.numel() * tensor.element_size()


def select_kernel(model: nn.Module, method: str, kernel: Kernel) -> None:
    """Move an int8-dynamic model onto fbgemm when asked, or by default on CPU; else it stays on torchao."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if method == "int8-dynamic" and (kernel == "fbgemm" or (kernel == "auto" and on_cpu)):
        _to_fbgemm(model)


class FbgemmInt8Linear(DynamicLinear):
    """torch.ao's dynamic int8 Linear (fbgemm/x86 kernel) with a choosable activation range (torch.ao
    always uses 7 bits, which only CPUs without VNNI need); takes bf16 inputs too (under autocast)."""

    reduce_range = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x.float(), packed, reduce_range=self.reduce_range).to(x.dtype)


def _to_fbgemm(model: nn.Module) -> None:
    """Swap each torchao int8 Linear for torch.ao's dynamic quantized Linear with the same int8 weights."""
    from torchao.utils import should_reduce_range

    reduce_range = should_reduce_range(torch.device("cpu"))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            weight = getattr(child, "weight", None)
            if not isinstance(child, nn.Linear) or not hasattr(weight, "qdata"):
                continue
            out_features = weight.shape[0]
            with warnings.catch_warnings():  # torch.ao's quantized tensors are deprecated, with no CPU successor yet
                warnings.filterwarnings("ignore", message="torch.quantize_per_tensor", category=UserWarning)
                qweight = torch._make_per_channel_quantized_tensor(
                    weight.qdata, weight.scale.reshape(-1).double(), torch.zeros(out_features, dtype=torch.long), 0)
            swapped = FbgemmInt8Linear(child.in_features, out_features, bias_=child.bias is not None)
            swapped.set_weight_bias(qweight, None if child.bias is None else child.bias.detach())
            swapped.reduce_range = reduce_range
            setattr(parent, name, swapped)
