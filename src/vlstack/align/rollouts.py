"""What PPO and GRPO share: rollouts through the Engine, and the run around the Trainer.

Each iteration samples answers to a batch of prompts with the shared generation path (an `Engine`
around the live policy, so what is trained is exactly what is sampled), scores them, and hands
the Trainer `epochs` shuffled passes of minibatches over them. Under torchrun each rank samples and
scores its own share of the prompts (`share`; the reference and reward models are replicated, one copy
per rank) with the policy's whole weights (`whole_weights`: gathered once under FSDP2, so generation
runs no collectives), and `gather_rows` gives every rank the whole iteration, from which the advantages
are computed alike everywhere; the Trainer then splits each minibatch over the ranks as usual. `RolloutSource` is that batch
source: it makes the next iteration's rollouts when the last minibatch of the previous one has
been drawn, so the run is one `Trainer.fit` with the Trainer's own checkpoints on a schedule and on
SIGTERM, its logs and its exact resume (the current iteration's rollouts are part of every
checkpoint, so a resumed run continues with the very minibatches it would have drawn).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vlstack.align.logprobs import Batch, ResponseScores, encode_responses, score_responses, trained_engine
from vlstack.align.preference import answer_accuracy, answer_of, answer_reward, prompt_request
from vlstack.checkpoint import load_model, recover_directory, write_model_files
from vlstack.collectives import gather_objects, main_rank_first, main_rank_result
from vlstack.data.loader import GlobalBatches
from vlstack.data.schema import Sample
from vlstack.errors import ConfigError
from vlstack.files import read_jsonl, write_jsonl
from vlstack.infer.engine import Engine
from vlstack.models.parallelize import whole_weights
from vlstack.models.tokenizer import IM_END
from vlstack.models.vlm import QwenImageModel
from vlstack.train.distributed import DistInfo
from vlstack.train.trainer import Objective, TrainConfig, Trainer

LOG_NAME = "align_log.jsonl"


@dataclass
class RolloutConfig:
    """How answers are sampled: from the policy's own distribution (temperature 1, no top-k or top-p), the
    distribution whose log-probabilities the policy-ratio terms use."""

    prompts: int = 32
    """Prompts per iteration."""
    max_new_tokens: int = 8
    eval_samples: int = 4
    """Sampled answers per held-out prompt for the held-out reward before and after training."""

    def __post_init__(self) -> None:
        if min(self.prompts, self.max_new_tokens, self.eval_samples) < 1:
            raise ConfigError("rollout.prompts, rollout.max_new_tokens and rollout.eval_samples must be at least 1")


def check_minibatches(rollouts: int, train: TrainConfig, iterations: int, epochs: int) -> None:
    if iterations < 1 or epochs < 1:
        raise ConfigError("iterations and epochs must be at least 1")
    if rollouts % train.batch_size:
        raise ConfigError(f"train.batch_size (the minibatch, {train.batch_size}) must divide the {rollouts} "
                          "rollouts of an iteration")


# --- rollouts ------------------------------------------------------------------------------


@dataclass
class Rollouts:
    texts: list[str]
    rewards: torch.Tensor
    """[N] the exact-answer reward of each answer."""
    batch: Batch
    """Scoring rows of the prompts + sampled answers (`encode_responses` keys)."""


def generate_rollouts(engine: Engine, samples: list[Sample], config: RolloutConfig, seeds: list[int]) -> Rollouts:
    """Sample one answer per prompt through the Engine (one seed each) and judge it by `answer_reward`; a
    stopped answer keeps its `<|im_end|>`, whose probability is part of the answer's."""
    requests = [prompt_request(s, max_new_tokens=config.max_new_tokens, temperature=1.0, seed=seed)
                for s, seed in zip(samples, seeds)]
    results = engine.generate(requests)
    stop_id = engine.tokenizer.convert_tokens_to_ids(IM_END)
    responses = [r.token_ids + ([stop_id] if r.finish_reason == "stop" else []) for r in results]
    rewards = torch.tensor([answer_reward(r.text, answer_of(s)) for r, s in zip(results, samples)])
    return Rollouts([r.text for r in results], rewards, encode_responses(engine, requests, responses))


