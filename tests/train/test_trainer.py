import json
import os
import shutil

import pytest
import torch
from torch import nn

from vlstack.errors import CheckpointError, VlstackError
from vlstack.train.optim import parameter_groups, warmup_cosine
from vlstack.train.trainer import TrainConfig, Trainer


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.norm = nn.LayerNorm(4)  # unused in the loss: only here for the weight-decay groups


def mse(model, batch):
    loss = (model.linear(batch["x"]) - batch["y"]).pow(2).mean()
    return loss, {"noise": torch.rand(()).item()}  # a random draw, to check resumed RNG streams


def _data(n: int = 512, poison: slice | None = None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    if poison is not None:
        x[poison] = float("nan")
    # the Trainer counts samples and tokens from these two keys
    return {"x": x, "y": y, "input_ids": torch.zeros(n, 1), "attention_mask": torch.ones(n, 1)}


def _trainer(data, steps=40, out_dir=None, **overrides) -> Trainer:
    torch.manual_seed(0)
    config = TrainConfig(steps=steps, batch_size=16, lr=0.05, warmup_steps=2, precision="fp32", log_every=1,
                         **overrides)
    return Trainer(Regression(), mse, config, data, out_dir=out_dir)


def test_weight_decay_skips_norms_and_biases():
    decay, no_decay = parameter_groups(Regression(), 0.01, lr=0.1, lr_scale={})
    assert [p.ndim for p in decay["params"]] == [2] and decay["lr"] == 0.1
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_lr_scale_sets_a_module_rate_that_the_schedule_keeps():
    trainer = _trainer(_data(), steps=6, lr_scale={"norm": 0.1})
    def rates():
        return {tuple(p.shape): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}

    trainer.fit()
    after = rates()
    assert after[(4,)] == pytest.approx(0.1 * after[(1, 4)])  # norm weight and bias vs the linear weight
    assert after[(1,)] == after[(1, 4)]  # the linear bias keeps the base rate


def test_an_lr_scale_prefix_that_matches_nothing_is_a_config_error():
    with pytest.raises(VlstackError, match=r"train.lr_scale names \['vision'\], which match no parameter; "
                                            r"top-level modules: \['linear', 'norm'\]"):
        _trainer(_data(), lr_scale={"vision": 0.1})


def test_warmup_then_cosine():
    values = [warmup_cosine(s, warmup=10, total=110, min_ratio=0.1) for s in range(0, 111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.55) and values[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_training_reduces_the_loss():
    history = _trainer(_data(), steps=150).fit()
    assert history[-1]["loss"] < 0.01 * history[0]["loss"]


def test_accumulation_matches_one_big_batch():
    one = _trainer(_data(), steps=5).fit()
    accumulated = _trainer(_data(), steps=5, grad_accum_steps=4).fit()
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in accumulated], rel=1e-5)


def test_a_nan_batch_is_skipped_with_a_reason_and_training_continues(tmp_path):
    data = _data(poison=slice(0, 1))  # one poisoned sample: the batch holding it is skipped
    trainer = _trainer(data, steps=40, out_dir=tmp_path)
    history = trainer.fit()
    skipped = [r for r in history if r["skipped"]]
    assert len(skipped) >= 1 and {r["reason"] for r in skipped} == {"non-finite loss"}
    assert trainer.step == 40
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r.get("event") != "state_bytes"] == [r["step"] for r in history]


def test_a_diverged_run_stops_with_an_error():
    trainer = _trainer(_data(poison=slice(None)), steps=20, max_skips_in_a_row=3)
    with pytest.raises(VlstackError, match="4 steps in a row had a non-finite loss"):
        trainer.fit()


