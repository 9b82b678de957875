"""`vlstack align`: one entry point for the preference stage: reward model, PPO, DPO or GRPO.

Each method has its config dataclass (recipes in `configs/align_*.yaml`) and its run function; the
config's type picks the method, so the CLI and the demo make the same call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

from vlstack.align.dpo import DPOConfig, run_dpo
from vlstack.align.grpo import GRPOConfig, run_grpo
from vlstack.align.ppo import PPOConfig, run_ppo
from vlstack.align.reward import RewardConfig, train_reward_model

AlignConfig = Union[PPOConfig, DPOConfig, GRPOConfig, RewardConfig]
METHODS: dict[str, tuple[type, Callable[..., dict]]] = {
    "ppo": (PPOConfig, run_ppo),
    "dpo": (DPOConfig, run_dpo),
    "grpo": (GRPOConfig, run_grpo),
    "reward": (RewardConfig, train_reward_model),
}
"""Method name -> (config class, run function)."""


def run_alignment(config: AlignConfig, resume: bool = False, trust: bool = False) -> dict:
    """Run the method `config` is for; returns its results (also written to `config.out_dir`). With `resume`,
    a run interrupted in `config.out_dir` continues from its checkpoint exactly."""
    run = next(fn for cls, fn in METHODS.values() if isinstance(config, cls))
    return run(config, resume=resume, trust=trust)


def summary(results: dict) -> str:
    """One line for the terminal."""
    if results.get("status") == "interrupted":
        return f"{results['method']}: interrupted at step {results['step']}; continue with --resume"
    if "pair_accuracy" in results:
        return (f"reward model: held-out pair accuracy {results['pair_accuracy']:.3f} (before "
                f"{results['pair_accuracy_before']:.3f}, chance 0.5); checkpoint: {results['checkpoint']}")
    line = (f"{results['method']}: held-out VQA accuracy {results['vqa_accuracy_before']:.3f} -> "
            f"{results['vqa_accuracy_after']:.3f}")
    if "reward_first" in results:
        line += (f", sampled reward {results['held_out_reward_before']:.3f} -> {results['held_out_reward_after']:.3f}; "
                 f"training reward {results['reward_first']:.3f} -> {results['reward_last']:.3f}, "
                 f"KL {results['kl_last']:.3f} (max {results['kl_max']:.3f})")
    else:
        line += f"; held-out implicit-reward accuracy {results['held_out_reward_accuracy']:.3f} (chance 0.5)"
    return f"{line}; checkpoint: {results['checkpoint']}"