def sampled_reward(engine: Engine, samples: list[Sample], config: RolloutConfig, per_prompt: int) -> float:
    """Mean exact-answer reward of `per_prompt` sampled answers to each prompt (seeds 0, 1, ...): the policy's
    expected reward as its rollouts see it, measured the same way before and after training."""
    prompts = [s for s in samples for _ in range(per_prompt)]
    return generate_rollouts(engine, prompts, config, list(range(len(prompts)))).rewards.mean().item()


@torch.no_grad()
def score_in_chunks(model: QwenImageModel, batch: Batch, chunk: int = 64) -> ResponseScores:
    """`score_responses` without gradients, `chunk` rows at a time (hidden states kept for value heads)."""
    n = len(batch["input_ids"])
    parts = [score_responses(model, {k: v[i : i + chunk] for k, v in batch.items()}) for i in range(0, n, chunk)]
    return ResponseScores(logprobs=torch.cat([p.logprobs for p in parts]), mask=torch.cat([p.mask for p in parts]),
                          hidden=torch.cat([p.hidden for p in parts]))


@dataclass
class ScoredShare:
    """This rank's share of an iteration's rollouts and their log-probabilities under the policy that sampled
    them (`old`) and under the frozen reference (`ref`)."""

    rollouts: Rollouts
    old: ResponseScores
    ref: ResponseScores


def sample_share(engine: Engine, reference: QwenImageModel, samples: list[Sample], config: RolloutConfig, seed: int,
                 iteration: int, rank: int, world: int) -> ScoredShare:
    """Sample answers to `rank`'s contiguous share of the iteration's `samples` with the Engine's policy and score
    them. Each row is seeded by its place in the whole iteration, so the answers do not depend on the number of
    ranks."""
    rows = share(len(samples), rank, world)
    with sampling(engine.model):
        seeds = [rollout_seed(seed, iteration, row) for row in rows]
        rollouts = generate_rollouts(engine, [samples[row] for row in rows], config, seeds)
        return ScoredShare(rollouts, score_in_chunks(engine.model, rollouts.batch),
                           score_in_chunks(reference, rollouts.batch))


def frozen_reference(checkpoint: str, device: torch.device) -> QwenImageModel:
    """A second copy of the starting policy on `device`, never trained: the KL anchor (one per rank)."""
    return load_model(checkpoint).to(device).requires_grad_(False).eval()


