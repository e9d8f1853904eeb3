"""One fold of a run's events into the state every view shows (DESIGN §6).

``RunState.apply`` takes the events of one run's log in order (``esper.nissa.log`` turns lines
back into their Leyline dataclasses) and keeps what the views need: the run's identity and status,
each environment's episodes (epochs, seed transitions, actions, rewards, panics), PPO rounds with
what happened in them, anomaly counts and the latest events. The TUI, the run report,
``esper runs`` and the dashboard server all read this state; none of them folds records itself.

**Resumes are handled here, once.** A resumed ``RunStarted`` names the last checkpointed epoch
(PPO runs: round); everything the interrupted attempt folded after it is forgotten, because the
resumed attempt runs it again (``step_of`` says what a record belongs to). Asked to
(``keep_lines``), the fold also lists the log lines of the run as it finally happened, which
the DuckDB views of ``esper runs query`` select; records not tied to a step (e.g. the
``RunFinished`` of an interrupted attempt) are kept.

**Bounded.** A PPO environment keeps the epochs of its last ``keep_episodes`` episodes in detail
and one ``EpisodeFinished`` per episode; a round keeps sums and counts, not its steps; at most
``recent`` events are kept for the log panels. Following a long log therefore holds its state, not
its lines.

Single-model runs (heuristic, static, eval) have one environment keyed ``None`` with one episode
numbered ``None``.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from esper.leyline import SeedStage, ordered_slots
from esper.leyline.config import measured
from esper.leyline.events import (
    ActionTaken,
    AnomalyDetected,
    EpisodeFinished,
    EpochCompleted,
    GovernorPanic,
    PPOHeadStats,
    PPORunFinished,
    PPOUpdate,
    RatioExplosion,
    RewardComputed,
    RunFinished,
    RunStarted,
    SeedTransition,
)
from esper.nissa.log import EventTail, Logged
from esper.nissa.record import PPO_MODE

RECENT_EVENTS = 5000
"""Events kept for log panels: a few PPO rounds to scroll back through, while a replay of a long
log (hundreds of thousands of events) stays cheap."""

KEEP_EPISODES = 4
"""Episodes per PPO environment kept with their epochs (older ones keep their result only)."""

MARK_KINDS: Mapping[SeedStage, str] = {
    SeedStage.GERMINATED: "germinate",
    SeedStage.FOSSILIZED: "fossilize",
    SeedStage.PRUNED: "prune",
}
"""Lifecycle events marked on timelines and curves, by the stage a transition enters."""


@dataclass(frozen=True)
class StageSpan:
    """A slot held ``stage`` from epoch ``start`` to ``end`` (a transition decided at the end of
    epoch e takes effect from e)."""

    stage: SeedStage
    start: float
    end: float
    blueprint: str | None


@dataclass(frozen=True)
class LifecycleMark:
    """A germinate, fossilize or prune transition: ``kind`` is its ``MARK_KINDS`` label."""

    epoch: int
    slot: str
    kind: str
    blueprint: str | None


@dataclass
class Episode:
    """One environment's episode (a single-model run's whole run), as finally run.

    Attributes:
        number: the episode (PPO: the round), None for a single-model run.
        epochs: ``EpochCompleted`` in epoch order (an epoch redone after a rollback replaces
            the old one).
        transitions, actions, rewards, panics: those events, in log order.
        result: the ``EpisodeFinished`` (PPO), once it came.
    """

    number: int | None
    epochs: list[EpochCompleted] = field(default_factory=list)
    transitions: list[SeedTransition] = field(default_factory=list)
    actions: list[ActionTaken] = field(default_factory=list)
    rewards: list[RewardComputed] = field(default_factory=list)
    panics: list[GovernorPanic] = field(default_factory=list)
    result: EpisodeFinished | None = None
    # epoch -> how many transitions, actions, rewards and panics came before its
    # EpochCompleted, the last record before the epoch's checkpoint
    _ends: dict[int, tuple[int, int, int, int]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def latest(self) -> EpochCompleted | None:
        """The last completed epoch."""
        return self.epochs[-1] if self.epochs else None

    def best_val_accuracy(self) -> float | None:
        """The best finite validation accuracy of the episode's epochs but one that panicked:
        it measured the model the governor then discarded (the run's summary leaves it out
        alike). None before a measured epoch."""
        panicked = {p.epoch for p in self.panics}
        scored = [e.val_accuracy for e in self.epochs if e.epoch not in panicked]
        return max((a for a in scored if math.isfinite(a)), default=None)

    def add_epoch(self, event: EpochCompleted) -> None:
        while self.epochs and self.epochs[-1].epoch >= event.epoch:
            self.epochs.pop()  # an epoch run again after a rollback replaces its first run
        self.epochs.append(event)
        counts = (len(self.transitions), len(self.actions), len(self.rewards), len(self.panics))
        self._ends[event.epoch] = counts

    def rewind(self, saved: int) -> None:
        """Forget what came after the checkpoint of epoch ``saved`` (a resume runs it again):
        the later epochs, and the decision taken after epoch ``saved`` itself (logged at epoch
        ``saved``, after its checkpoint, and taken again by the resumed run)."""
        ends = self._ends.get(saved)
        if ends is not None:
            self.transitions = self.transitions[: ends[0]]
            self.actions = self.actions[: ends[1]]
            self.rewards = self.rewards[: ends[2]]
            self.panics = self.panics[: ends[3]]
        self._ends = {epoch: at for epoch, at in self._ends.items() if epoch <= saved}
        self.epochs = [e for e in self.epochs if e.epoch <= saved]
        self.transitions = [e for e in self.transitions if e.epoch <= saved]
        self.actions = [e for e in self.actions if e.epoch <= saved]
        self.rewards = [e for e in self.rewards if e.epoch <= saved]
        self.panics = [e for e in self.panics if e.epoch <= saved]

    def timeline(
        self, slots: Iterable[str], end: float | None = None
    ) -> dict[str, list[StageSpan]]:
        """Each slot's stages over the episode, from its seed transitions.

        A slot starts in the ``from_stage`` of its first transition (DORMANT without one) at epoch
        0; a transition at epoch e ends the current span at e and starts the next. Spans of zero
        length (two transitions in one epoch) are left out, except a slot's last: it ends at
        ``end`` (default: the last completed epoch) and is kept even when its stage was entered
        at ``end``, so every timeline ends in the stage the slot finished in.
        """
        if end is None:
            end = float(self.epochs[-1].epoch) if self.epochs else 0.0
        current: dict[str, tuple[SeedStage, float, str | None] | None] = dict.fromkeys(slots)
        spans: dict[str, list[StageSpan]] = {slot: [] for slot in current}
        for event in self.transitions:
            if event.slot not in spans:
                continue
            state = current[event.slot]
            if state is None:  # the slot's stage before its first transition
                first = SeedStage(event.from_stage)
                state = (first, 0.0, None if first is SeedStage.DORMANT else event.blueprint)
            stage, start, held = state
            if event.epoch > start:
                spans[event.slot].append(StageSpan(stage, start, float(event.epoch), held))
            entered = SeedStage(event.to_stage)
            kept = None if entered is SeedStage.DORMANT else event.blueprint
            current[event.slot] = (entered, float(event.epoch), kept)
        for slot, state in current.items():
            stage, start, held = state or (SeedStage.DORMANT, 0.0, None)
            if state is not None or end > start:
                spans[slot].append(StageSpan(stage, start, max(end, start), held))
        return spans

    def marks(self) -> list[LifecycleMark]:
        """Germinate, fossilize and prune transitions (by the stage entered), in log order."""
        return [
            LifecycleMark(e.epoch, e.slot, MARK_KINDS[SeedStage(e.to_stage)], e.blueprint)
            for e in self.transitions
            if SeedStage(e.to_stage) in MARK_KINDS
        ]


@dataclass
class EnvState:
    """One environment: its recent episodes in detail and every episode's result.

    Attributes:
        env: the environment index, None for a single-model run.
        episodes: the latest episodes (``KEEP_EPISODES`` for PPO; one otherwise).
        results: every ``EpisodeFinished`` of the environment (PPO), in order.
        panics_by_episode: each episode's governor panics (all episodes: the kept ones are
            only the last few, and a resume drops the episodes it runs again).
    """

    env: int | None
    episodes: deque[Episode]
    results: list[EpisodeFinished] = field(default_factory=list)
    panics_by_episode: dict[int | None, int] = field(default_factory=dict)

    @property
    def panics(self) -> int:
        """Governor panics over the run as finally run."""
        return sum(self.panics_by_episode.values())

    @property
    def episode(self) -> Episode | None:
        """The current (or last) episode."""
        return self.episodes[-1] if self.episodes else None

    @property
    def latest(self) -> EpochCompleted | None:
        """The environment's last completed epoch."""
        return None if self.episode is None else self.episode.latest

    def at(self, number: int | None) -> Episode:
        """The episode ``number``, started on its first record."""
        current = self.episode
        if current is None or current.number != number:
            current = Episode(number)
            self.episodes.append(current)
        return current


