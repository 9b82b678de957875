"""Run by test_parallel.py, on one process or under torchrun: the four alignment methods through the CLI, one
after another in one process group (the reward model's run feeds PPO), each a few steps in `mode`."""

from __future__ import annotations

import sys

from vlstack.cli import main


def run(mode: str, checkpoint: str, train: str, held_out: str, out: str) -> None:
    common = [f"checkpoint={checkpoint}", f"data.train={train}", f"data.held_out={held_out}", "data.eval_items=4",
              "train.precision=fp32", "train.log_every=1", f"train.parallel.mode={mode}", "rollout.eval_samples=1"]
    methods = {
        "reward": ["train.steps=3", "train.batch_size=8", "train.lr=1e-3"],
        "dpo": ["train.steps=3", "train.batch_size=8", "train.lr=1e-3", "sft_weight=0.5"],
        "ppo": ["iterations=2", "rollout.prompts=8", "epochs=2", "train.batch_size=4", "train.lr=1e-3",
                "reward=rule+model", f"reward_model={out}/reward/checkpoint"],
        "grpo": ["iterations=2", "rollout.prompts=4", "group_size=2", "train.batch_size=4", "train.lr=1e-3"],
    }
    for method, sets in methods.items():
        if method in ("reward", "dpo"):
            sets = [s for s in sets] + [s for s in common if not s.startswith("rollout.")]
        else:
            sets = sets + common
        args = ["align", "--method", method, "--set", f"out_dir={out}/{method}"]
        assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0, method


if __name__ == "__main__":
    run(*sys.argv[1:])
