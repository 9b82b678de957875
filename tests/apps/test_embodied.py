import json

import numpy as np
import pytest
import torch

from vlstack.apps.embodied import (
    EnvironmentFailure,
    EpisodeConfig,
    MiniGridEnvironment,
    PlanError,
    PlanStep,
    ScriptedPlanner,
    check_step,
    parse_plan,
    run_episode,
    scripted_episode,
)
from vlstack.checkpoint import save_model
from vlstack.cli import main
from vlstack.errors import InputError

EMPTY = "MiniGrid-Empty-5x5-v0"
ACTIONS = MiniGridEnvironment.ACTIONS
KEYS = ("agent", "direction", "front", "carrying")


def _events(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture
def env():
    environment = MiniGridEnvironment(EMPTY, seed=0)
    yield environment
    environment.close()


def test_a_scripted_plan_solves_the_task(env, tmp_path):
    plan = '["forward", "forward", {"action": "right", "expect": {"direction": "south"}}, "forward", "forward"]'
    result = run_episode(env, ScriptedPlanner([plan]), tmp_path, EpisodeConfig(save_frames=False))
    assert result.success and result.reason == "mission accomplished"
    assert (result.steps, result.plans) == (5, 1) and result.reward > 0
    events = _events(tmp_path / "transcript.jsonl")
    assert [e["event"] for e in events] == ["start", "plan"] + ["step"] * 5 + ["end"]
    assert events[-2]["state"]["agent"] == [3, 3]


def test_a_failing_step_triggers_a_replan_with_feedback(tmp_path):
    result = scripted_episode(tmp_path, EMPTY, seed=0)
    assert result["success"] and result["plans"] == 2 and result["steps"] == 6
    events = _events(tmp_path / "transcript.jsonl")
    failed = [e for e in events if e["event"] == "step" and not e["ok"]]
    assert len(failed) == 1 and failed[0]["problem"] == "forward had no effect"  # walked into the wall
    assert [e["reason"] for e in events if e["event"] == "replan"] == ["step 'forward' failed: forward had no effect"]
    assert sorted(p.name for p in tmp_path.glob("frame-*.png")) == [f"frame-{i:03d}.png" for i in range(7)]


def test_an_unmet_expectation_fails_the_step(env, tmp_path):
    planner = ScriptedPlanner(['[{"action": "forward", "expect": {"agent": [1, 2]}}]',
                               '["forward", "right", "forward", "forward"]'])
    result = run_episode(env, planner, tmp_path, EpisodeConfig(save_frames=False))
    assert result.success and result.plans == 2
    assert planner.contexts[1].feedback == "step 'forward' failed: agent is [2, 1], expected [1, 2]"
    assert planner.contexts[1].history == ["forward: agent is [2, 1], expected [1, 2]"]


def test_invalid_replies_are_replanned_with_the_reason(env, tmp_path):
    solution = '["forward", "forward", "right", "forward", "forward"]'
    planner = ScriptedPlanner(["I will go to the goal.", '["forward", "jump"]', solution])
    result = run_episode(env, planner, tmp_path, EpisodeConfig(save_frames=False))
    assert result.success and result.plans == 3 and result.steps == 5  # nothing of a rejected plan was executed
    assert "no JSON plan" in planner.contexts[1].feedback
    assert "unknown action 'jump'" in planner.contexts[2].feedback
    plans = [e for e in _events(tmp_path / "transcript.jsonl") if e["event"] == "plan"]
    assert ["error" in p for p in plans] == [True, True, False]


def test_the_plan_budget_is_respected(env, tmp_path):
    planner = ScriptedPlanner(['["left", "forward", "forward", "forward"]'])  # never reaches the goal
    result = run_episode(env, planner, tmp_path, EpisodeConfig(max_plans=3, max_steps=100, save_frames=False))
    assert not result.success and result.reason == "plan budget of 3 spent"
    assert result.plans == len(planner.contexts) == 3
    events = _events(tmp_path / "transcript.jsonl")
    assert sum(e["event"] == "replan" for e in events) == 2 and events[-1]["event"] == "end"


def test_the_step_budget_is_respected(env, tmp_path):
    planner = ScriptedPlanner(['["left", "left", "left", "left", "left", "left", "left", "left"]'])
    result = run_episode(env, planner, tmp_path, EpisodeConfig(max_plans=5, max_steps=6, save_frames=False))
    assert not result.success and result.reason == "step budget of 6 spent" and result.steps == 6
    # a plan that ends exactly on the budget asks for no further plan
    planner = ScriptedPlanner(['["left", "left"]'])
    result = run_episode(env, planner, tmp_path, EpisodeConfig(max_plans=5, max_steps=4, save_frames=False))
    assert (result.steps, result.plans, len(planner.contexts)) == (4, 2, 2)


class _BrokenCamera(MiniGridEnvironment):
    """A MiniGrid task whose robot fails on the third action."""

    def execute_action(self, action):
        if getattr(self, "_calls", 0) == 2:
            raise RuntimeError("motor driver not responding")
        self._calls = getattr(self, "_calls", 0) + 1
        return super().execute_action(action)


def test_an_environment_that_raises_gives_a_clear_error_and_keeps_the_transcript(tmp_path):
    env = _BrokenCamera(EMPTY, seed=0)
    with pytest.raises(EnvironmentFailure, match="RuntimeError in execute_action\\('right'\\) at step 2: motor driver"):
        run_episode(env, ScriptedPlanner(['["forward", "forward", "right"]']), tmp_path)
    events = _events(tmp_path / "transcript.jsonl")
    assert [e["event"] for e in events] == ["start", "plan", "step", "step", "error", "end"]
    assert events[-1]["reason"] == "error" and events[-1]["steps"] == 2
    assert (tmp_path / "frame-002.png").exists()


def test_parse_plan_accepts_common_shapes_and_rejects_bad_ones():
    plan = parse_plan('Sure! {"steps": ["left", {"action": "forward", "expect": {"front": "wall"}}]} done',
                      ACTIONS, KEYS)
    assert plan == [PlanStep("left"), PlanStep("forward", {"front": "wall"})]
    assert parse_plan('x [1, 2 ["forward"]', ACTIONS, KEYS) == [PlanStep("forward")]  # first decodable JSON
    for reply, message in [("[]", "non-empty"), ('{"plan": 3}', "non-empty"), ("[3]", "step 1 must be"),
                           ('[{"action": "forward", "expect": {"speed": 2}}]', "'expect' must map state keys"),
                           ("forward then left", "no JSON plan")]:
        with pytest.raises(PlanError, match=message):
            parse_plan(reply, ACTIONS, KEYS)


def test_check_step_needs_an_effect_and_the_expected_state():
    before = {"agent": [1, 1], "direction": "east"}
    assert check_step(PlanStep("forward"), before, dict(before)) == "forward had no effect"
    moved = {"agent": [2, 1], "direction": "east"}
    assert check_step(PlanStep("forward", {"agent": [2, 1]}), before, moved) is None
    assert check_step(PlanStep("forward", {"direction": "south"}), before, moved) == \
        "direction is 'east', expected 'south'"


def test_minigrid_depth_is_the_distance_to_each_visible_cell(env):
    rgb, depth = env.capture_rgb(), env.capture_depth()
    assert depth.shape == (rgb.height, rgb.width) and depth.dtype == np.float32
    tile = env.tile_size
    size = env.env.unwrapped.agent_view_size
    cells = depth[::tile, ::tile]  # [view, view], agent at the bottom centre
    assert cells[size - 1, size // 2] == 0 and cells[size - 2, size // 2] == 1
    assert np.isclose(cells[size - 2, size // 2 + 1], np.sqrt(2))
    occluded = MiniGridEnvironment("MiniGrid-FourRooms-v0", seed=1)
    assert np.isinf(occluded.capture_depth()).any()  # walls hide what lies behind them
    occluded.close()


def test_unknown_environment_is_an_input_error():
    with pytest.raises(InputError, match="MiniGrid-Nowhere-v0"):
        MiniGridEnvironment("MiniGrid-Nowhere-v0")


@pytest.mark.slow
def test_a_nano_model_plans_through_the_engine_from_the_cli(nano_model, tokenizer, tmp_path, capsys):
    """Success rate of an untrained nano model: reported, not asserted (it emits no JSON plan)."""
    with torch.no_grad():  # sharper weights than the init, so the replies vary
        for param in nano_model.language_model.parameters():
            if param.ndim == 2:
                param.normal_(0, 0.5)
    save_model(nano_model, tmp_path / "ckpt", tokenizer=tokenizer)
    out = tmp_path / "runs"
    code = main(["embodied", "--env", EMPTY, "--model", str(tmp_path / "ckpt"), "--out", str(out), "--episodes", "2",
                 "--set", "episode.max_plans=2", "--set", "episode.save_frames=false",
                 "--set", "planner.max_new_tokens=24", "--set", "planner.with_state=false"])
    assert code == 0 and "success rate" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and 0.0 <= summary["success_rate"] <= 1.0
    for result in summary["results"]:
        events = _events(result["transcript"])
        assert events[0]["event"] == "start" and events[-1]["event"] == "end"
        assert sum(e["event"] == "plan" for e in events) == result["plans"] <= 2
    with capsys.disabled():
        print(f"\nnano model on {EMPTY}: success rate {summary['success_rate']:.2f} over 2 episodes "
              f"(untrained; mean plans {summary['mean_plans']:.1f})")


def test_the_cli_reports_a_missing_checkpoint(tmp_path, capsys):
    assert main(["embodied", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "not a vlstack checkpoint" in capsys.readouterr().err