class Crash(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    full = _trainer(_data(), steps=30).fit()
    first = _trainer(_data(), steps=30, out_dir=tmp_path, save_every=4)
    calls = iter(range(1000))

    def crash_at_step_14(model, batch):
        if next(calls) == 13:
            raise Crash  # dies mid-run: the last checkpoint is from step 12
        return mse(model, batch)

    first.module.objective = crash_at_step_14
    with pytest.raises(Crash):
        first.fit()
    resumed = _trainer(_data(), steps=30, out_dir=tmp_path)
    resumed.resume(tmp_path / "checkpoint")
    assert resumed.step == 12
    tail = resumed.fit()
    assert [r["loss"] for r in tail] == [r["loss"] for r in full[12:]]  # bit-equal
    assert [r["noise"] for r in tail] == [r["noise"] for r in full[12:]]
    assert [r["lr"] for r in tail] == [r["lr"] for r in full[12:]]


def test_resume_from_a_missing_or_corrupt_checkpoint(tmp_path):
    trainer = _trainer(_data(), steps=2, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="holds no training state"):
        trainer.resume(tmp_path / "nothing")
    trainer.fit()
    (tmp_path / "checkpoint" / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="was changed or signed with another key"):
        _trainer(_data(), steps=2).resume(tmp_path / "checkpoint")
    with pytest.raises(CheckpointError, match="is corrupt"):
        _trainer(_data(), steps=2).resume(tmp_path / "checkpoint", trust=True)


def test_a_checkpoint_this_user_did_not_sign_needs_trust(tmp_path, monkeypatch, caplog):
    """The training state is pickled: a checkpoint from elsewhere (another key) is refused unless trusted."""
    _trainer(_data(), steps=2, out_dir=tmp_path).fit()
    monkeypatch.setenv("VLSTACK_KEY_DIR", str(tmp_path / "someone-else"))
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        _trainer(_data(), steps=4).resume(tmp_path / "checkpoint")
    (tmp_path / "checkpoint" / "training_state.sig").unlink()
    with pytest.raises(CheckpointError, match="has no signature"):
        _trainer(_data(), steps=4).resume(tmp_path / "checkpoint")
    trusted = _trainer(_data(), steps=4)
    trusted.resume(tmp_path / "checkpoint", trust=True)
    assert trusted.step == 2 and "runs pickled code" in caplog.text


def test_a_bad_dcp_checkpoint_is_a_checkpoint_error(tmp_path):
    """DCP's CheckpointException is a BaseException: it must still become a clear CheckpointError."""
    _trainer(_data(), steps=2, out_dir=tmp_path).fit()
    for shard in (tmp_path / "checkpoint" / "dcp").glob("*.distcp"):
        shard.write_bytes(b"\0" * 8)
    with pytest.raises(CheckpointError, match="cannot restore the training state"):
        _trainer(_data(), steps=4).resume(tmp_path / "checkpoint", trust=True)


def test_a_save_killed_at_any_file_operation_leaves_one_whole_checkpoint(tmp_path, capsys):
    """Fork a child that saves a checkpoint over step 2's and dies (os._exit) at its k-th rename, fsync or
    removal, for every k until a save completes: each time the parent recovers a whole checkpoint, from
    step 2 or step 4, resumes from it, and no temporary directory is left beside it."""
    _trainer(_data(), steps=2, out_dir=tmp_path, save_every=2).fit()
    kills, steps_seen = 0, set()
    for k in range(1, 500):
        pid = os.fork()
        if pid == 0:  # the child: continue to step 4, dying at the k-th file operation of the save
            code = 1
            try:
                trainer = _trainer(_data(), steps=4, out_dir=tmp_path, save_every=100)
                trainer.resume(tmp_path / "checkpoint")
                _die_at_call(k)
                trainer.fit()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, KILLED), f"the child failed at k={k} (exit code {code})"
        resumed = _trainer(_data(), steps=4, out_dir=tmp_path)
        resumed.resume(tmp_path / "checkpoint")
        steps_seen.add(resumed.step)
        assert resumed.step in (2, 4)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint")] == []
        if code == 0:
            break
        kills += 1
        _trainer(_data(), steps=2, out_dir=tmp_path, save_every=2).fit()  # back to step 2 for the next k
    assert code == 0 and kills >= 5 and steps_seen == {2, 4}
    with capsys.disabled():
        print(f"\nsave killed at each of its {kills} file operations: resumed from step {sorted(steps_seen)}, "
              "no temporary left")


KILLED = 77


def _die_at_call(k: int) -> None:
    """Make the k-th call of any file operation a save makes durable (rename, replace, fsync, rmtree) end
    the process on the spot, as SIGKILL would."""
    calls = iter(range(1, 10**6))
    for owner, name in ((os, "rename"), (os, "replace"), (os, "fsync"), (shutil, "rmtree")):
        original = getattr(owner, name)

        def dying(*args, _original=original, **kwargs):
            if next(calls) == k:
                os._exit(KILLED)
            return _original(*args, **kwargs)

        setattr(owner, name, dying)


def test_batch_must_split_over_accumulation():
    with pytest.raises(VlstackError, match="must divide evenly"):
        _trainer(_data(), grad_accum_steps=3)


def test_validation_is_logged_and_keep_best_ends_on_the_best_step(tmp_path):
    """Held-out rows whose targets are the untrained model's own answers: training moves away from them, so the
    first validation is the best, and keep_best ends on its weights (the last checkpoint holds them too)."""
    torch.manual_seed(0)
    start = Regression()
    data = _data()
    with torch.no_grad():
        held_out = {**_data(64), "y": start.linear(_data(64)["x"])}
    config = TrainConfig(steps=12, batch_size=16, lr=0.05, warmup_steps=2, precision="fp32", log_every=1,
                         validate_every=4, keep_best=True)
    trainer = Trainer(start, mse, config, data, out_dir=tmp_path, validation=held_out)
    history = trainer.fit()
    validations = [r for r in history if r.get("event") == "validation"]
    assert [r["step"] for r in validations] == [4, 8, 12]
    assert validations[0]["loss"] < validations[1]["loss"] < validations[2]["loss"]
    assert history[-1] == {"step": 12, "event": "best", "best_step": 4, "validation_loss": validations[0]["loss"]}
    assert trainer.validate()["loss"] == pytest.approx(validations[0]["loss"])  # the weights of step 4


def test_keep_best_needs_validation_rows():
    with pytest.raises(VlstackError, match="keep_best needs validation rows"):
        _trainer(_data(), keep_best=True)