@dataclass
class RoundState:
    """One PPO round: its update and what the steps before it did.

    Attributes:
        update: the round's ``PPOUpdate``.
        mean_reward: mean total reward per step (None: no reward recorded).
        components: reward component -> mean per step.
        ops: op -> actions taken.
        entered: seed stage -> transitions into it (how far seeds got).
        head_entropy: head -> entropy, when per-head statistics were logged (DEBUG).
    """

    update: PPOUpdate
    mean_reward: float | None
    components: dict[str, float]
    ops: dict[str, int]
    entered: dict[str, int]
    head_entropy: dict[str, float | None] = field(default_factory=dict)


@dataclass
class _Bucket:
    """What a PPO round's steps did so far (sums and counts, not the steps)."""

    rewards: float = 0.0
    steps: int = 0
    components: dict[str, tuple[float, int]] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    entered: Counter[str] = field(default_factory=Counter)

    def add_reward(self, event: RewardComputed) -> None:
        if event.total == event.total:  # NaN (not finite when logged) is not a reward
            self.rewards += event.total
            self.steps += 1
        for name, value in event.components:
            if value == value:
                total, count = self.components.get(name, (0.0, 0))
                self.components[name] = (total + value, count + 1)

    def close(self, update: PPOUpdate) -> RoundState:
        return RoundState(
            update,
            self.rewards / self.steps if self.steps else None,
            {name: total / count for name, (total, count) in self.components.items()},
            dict(self.ops),
            dict(self.entered),
        )


