"""The rollout batch source of PPO and GRPO, and their runs through the Trainer's contract: a run killed
mid-iteration resumes with the very minibatches, rewards and weights of the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vlstack.align.rollouts import IterationLog, RolloutSource
from vlstack.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]


class CountingMaker:
    """Iteration i's dataset: 8 rows whose values say (iteration, row)."""

    def __init__(self):
        self.made = []

    def __call__(self, iteration, rank, world):
        self.made.append(iteration)
        rows = torch.arange(8) + 100 * iteration
        return {"input_ids": rows[:, None], "value": rows.float()}, {"reward": float(iteration)}

    def state_dict(self):
        return {"made": list(self.made)}

    def load_state_dict(self, state):
        self.made = list(state["made"])


def draw(source, steps):
    batches = []
    for step in range(steps):
        batches.append(source.next(0, 1)["value"].tolist())
        source.observe({"step": step + 1, "skipped": False, "loss": 1.0, "samples": 4, "tokens": 0})
    return batches


def test_each_iteration_gives_epochs_of_minibatches_and_one_log_line(tmp_path):
    log = IterationLog(tmp_path)
    log.start()
    maker = CountingMaker()
    batches = draw(RolloutSource(maker, minibatch=4, epochs=2, seed=0, log=log), 8)  # 2 iterations x 2 x 2
    assert maker.made == [0, 1]
    assert sorted(v for b in batches[:2] for v in b) == list(range(8))  # one epoch: every row once
    assert all(v >= 100 for b in batches[4:] for v in b)  # the second iteration's rows
    records = log.records()
    assert [r["iteration"] for r in records] == [1, 2] and records[1]["reward"] == 1.0 and records[0]["loss"] == 1.0


def test_a_restored_source_continues_with_the_same_minibatches(tmp_path):
    reference = draw(RolloutSource(CountingMaker(), 4, 2, 0, IterationLog(tmp_path / "a")), 7)
    first = RolloutSource(CountingMaker(), 4, 2, 0, IterationLog(tmp_path / "b"))
    head = draw(first, 3)  # mid-way through the first iteration
    state, tensors = json.loads(json.dumps(first.state_dict())), first.tensor_state()
    maker = CountingMaker()
    resumed = RolloutSource(maker, 4, 2, 0, IterationLog(tmp_path / "b"))
    resumed.load_state_dict(state)
    resumed.load_tensor_state(tensors)
    assert head + draw(resumed, 4) == reference
    assert maker.made == [0, 1]  # iteration 0 came back from the checkpoint, only iteration 1 was made


@pytest.mark.slow
def test_grpo_killed_mid_run_resumes_exactly(tmp_path, nano_checkpoint, alignment_data):
    data = alignment_data(8, 2)
    common = [sys.executable, "-m", "vlstack.cli", "align", "--method", "grpo",
              "--config", str(ROOT / "configs" / "align_grpo.yaml"), "--set", f"checkpoint={nano_checkpoint}",
              "--set", "iterations=4", "--set", "rollout.prompts=2", "--set", "group_size=4",
              "--set", "train.batch_size=4", "--set", "epochs=2", "--set", "rollout.max_new_tokens=3",
              "--set", "rollout.eval_samples=1", "--set", "train.log_every=1",
              "--set", f"data.train={data.train}", "--set", f"data.held_out={data.held_out}"]
    reference = tmp_path / "reference"
    subprocess.run([*common, "--set", f"out_dir={reference}"], check=True, capture_output=True, timeout=600)

    run = tmp_path / "killed"
    process = subprocess.Popen([*common, "--set", f"out_dir={run}", "--set", "train.save_every=3"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "checkpoint" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not (state.is_file() and json.loads(state.read_text())["step"] >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 3 <= killed_at < 16 and (run / "checkpoint" / "data.safetensors").is_file()  # mid-iteration: rollouts kept

    subprocess.run([*common, "--set", f"out_dir={run}", "--resume"], check=True, capture_output=True, timeout=600)
    lines = [json.loads(line) for line in (run / "align_log.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "align_log.jsonl").read_text().splitlines()]
    keys = ("iteration", "reward", "kl", "clip_fraction", "kl_k3")
    assert [{k: r[k] for k in keys} for r in lines] == [{k: r[k] for k in keys} for r in expected]
    final, uninterrupted = load_model(run / "checkpoint").state_dict(), load_model(reference / "checkpoint").state_dict()
    assert all(torch.equal(final[name], uninterrupted[name]) for name in uninterrupted)
    assert (run / "train_log.jsonl").is_file()  # the Trainer's own log, as for every other run
