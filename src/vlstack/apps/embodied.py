"""An embodied agent loop: perceive -> plan -> act -> validate -> replan, with a transcript.

An `Environment` shows an RGB view and a depth map, lists its actions, reports its
state as a JSON-able dict, and executes one action at a time. A `Planner` reads that
perception plus the mission (and, on a replan, what went wrong) and replies with a
plan as text: a JSON list of steps, each an action name or `{"action": ..., "expect":
{state key: value}}`. The loop parses and validates the plan (invalid JSON, an unknown
action or state key -> replan), executes it step by step, and checks each step against
the new state: the action must change the state (a blocked move does not), and what
the step expects must hold. A failed step triggers a replan; plan requests and actions
both have budgets. Every event goes to `transcript.jsonl` as it happens, so an episode
that ends in an error still leaves its transcript.

Planners: `EnginePlanner` asks a checkpoint through the inference `Engine` (RGB and
depth as two images); `ScriptedPlanner` replies from a fixed list (tests, demo).
`MiniGridEnvironment` adapts a MiniGrid task (gymnasium's MiniGrid package): the
agent's egocentric view is the RGB image, and depth is each visible cell's distance
from the agent, in cells.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from vlstack.errors import InputError, VlstackError
from vlstack.files import write_json
from vlstack.infer.engine import Engine, EngineConfig, Request, SamplingParams
from vlstack.models.tokenizer import IMAGE
from vlstack.progress import progress_bar

T = TypeVar("T")


class PlanError(VlstackError):
    """A planner's reply is not a usable plan (the loop replans with this message as feedback)."""


class EnvironmentFailure(VlstackError):
    """The environment raised while the agent perceived or acted."""


# --- the protocols --------------------------------------------------------------------------------------


@dataclass
class ActionOutcome:
    done: bool
    """The episode is over (mission accomplished, failed, or out of the environment's time)."""
    success: bool = False
    reward: float = 0.0


class Environment(Protocol):
    mission: str

    def available_actions(self) -> list[str]: ...

    def capture_rgb(self) -> Image.Image: ...

    def capture_depth(self) -> np.ndarray:
        """float32 [H, W] distances, aligned with `capture_rgb`; inf where nothing is seen."""
        ...

    def state(self) -> dict[str, Any]:
        """What steps are validated against: JSON-able values that the actions change."""
        ...

    def execute_action(self, action: str) -> ActionOutcome: ...


@dataclass
class PlanContext:
    """What a planner sees when asked for a plan."""

    mission: str
    actions: list[str]
    rgb: Image.Image
    depth: np.ndarray
    state: dict[str, Any]
    feedback: str | None = None
    """Why the previous plan was rejected or failed; None for the first plan."""
    history: list[str] = field(default_factory=list)
    """The steps executed so far, e.g. 'forward: ok'."""


class Planner(Protocol):
    def plan(self, context: PlanContext) -> str:
        """The reply text, which should hold a JSON plan."""
        ...


# --- plans -----------------------------------------------------------------------------------------------


@dataclass
class PlanStep:
    action: str
    expect: dict[str, Any] = field(default_factory=dict)
    """State values that must hold after the action, e.g. {"agent": [2, 1]}."""


def parse_plan(reply: str, actions: Sequence[str], state_keys: Sequence[str]) -> list[PlanStep]:
    """The first JSON plan in `reply`: a list of steps, or an object with a `steps` list."""
    decoder = json.JSONDecoder()
    value, found = None, False
    for start, char in enumerate(reply):
        if char in "[{":
            try:
                value, _ = decoder.raw_decode(reply, start)
                found = True
                break
            except json.JSONDecodeError:
                continue
    if not found:
        raise PlanError("the reply holds no JSON plan")  # the transcript keeps the whole reply
    steps = value.get("steps") if isinstance(value, dict) else value
    if not isinstance(steps, list) or not steps:
        raise PlanError('a plan is a non-empty JSON list of steps, e.g. ["forward", {"action": "left"}]')
    return [_parse_step(step, i, actions, state_keys) for i, step in enumerate(steps)]