def step_of(item: Logged, ppo: bool) -> int | None:
    """The epoch a record belongs to (PPO runs: its episode, else its round; None if none):
    what a resume compares with the checkpoint it resumed from."""
    if ppo:
        step = item.episode
        if step is None:
            step = getattr(item.event, "round", None)
    else:
        step = getattr(item.event, "epoch", None)
    return step if isinstance(step, int) else None


class RunState:
    """Everything the views show about one run, folded one event at a time.

    Args:
        recent: how many of the latest events to keep (``recent_events``).
        keep_episodes: PPO episodes per environment kept with their epochs.
        keep_lines: also list the lines of the run as it finally happened (``lines``).
    """

    def __init__(
        self,
        recent: int = RECENT_EVENTS,
        keep_episodes: int = KEEP_EPISODES,
        keep_lines: bool = False,
    ) -> None:
        self.started: RunStarted | None = None  # the latest attempt's start
        self.attempts = 0
        self.finish: RunFinished | PPORunFinished | None = None  # the latest attempt's end
        self.envs: dict[int | None, EnvState] = {}
        self.rounds: list[RoundState] = []
        self.anomalies: list[AnomalyDetected] = []
        self.explosions: list[RatioExplosion] = []
        self.events = 0
        self.counts: Counter[str] = Counter()
        self.recent: deque[Logged] = deque(maxlen=recent)
        self._keep = keep_episodes
        # (1-based position among the folded events, its step) of every event kept.
        self.lines: list[tuple[int, int | None]] | None = [] if keep_lines else None
        self._slot_names: dict[str, None] = {}
        self._bucket = _Bucket()
        # a single-model run's epoch -> the position of its EpochCompleted (its checkpoint's)
        self._epoch_ends: dict[int, int] = {}

    # ---------------------------------------------------------------------------- reading

    @property
    def mode(self) -> str | None:
        return None if self.started is None else self.started.mode

    @property
    def is_ppo(self) -> bool:
        """Whether this is a PPO training run (several environments, rounds)."""
        return self.mode == PPO_MODE

    @property
    def status(self) -> str | None:
        """The latest attempt's end status; None while it runs (or if it crashed)."""
        return None if self.finish is None else self.finish.status

    def env_keys(self) -> list[int | None]:
        """The environments seen so far, in order (None, a single-model run's, first)."""
        return sorted(self.envs, key=lambda key: -1 if key is None else key)

    def env(self, key: int | None) -> EnvState:
        """Environment ``key``, created on first use."""
        if key not in self.envs:
            self.envs[key] = EnvState(key, deque(maxlen=self._keep if key is not None else 1))
        return self.envs[key]

    def slots(self) -> tuple[str, ...]:
        """The run's slots in execution order (from ``RunStarted`` and epoch snapshots).

        Raises:
            ValueError: the log names a slot that does not exist.
        """
        return ordered_slots(self._slot_names)

    def episode(self, env: int | None = None) -> Episode:
        """Environment ``env``'s current episode (an empty one before any record; reading
        creates nothing)."""
        found = self.envs.get(env)
        return found.episode if found is not None and found.episode is not None else Episode(None)

    # ---------------------------------------------------------------------------- folding

    def apply(self, item: Logged) -> None:
        """Fold one event (in log order) into the state."""
        self.events += 1
        self.counts[item.name] += 1
        self.recent.append(item)
        event = item.event
        if isinstance(event, RunStarted):
            self._start(event)
        elif isinstance(event, RunFinished | PPORunFinished):
            self.finish = event
            if event.status == "interrupted":  # stopped mid-epoch (or round): what it logged
                # after its last checkpoint was not kept (a decision shown as taken was not)
                self._rewind(event.epochs if isinstance(event, RunFinished) else event.rounds)
        elif isinstance(event, PPOUpdate):
            self.rounds.append(self._bucket.close(event))
            self._bucket = _Bucket()
        elif isinstance(event, PPOHeadStats):
            if self.rounds and self.rounds[-1].update.round == event.round:
                self.rounds[-1].head_entropy[event.head] = event.entropy
        elif isinstance(event, AnomalyDetected):
            self.anomalies.append(event)
        elif isinstance(event, RatioExplosion):
            self.explosions.append(event)
        elif isinstance(event, EpisodeFinished):
            self.env(item.env).results.append(event)
            self.env(item.env).at(event.episode).result = event
        else:
            self._step(item)
        if self.lines is not None:  # after a resumed start has dropped what it replaces
            self.lines.append((self.events, step_of(item, self.is_ppo)))

    def apply_all(self, items: Iterable[Logged]) -> RunState:
        """Fold ``items`` in order; returns the state (for chaining)."""
        for item in items:
            self.apply(item)
        return self

    def _start(self, event: RunStarted) -> None:
        self.started, self.finish = event, None  # a resumed run is live again
        self.attempts += 1
        self._slot_names.update(dict.fromkeys(event.slots))
        if event.resumed_from_epoch is not None:
            self._rewind(event.resumed_from_epoch)

    def _rewind(self, saved: int) -> None:
        """Forget what came after the checkpoint of epoch (PPO: round) ``saved``: a resumed run
        runs it again, and an interrupted one ended at that checkpoint."""
        cut = self._epoch_ends.get(saved)  # None for PPO: a round's records are its own
        self._epoch_ends = {epoch: n for epoch, n in self._epoch_ends.items() if epoch <= saved}
        if self.lines is not None:
            self.lines = [
                (n, step)
                for n, step in self.lines
                if step is None or (step <= saved and (cut is None or n <= cut))
            ]
        self._bucket = _Bucket()
        if self.is_ppo:  # rounds (= episodes) after the checkpoint are run again
            self.rounds = [r for r in self.rounds if r.update.round <= saved]
            self.anomalies = [a for a in self.anomalies if a.round <= saved]
            self.explosions = [e for e in self.explosions if e.round <= saved]
            for env in self.envs.values():
                env.results = [r for r in env.results if r.episode <= saved]
                kept = [e for e in env.episodes if e.number is None or e.number <= saved]
                env.episodes = deque(kept, maxlen=env.episodes.maxlen)
                counts = env.panics_by_episode
                env.panics_by_episode = {n: k for n, k in counts.items() if n is None or n <= saved}
        else:
            for env in self.envs.values():
                for episode in env.episodes:
                    episode.rewind(saved)
                env.panics_by_episode = {None: sum(len(e.panics) for e in env.episodes)}

    def _step(self, item: Logged) -> None:
        """An event of one environment's episode."""
        event = item.event
        if not isinstance(
            event, EpochCompleted | SeedTransition | ActionTaken | RewardComputed | GovernorPanic
        ):
            return  # e.g. PolicyDecision: kept among the recent events only
        env = self.env(item.env)
        episode = env.at(item.episode)
        if isinstance(event, EpochCompleted):
            episode.add_epoch(event)
            if not self.is_ppo:
                self._epoch_ends[event.epoch] = self.events
            self._slot_names.update(dict.fromkeys(s.slot for s in event.slots))
        elif isinstance(event, SeedTransition):
            episode.transitions.append(event)
            self._bucket.entered[event.to_stage] += 1
        elif isinstance(event, ActionTaken):
            episode.actions.append(event)
            self._bucket.ops[event.op] += 1
        elif isinstance(event, RewardComputed):
            episode.rewards.append(event)
            self._bucket.add_reward(event)
        else:
            episode.panics.append(event)
            counts = env.panics_by_episode
            counts[item.episode] = counts.get(item.episode, 0) + 1