def share(rows: int, rank: int, world: int) -> range:
    """The rows of an iteration that `rank` samples: a contiguous block, so the gathered rows keep their order."""
    return range(rank * rows // world, (rank + 1) * rows // world)


def gather_rows(rows: Batch, pad_id: int) -> Batch:
    """Every rank's `rows` put together in rank order, on the CPU (the Trainer moves each minibatch to the
    device). Sequence tensors (2-D and more, but the images) are right-padded to the longest rank's:
    `input_ids` with `pad_id`, the rest with 0, as one process pads the whole iteration."""
    parts = gather_objects({k: v.cpu() for k, v in rows.items()})
    if len(parts) == 1:
        return parts[0]
    gathered = {}
    for key in rows:
        tensors = [part[key] for part in parts]
        if tensors[0].ndim >= 2 and key != "pixel_values":
            width = max(t.shape[-1] for t in tensors)
            value = pad_id if key == "input_ids" else 0
            tensors = [F.pad(t, (0, width - t.shape[-1]), value=value) for t in tensors]
        gathered[key] = torch.cat(tensors)
    return gathered


def rollout_seed(seed: int, iteration: int, row: int) -> int:
    return (seed * 1_000_003 + iteration) * 100_003 + row


def prompt_batch(samples: list[Sample], n: int, iteration: int) -> list[Sample]:
    """The `n` prompts of an iteration: consecutive windows over the train samples, wrapping around."""
    start = iteration * n
    return [samples[(start + i) % len(samples)] for i in range(n)]


@contextlib.contextmanager
def sampling(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients while rollouts are generated and scored, then back to training."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


# --- the run -------------------------------------------------------------------------------


class RolloutMaker(Protocol):
    """Makes iteration i's rollouts: (the dataset of scored rows, the iteration's record for the log), the same on
    every rank (each samples its `share` and `gather_rows` joins them)."""

    def __call__(self, iteration: int, rank: int, world: int) -> tuple[Batch, dict[str, float]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RolloutSource:
    """The Trainer's batch source for PPO and GRPO: `epochs` shuffled passes of `minibatch` rows over each
    iteration's rollouts, the next iteration made (from the live policy) when they are used up. Every
    step's Trainer record comes back through `observe`; when an iteration's steps are done, its record
    (the maker's, plus the mean of the steps' metrics) goes to the log. `whole_weights` is the context the
    rollouts are made in: the policy's whole weights (`models.parallelize.whole_weights`), set once the
    Trainer has wrapped the policy."""

    def __init__(self, make: RolloutMaker, minibatch: int, epochs: int, seed: int, log: IterationLog):
        self.make, self.minibatch, self.epochs, self.seed, self.log = make, minibatch, epochs, seed, log
        self.whole_weights: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self.iteration = 0  # iterations whose rollouts have been made
        self.steps_left = 0  # minibatches of the current iteration not drawn yet
        self.record: dict[str, float] = {}
        self.steps: list[dict] = []
        self.batches: GlobalBatches | None = None

    def next(self, rank: int, world: int) -> Batch:
        if self.steps_left == 0:
            with self.whole_weights():
                dataset, self.record = self.make(self.iteration, rank, world)
            self.batches = GlobalBatches(dataset, self.minibatch, seed=self.seed * 100_003 + self.iteration)
            self.steps_left = self.epochs * (len(dataset["input_ids"]) // self.minibatch)
            self.steps = []
            self.iteration += 1
        self.steps_left -= 1
        return self.batches.next(rank, world)

    def observe(self, record: dict) -> None:
        """A step's Trainer record (skipped ones too); the last of an iteration writes its log line."""
        self.steps.append(record)
        if self.steps_left == 0:
            done = [r for r in self.steps if not r["skipped"]]
            names = [k for k in (done[0] if done else {}) if k not in ("step", "skipped", "samples", "tokens")]
            means = {name: sum(r[name] for r in done) / len(done) for name in names}
            self.log.write({"iteration": self.iteration, **self.record, **means,
                            "skipped_steps": len(self.steps) - len(done)})

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "steps_left": self.steps_left, "record": self.record,
                "steps": self.steps, "batches": self.batches.state_dict() if self.batches else None,
                "maker": self.make.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.steps_left = state["iteration"], state["steps_left"]
        self.record, self.steps = state["record"], state["steps"]
        self._batch_state = state["batches"]
        self.make.load_state_dict(state["maker"])
        self.log.keep(self.iteration - (self.steps_left > 0))

    def tensor_state(self) -> dict[str, torch.Tensor]:
        """The current iteration's rollouts: a resumed run draws its remaining minibatches from them."""
        return dict(self.batches.data) if self.batches is not None and self.steps_left else {}

    def load_tensor_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.batches = GlobalBatches(tensors, self.minibatch, seed=self.seed * 100_003 + self.iteration - 1)
        self.batches.load_state_dict(self._batch_state)


class IterationLog:
    """One JSON line per iteration in OUT_DIR/align_log.jsonl (with the seconds since the run started), written
    by the main rank (every rank holds the same records)."""

    def __init__(self, out_dir: Path, on_iteration: Callable[[dict], None] | None = None, is_main: bool = True):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / LOG_NAME
        self.on_iteration = on_iteration
        self.is_main = is_main
        self.started = time.perf_counter()

    def start(self) -> None:
        if self.is_main:
            self.path.unlink(missing_ok=True)

    def keep(self, iterations: int) -> None:
        """On resume: drop the lines of iterations after the first `iterations` (a killed run's last one)."""
        if self.is_main:
            write_jsonl(self.path, self.records()[:iterations])

    def write(self, record: dict) -> None:
        if not self.is_main:
            return
        record = {**record, "seconds": round(time.perf_counter() - self.started, 2)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_iteration is not None:
            self.on_iteration(record)

    def records(self) -> list[dict]:
        return [record for _, record in read_jsonl(self.path)] if self.path.is_file() else []


def held_out_figures(engine: Engine, held_out: list[Sample], rollout: RolloutConfig) -> dict[str, float]:
    """Greedy accuracy and mean sampled exact-answer reward on the held-out prompts."""
    return {"vqa_accuracy": answer_accuracy(engine, held_out, rollout.max_new_tokens),
            "reward": sampled_reward(engine, held_out, rollout, rollout.eval_samples)}


def run_rollout_training(method: str, model: nn.Module, objective: Objective, make: RolloutMaker, engine: Engine,
                         held_out: list[Sample], rollout: RolloutConfig, train: TrainConfig, steps: int, epochs: int,
                         out: Path, resume: bool, dist_info: DistInfo, on_iteration: Callable[[dict], None] | None = None,
                         trust: bool = False) -> dict:
    """The PPO / GRPO run: held-out figures (on the main rank), one `Trainer.fit` over the rollouts (`steps`
    optimizer steps, on every rank), held-out figures again; writes OUT/align_log.jsonl, OUT/train_log.jsonl,
    OUT/checkpoint (the policy, and the training state) and OUT/align.json. With `resume`, continues
    OUT/checkpoint exactly."""
    log = IterationLog(out, on_iteration, dist_info.is_main)
    resumable = out / "checkpoint"
    with main_rank_first():  # rank 0 puts back what a killed save left, the others then look
        resume = resume and recover_directory(resumable) is not None
    if not resume:
        log.start()
    # the starting weights: a resume loads the others below
    before = held_out_figures(engine, held_out, rollout) if dist_info.is_main else {}
    source = RolloutSource(make, train.batch_size, epochs, train.seed, log)
    policy = engine.model

    def export(directory: Path, state: dict[str, torch.Tensor]) -> None:
        prefix = "policy." if model is not policy else ""
        write_model_files(policy, directory, engine.tokenizer,
                           {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})

    trainer = Trainer(model, objective, dataclasses.replace(train, steps=steps), source, out_dir=out, export=export,
                      on_step=source.observe, dist_info=dist_info)
    source.whole_weights = lambda: whole_weights(trainer.module)
    if resume:
        trainer.resume(resumable, trust)
    trainer.fit(method.upper())
    if trainer.step < steps:
        return {"method": method, "status": "interrupted", "step": trainer.step, "checkpoint": str(resumable)}

    def summary() -> dict:
        after = trained_engine(engine, resumable, train.parallel.shards_weights)
        return summarize(method, out, log.records(), before, held_out_figures(after, held_out, rollout))

    return main_rank_result(out / "align.json", summary)


def summarize(method: str, out: Path, records: list[dict], before: dict[str, float], after: dict[str, float]) -> dict:
    """The figures of a run (align.json): held-out accuracy and sampled reward before and after, the training
    reward and KL of the first and last iterations (means over up to 3 iterations), and every iteration's record."""
    window = max(1, min(3, len(records) // 2))

    def mean(key: str, part: list[dict]) -> float:
        return sum(r[key] for r in part) / len(part)

    summary = {
        "method": method,
        "status": "done",
        "iterations": len(records),
        "reward_first": mean("reward", records[:window]),
        "reward_last": mean("reward", records[-window:]),
        "kl_last": mean("kl", records[-window:]),
        "kl_max": max(r["kl"] for r in records),
        "vqa_accuracy_before": before["vqa_accuracy"],
        "vqa_accuracy_after": after["vqa_accuracy"],
        "held_out_reward_before": before["reward"],
        "held_out_reward_after": after["reward"],
        "checkpoint": str(out / "checkpoint"),
        "log": str(out / LOG_NAME),
        "seconds": records[-1]["seconds"],
        "history": records,
    }
    return summary