def _parse_step(step: Any, index: int, actions: Sequence[str], state_keys: Sequence[str]) -> PlanStep:
    if isinstance(step, str):
        step = {"action": step}
    if not isinstance(step, dict) or not isinstance(step.get("action"), str):
        raise PlanError(f"step {index + 1} must be an action name or an object with an 'action'; got {step!r}")
    if step["action"] not in actions:
        raise PlanError(f"step {index + 1}: unknown action {step['action']!r}; available: {', '.join(actions)}")
    expect = step.get("expect", {})
    if not isinstance(expect, dict) or any(key not in state_keys for key in expect):
        raise PlanError(f"step {index + 1}: 'expect' must map state keys ({', '.join(state_keys)}) to values; "
                        f"got {expect!r}")
    return PlanStep(step["action"], expect)


def check_step(step: PlanStep, before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """Why the executed step failed, judged from the new state; None when it did what it should."""
    if after == before:
        return f"{step.action} had no effect"
    wrong = [f"{key} is {after[key]!r}, expected {want!r}" for key, want in step.expect.items() if after[key] != want]
    return "; ".join(wrong) or None


# --- the loop --------------------------------------------------------------------------------------------


@dataclass
class EpisodeConfig:
    """Budgets of one episode."""

    max_plans: int = 5
    """Plan requests in all: the first plan plus replans after a rejected plan or a failed step."""
    max_steps: int = 30
    """Actions executed in all."""
    save_frames: bool = True
    """Write the RGB view before the first and after every step as frame-NNN.png beside the transcript."""


@dataclass
class EpisodeResult:
    success: bool
    reason: str
    steps: int
    plans: int
    reward: float
    transcript: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Transcript:
    """Append-only JSONL of episode events, flushed per line so a crash keeps what happened."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._start = time.perf_counter()

    def write(self, event: str, **fields: Any) -> None:
        record = {"event": event, "t": round(time.perf_counter() - self._start, 4), **fields}
        self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def run_episode(env: Environment, planner: Planner, out_dir: str | Path,
                config: EpisodeConfig | None = None) -> EpisodeResult:
    """Plan, act and replan until the mission ends or a budget is spent; OUT_DIR/transcript.jsonl records it.

    An exception from the environment is raised as `EnvironmentFailure` naming the call;
    the transcript then ends with an `error` and an `end` event.
    """
    config = config or EpisodeConfig()
    out_dir = Path(out_dir)
    transcript = Transcript(out_dir / "transcript.jsonl")
    episode = _Episode(env, planner, config, transcript, out_dir)
    try:
        result = episode.run()
    except Exception as exc:
        transcript.write("error", error=f"{type(exc).__name__}: {exc}")
        transcript.write("end", success=False, reason="error", steps=episode.steps, plans=episode.plans)
        raise
    finally:
        transcript.close()
    return result


class _Episode:
    def __init__(self, env: Environment, planner: Planner, config: EpisodeConfig, transcript: Transcript,
                 out_dir: Path):
        self.env, self.planner, self.config, self.transcript, self.out_dir = env, planner, config, transcript, out_dir
        self.steps, self.plans, self.reward = 0, 0, 0.0
        self.history: list[str] = []

    def run(self) -> EpisodeResult:
        actions = self._env("available_actions", self.env.available_actions)
        state = self._env("state", self.env.state)
        mission = self._env("mission", lambda: self.env.mission)
        self.transcript.write("start", mission=mission, actions=actions, state=state,
                              config=dataclasses.asdict(self.config), frame=self._frame())
        feedback = None
        while self.plans < self.config.max_plans:
            if self.steps >= self.config.max_steps:
                return self._out_of_steps()
            if feedback:
                self.transcript.write("replan", reason=feedback)
            context = PlanContext(mission, actions, self._env("capture_rgb", self.env.capture_rgb),
                                  self._env("capture_depth", self.env.capture_depth), state, feedback,
                                  list(self.history))
            self.plans += 1
            reply = self.planner.plan(context)
            try:
                plan = parse_plan(reply, actions, list(state))
            except PlanError as exc:
                self.transcript.write("plan", attempt=self.plans, reply=reply, error=str(exc))
                feedback = f"invalid plan: {exc}"
                continue
            self.transcript.write("plan", attempt=self.plans, reply=reply, steps=[dataclasses.asdict(s) for s in plan])
            for step in plan:
                if self.steps >= self.config.max_steps:
                    return self._out_of_steps()
                outcome, state, problem = self._execute(step, state)
                if outcome.done:
                    return self._end(outcome.success, "mission accomplished" if outcome.success
                                     else "the environment ended the episode")
                if problem:
                    feedback = f"step {step.action!r} failed: {problem}"
                    break
            else:
                feedback = "the plan ended before the mission was accomplished"
        return self._end(False, f"plan budget of {self.config.max_plans} spent")

    def _execute(self, step: PlanStep, before: dict[str, Any]) -> tuple[ActionOutcome, dict[str, Any], str | None]:
        outcome = self._env(f"execute_action({step.action!r})", self.env.execute_action, step.action)
        self.steps += 1
        self.reward += outcome.reward
        after = self._env("state", self.env.state)
        problem = None if outcome.done else check_step(step, before, after)
        self.history.append(f"{step.action}: {problem or 'ok'}")
        self.transcript.write("step", n=self.steps, action=step.action, expect=step.expect, state=after,
                              ok=problem is None, problem=problem, done=outcome.done, reward=outcome.reward,
                              frame=self._frame())
        return outcome, after, problem

    def _out_of_steps(self) -> EpisodeResult:
        return self._end(False, f"step budget of {self.config.max_steps} spent")

    def _end(self, success: bool, reason: str) -> EpisodeResult:
        result = EpisodeResult(success, reason, self.steps, self.plans, round(self.reward, 4),
                               str(self.transcript.path))
        self.transcript.write("end", **{k: v for k, v in result.to_dict().items() if k != "transcript"})
        return result

    def _frame(self) -> str | None:
        if not self.config.save_frames:
            return None
        name = f"frame-{self.steps:03d}.png"
        self._env("capture_rgb", self.env.capture_rgb).save(self.out_dir / name)
        return name

    def _env(self, what: str, call: Callable[..., T], *args: Any) -> T:
        try:
            return call(*args)
        except Exception as exc:
            raise EnvironmentFailure(f"the environment raised {type(exc).__name__} in {what} at step {self.steps}: "
                                     f"{exc}; transcript: {self.transcript.path}") from exc


# --- planners --------------------------------------------------------------------------------------------


class ScriptedPlanner:
    """Replies from a fixed list in order, repeating the last reply once the list is used up."""

    def __init__(self, replies: Sequence[str]):
        if not replies:
            raise InputError("a ScriptedPlanner needs at least one reply")
        self.replies = list(replies)
        self.contexts: list[PlanContext] = []

    def plan(self, context: PlanContext) -> str:
        self.contexts.append(context)
        return self.replies[min(len(self.contexts), len(self.replies)) - 1]


@dataclass
class EnginePlannerConfig:
    max_new_tokens: int = 48
    with_depth: bool = True
    """Show the depth map as a second image (near = bright, unseen = black)."""
    with_state: bool = True
    """Tell the state in the prompt (leave it out for models with few positions)."""
    max_depth: float = 8.0
    """Distance shown as black; nearer is brighter."""


class EnginePlanner:
    """Asks a model, through the inference Engine, for a plan (greedy, so episodes are repeatable)."""

    def __init__(self, engine: Engine, config: EnginePlannerConfig | None = None):
        self.engine = engine
        self.config = config or EnginePlannerConfig()

    def plan(self, context: PlanContext) -> str:
        images = [context.rgb] + ([depth_image(context.depth, self.config.max_depth)] if self.config.with_depth else [])
        question = plan_prompt(context, self.config.with_state)
        request = Request([{"role": "user", "content": "\n".join([IMAGE] * len(images) + [question])}],
                          images, SamplingParams(max_new_tokens=self.config.max_new_tokens))
        return self.engine.generate([request])[0].text


def plan_prompt(context: PlanContext, with_state: bool = True) -> str:
    """The planning question: mission, actions, (state,) and what went wrong last time."""
    state = f" State: {', '.join(f'{k} {v}' for k, v in context.state.items())}." if with_state else ""
    feedback = f" Last time: {context.feedback}." if context.feedback else ""
    return (f"Mission: {context.mission}. Actions: {', '.join(context.actions)}.{state}{feedback} "
            "Reply with a JSON list of actions.")


def depth_image(depth: np.ndarray, max_depth: float) -> Image.Image:
    """Depth [H, W] -> grayscale image: 0 distance white, `max_depth` or more (or unseen) black."""
    near = 1 - np.clip(np.nan_to_num(depth, posinf=max_depth) / max_depth, 0, 1)
    return Image.fromarray((near * 255).round().astype(np.uint8)).convert("RGB")


# --- MiniGrid --------------------------------------------------------------------------------------------


class MiniGridEnvironment:
    """A MiniGrid task as an Environment; the RGB view and depth are the agent's egocentric view."""

    ACTIONS = ("left", "right", "forward", "pickup", "drop", "toggle")
    """MiniGrid's actions but `done`, which changes nothing (a MiniGrid episode ends by itself)."""
    DIRECTIONS = ("east", "south", "west", "north")

    def __init__(self, env_id: str, seed: int = 0, tile_size: int = 8):
        gym = _import_minigrid()
        try:
            self.env = gym.make(env_id, render_mode="rgb_array")
        except gym.error.Error as exc:
            raise InputError(f"cannot make the environment {env_id!r}: {exc}") from exc
        self.env.reset(seed=seed)
        self.tile_size = tile_size

    @property
    def mission(self) -> str:
        return self.env.unwrapped.mission

    def available_actions(self) -> list[str]:
        return list(self.ACTIONS)

    def capture_rgb(self) -> Image.Image:
        return Image.fromarray(self.env.unwrapped.get_frame(agent_pov=True, tile_size=self.tile_size))

    def capture_depth(self) -> np.ndarray:
        """Euclidean distance in cells from the agent to every visible cell of its view; inf elsewhere."""
        game = self.env.unwrapped
        _, visible = game.gen_obs_grid()  # [x, y]: the agent sits at (size // 2, size - 1), facing up
        size = game.agent_view_size
        y, x = np.mgrid[0:size, 0:size]
        cells = np.where(visible.T, np.hypot(x - size // 2, y - (size - 1)), np.inf)  # [y, x]
        return np.kron(cells, np.ones((self.tile_size, self.tile_size))).astype(np.float32)  # [H, W] like the RGB

    def state(self) -> dict[str, Any]:
        game = self.env.unwrapped
        return {
            "agent": [int(v) for v in game.agent_pos],
            "direction": self.DIRECTIONS[game.agent_dir],
            "front": _describe(game.grid.get(*game.front_pos)),
            "carrying": _describe(game.carrying) if game.carrying else None,
        }

    def execute_action(self, action: str) -> ActionOutcome:
        if action not in self.ACTIONS:
            raise InputError(f"unknown action {action!r}; available: {', '.join(self.ACTIONS)}")
        _, reward, terminated, truncated, _ = self.env.step(self.ACTIONS.index(action))  # Actions enum order
        return ActionOutcome(done=terminated or truncated, success=terminated and reward > 0, reward=float(reward))

    def close(self) -> None:
        self.env.close()


def _describe(obj) -> str:
    """A grid cell or carried object in words: 'empty', 'wall', 'red key', 'yellow door (locked)', ..."""
    if obj is None:
        return "empty"
    name = obj.type if obj.type in ("wall", "goal", "lava") else f"{obj.color} {obj.type}"
    if obj.type == "door":
        name += " (locked)" if obj.is_locked else " (open)" if obj.is_open else " (closed)"
    return name


def _import_minigrid():
    """gymnasium with the MiniGrid-* environments registered (imported only when an episode runs)."""
    import gymnasium
    import minigrid  # noqa: F401  (registers the MiniGrid-* environments)

    return gymnasium


# --- runs ------------------------------------------------------------------------------------------------


EMPTY_5X5_SCRIPT = [
    '["forward", "forward", "forward"]',
    '[{"action": "right", "expect": {"direction": "south"}}, "forward", {"action": "forward"}]',
]
"""Solves MiniGrid-Empty-5x5 (agent at (1, 1) facing east, goal at (3, 3)) with one replan: the third
forward of the first plan runs into the wall, has no effect, and the second plan turns and goes down."""


def scripted_episode(out_dir: str | Path, env_id: str = "MiniGrid-Empty-5x5-v0", seed: int = 0,
                     replies: Sequence[str] = tuple(EMPTY_5X5_SCRIPT), config: EpisodeConfig | None = None
                     ) -> dict[str, Any]:
    """One MiniGrid episode with a ScriptedPlanner; the result as a dict (with seconds)."""
    started = time.perf_counter()
    env = MiniGridEnvironment(env_id, seed)
    try:
        result = run_episode(env, ScriptedPlanner(replies), out_dir, config)
    finally:
        env.close()
    return {"env": env_id, "seed": seed, **result.to_dict(), "seconds": round(time.perf_counter() - started, 3)}


@dataclass
class EmbodiedConfig:
    """A set of MiniGrid episodes planned by a checkpoint (`vlstack embodied`; every field can be --set)."""

    episodes: int = 1
    device: str = "auto"
    """Where the model runs: auto (CUDA when a GPU is present, else cpu), cpu, cuda or cuda:N."""
    seed: int = 0
    """Episode i runs on environment seed `seed + i`."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    planner: EnginePlannerConfig = field(default_factory=EnginePlannerConfig)


def run_minigrid_episodes(checkpoint: str | Path, env_id: str, out_dir: str | Path,
                          config: EmbodiedConfig | None = None) -> dict[str, Any]:
    """Episodes of `env_id` planned by a checkpoint through the Engine.

    Writes OUT_DIR/episode-SEED/ (transcript.jsonl, frames) and OUT_DIR/summary.json; returns the summary.
    """
    config = config or EmbodiedConfig()
    if config.episodes < 1:
        raise InputError(f"episodes must be at least 1; got {config.episodes}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    planner = EnginePlanner(Engine.from_checkpoint(checkpoint, EngineConfig(device=config.device)), config.planner)
    results = []
    with progress_bar() as progress:
        task = progress.add_task(f"{env_id} episodes", total=config.episodes)
        for seed in range(config.seed, config.seed + config.episodes):
            env = MiniGridEnvironment(env_id, seed)
            try:
                result = run_episode(env, planner, out_dir / f"episode-{seed}", config.episode)
            finally:
                env.close()
            results.append({"seed": seed, **result.to_dict()})
            rate = sum(r["success"] for r in results) / len(results)
            progress.update(task, advance=1, status=f"success {rate:.2f}")
    n = len(results)
    summary = {
        "env": env_id,
        "checkpoint": str(checkpoint),
        "episodes": n,
        "success_rate": sum(r["success"] for r in results) / n,
        "mean_steps": sum(r["steps"] for r in results) / n,
        "mean_plans": sum(r["plans"] for r in results) / n,
        "seconds": round(time.perf_counter() - started, 3),
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", summary)
    return summary