def episode_less(state: RunState) -> RunFinished | None:
    """A finished growth run's end record when its log holds no epoch (``--telemetry.level
    minimal`` logs its start, end and governor panics, no epoch): the views show how far it
    got from it, not "—"."""
    finish = state.finish
    if state.is_ppo or not isinstance(finish, RunFinished) or state.episode().latest is not None:
        return None
    return finish


def summary_so_far(state: RunState) -> dict[str, Any]:
    """What ``summary.json`` would hold of an unfinished run's progress, as JSON (the views'
    ``SUMMARY_METRICS`` read it): a growth run's last logged epoch and best validation
    accuracy, a PPO run's last round and best return. Empty before the first epoch or round.
    (``runs compare`` showed the last accuracy but "—" for the loss and best the log holds,
    the report "—" for every metric.)"""
    if state.is_ppo:
        if not state.rounds:
            return {}
        last = state.rounds[-1].update
        returns = [v for r in state.rounds if (v := measured(r.update.mean_return)) is not None]
        ppo: dict[str, Any] = {"rounds_completed": last.round, "env_steps": last.env_steps}
        ppo["final_mean_accuracy"] = measured(last.mean_final_accuracy)
        ppo["final_mean_return"] = measured(last.mean_return)
        return {"ppo": ppo | {"best_mean_return": max(returns, default=None)}}
    episode = state.episode()
    latest = episode.latest
    if latest is None:
        return {}
    names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    final = {name: measured(getattr(latest, name)) for name in names}
    growth = {"epochs_completed": latest.epoch, "final": final, "param_count": latest.param_count}
    return {"growth": growth | {"best_val_accuracy": episode.best_val_accuracy()}}


def fold(items: Iterable[Logged], recent: int = RECENT_EVENTS) -> RunState:
    """A fresh ``RunState`` with ``items`` folded in."""
    return RunState(recent).apply_all(items)


def fold_to_end(state: RunState, tail: EventTail, read_bytes: int) -> RunState:
    """Fold every complete event ``tail``'s log holds now into ``state``, ``read_bytes`` of
    whole lines at a time (a huge log is never held whole); returns the state.

    Raises:
        EventLogError: a malformed line, once the events before it are folded (``EventTail``
            returns those first, without the error).
    """
    while True:
        state.apply_all(tail.events(read_bytes))
        if tail.error is not None:
            raise tail.error
        if tail.caught_up:
            return state
