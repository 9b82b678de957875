"""Alignment: progressive instruction fine-tuning (`stages`), held-out checks (`evaluate`), and the
preference methods (reward model, DPO, PPO, GRPO)."""
