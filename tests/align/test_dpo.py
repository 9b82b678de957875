"""DPO: TRL's own loss on the same inputs, a hand-worked example, the objective and a short run."""

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from vlstack.align.dpo import DPOConfig, DPOObjective, dpo_loss, pair_logps, run_dpo
from vlstack.align.logprobs import load_engine, score_responses
from vlstack.align.preference import flatten_pairs, preference_data
from vlstack.errors import ConfigError
from vlstack.infer.engine import Engine
from vlstack.train.trainer import TrainConfig


def test_worked_example():
    """beta 0.1; policy log-probs chosen -1.0, rejected -3.0; reference -1.5 and -2.0:
    rewards 0.1 * 0.5 = 0.05 and 0.1 * -1.0 = -0.1, loss = -log sigmoid(0.15) = log(1 + e^-0.15) = 0.620957."""
    losses, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-1.5]),
                                        torch.tensor([-2.0]), beta=0.1)
    torch.testing.assert_close(chosen, torch.tensor([0.05]))
    torch.testing.assert_close(rejected, torch.tensor([-0.1]))
    assert losses.item() == pytest.approx(0.620957, abs=1e-6)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.15)), abs=1e-7)


def _trl_loss(token_logps, completion_mask, ref_chosen, ref_rejected, beta, sft_weight=0.0):
    """TRL's `DPOTrainer._compute_loss` (loss_type sigmoid, plus `sft` weighted `sft_weight` when given;
    precomputed reference log-probs) on per-token log-probs [2B, T - 1] of a [chosen; rejected] batch; the
    model and accelerator are stand-ins."""
    from trl.trainer.dpo_trainer import DPOTrainer

    n, width = token_logps.shape
    losses = {"sigmoid": 1.0, **({"sft": sft_weight} if sft_weight else {})}
    outputs = SimpleNamespace(log_probs=token_logps, entropy=torch.zeros(n, width),
                              mean_logits=torch.zeros(n, width), is_top1=torch.zeros(n, width, dtype=torch.bool))
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, beta=beta,
        loss_types=list(losses), loss_weights=list(losses.values()),
        ld_alpha=None, f_divergence_type="reverse_kl", precompute_ref_logps=True,
        aux_loss_enabled=False, use_weighting=False, label_smoothing=0.0, _tp_size=1, _total_train_tokens=0,
        _metrics={"train": defaultdict(list)})
    inputs = {"input_ids": torch.zeros(n, width + 1, dtype=torch.long), "attention_mask": torch.ones(n, width + 1),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_loss_equals_trls_dpo_loss_on_the_same_model_scores(nano_checkpoint, sft_weight, alignment_data):
    engine = load_engine(str(nano_checkpoint))
    pairs = preference_data(engine, alignment_data(6, 2), "train")
    torch.manual_seed(1)
    pairs["ref_logps"] = pair_logps(engine.model, pairs) + torch.randn(6, 2)  # a reference that differs
    objective = DPOObjective(beta=0.3, sft_weight=sft_weight)
    with torch.no_grad():
        ours, metrics = objective(engine.model, pairs)
        scores = score_responses(engine.model, flatten_pairs(pairs))
    trl = _trl_loss(scores.logprobs, flatten_pairs(pairs)["response_mask"], pairs["ref_logps"][:, 0],
                    pairs["ref_logps"][:, 1], beta=0.3, sft_weight=sft_weight)
    torch.testing.assert_close(ours, trl, rtol=1e-6, atol=1e-6)
    rewards = {"reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"}
    assert 0 < ours.item() and set(metrics) == (rewards | {"chosen_nll"} if sft_weight else rewards)


def test_against_its_own_reference_the_loss_is_log_2(nano_checkpoint, alignment_data):
    engine = load_engine(str(nano_checkpoint))
    pairs = preference_data(engine, alignment_data(4, 2), "train")
    pairs["ref_logps"] = pair_logps(engine.model, pairs)
    with torch.no_grad():
        loss, metrics = DPOObjective(beta=0.1)(engine.model, pairs)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx(0, abs=1e-5)


def test_short_run_writes_an_aligned_checkpoint(nano_checkpoint, tmp_path, alignment_data):
    config = DPOConfig(checkpoint=str(nano_checkpoint), out_dir=str(tmp_path / "dpo"),
                       data=alignment_data(16, 4),
                       train=TrainConfig(steps=3, batch_size=8, lr=1e-4, warmup_steps=1, precision="fp32",
                                         log_every=1, measure_mfu=False, tensorboard=False), max_new_tokens=3)
    results = run_dpo(config)
    assert results["steps"] == 3 and 0 <= results["vqa_accuracy_after"] <= 1
    assert results["history"][-1]["loss"] < math.log(2)  # three steps on the same pairs lower the loss
    assert json.loads((tmp_path / "dpo" / "align.json").read_text())["method"] == "dpo"
    Engine.from_checkpoint(results["checkpoint"])  # the aligned policy loads for inference


def test_beta_must_be_positive_and_sft_weight_not_negative():
    with pytest.raises(ConfigError, match="beta must be positive"):
        DPOConfig(beta=0)
    with pytest.raises(ConfigError, match="sft_weight must be 0"):
        DPOConfig(sft_weight=-1)
