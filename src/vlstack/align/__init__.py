"""Alignment after fine-tuning: the preference methods (reward model, DPO, PPO, GRPO), their rollouts
through the Engine, and `run` (the `vlstack align` verb). Fine-tuning itself is `train/finetune.py`."""
