"""The episode: one host training run, stepped by a controller's actions (DESIGN §3, §10).

Every command runs through this one loop — ``esper static``, ``heuristic`` and ``eval`` drive one
episode with their controller, and each PPO environment wraps one episode and adds a reward.
``reset()`` builds a fresh host and trainer and trains the first epoch; each ``step(action)``
applies the action through the trainer (with ``auto_advance``, then every advance whose gate
passes), trains the next epoch and observes. An episode of
``epochs`` epochs therefore has ``epochs − 1`` decisions. It ends by **truncation** when the last
epoch is trained and by **termination** when the governor panics.

An episode owns its data order (its own ``BatchStream``) and its own torch random state (host and
seed initialization), so its results do not depend on how many episodes run beside it or in
which order they step. Episode ``k`` of seed ``s`` uses ``esper.seeding.episode_seed(s, k)`` on a
CUDA device and its ``low_seed`` on the CPU, whose generator keeps a seed's low 32 bits anyway.

Several episodes can also step together (``reset_together``, ``step_together``): each applies
its action on its own random state, then their epochs train as one grouped computation
(``esper.tolaria.engine.train_together``) where their models allow, then each validates and
observes on its own. ``reset`` and ``step`` are the one-episode case of the same code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch

from esper.kasmina import MorphogeneticModel, blueprint_registry, capture_state, restore_state
from esper.kasmina.checkpoint import ModelState
from esper.kasmina.grouped import groupable
from esper.kasmina.hosts import SegmentedHost
from esper.leyline import Action, Observation, SeedStateReport, Topology, TrainingSignals
from esper.leyline.config import HostTraining, check_int
from esper.leyline.data import BatchSource, Dataset
from esper.leyline.events import Event
from esper.seeding import episode_seed, low_seed
from esper.tolaria.engine import ReportProgress, StepResult, Trained, Trainer, train_together

Emit = Callable[[Event], None]


class Tracker(Protocol):
    """What the episode needs from Tamiyo's ``SignalTracker`` (injected: Tolaria does not import
    Tamiyo). ``update`` takes the epoch's four metrics and the seed reports by keyword."""

    @property
    def update(self) -> Callable[..., TrainingSignals]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Transition:
    """What one ``step`` did: the controller's action, the observation before and after it.

    Attributes:
        action: the action applied.
        accepted: whether the model accepted it (a refused action is a no-op).
        before: the step before (its result and the seed reports the controller saw).
        after: the step just trained.
        observation: the observation after the step.
    """

    action: Action
    accepted: bool
    before: tuple[StepResult, dict[str, SeedStateReport]]
    after: tuple[StepResult, dict[str, SeedStateReport]]
    observation: Observation


def dataset_on(data: Dataset, device: torch.device) -> Dataset:
    """The dataset with its tensors on ``device`` (the same object when already there)."""
    if data.x_train.device == device:
        return data
    return replace(
        data,
        x_train=data.x_train.to(device),
        y_train=data.y_train.to(device),
        x_val=data.x_val.to(device),
        y_val=data.y_val.to(device),
        x_test=data.x_test.to(device),
        y_test=data.y_test.to(device),
    )


class Episode:
    """One host training run that a controller steps through.

    Args:
        training: host training, resolved against its task.
        data: the task's dataset (shared read-only between episodes).
        build_host: builds a fresh host for the dataset (the task's ``build_host``).
        make_stream: ``(seed) -> BatchSource`` of training batches for one episode.
        new_tracker: makes a fresh signal tracker for each episode.
        seed: this episode sequence's seed.
        device: where the host trains.
        emit: where telemetry goes.
        progress: where progress within an epoch goes (``Trainer``; None: nowhere).
    """

    def __init__(
        self,
        training: HostTraining,
        data: Dataset,
        build_host: Callable[[Dataset], SegmentedHost],
        make_stream: Callable[[int], BatchSource],
        new_tracker: Callable[[], Tracker],
        seed: int,
        device: torch.device,
        emit: Emit,
        progress: ReportProgress | None = None,
    ) -> None:
        self.training = training
        self.max_epochs = training.episode_length()
        self.data, self.device, self.emit = dataset_on(data, device), device, emit
        self.progress = progress
        self._build_host, self._make_stream, self._new_tracker = (
            build_host,
            make_stream,
            new_tracker,
        )
        self.slots = training.slots
        self.seed = seed
        probe = build_host(self.data)  # validates the slots before the first episode
        self.initial_model = MorphogeneticModel(probe, list(self.slots))
        """An untrained model of this episode's architecture (its parameter counts)."""
        self.topology: Topology = probe.injection_points[0].topology
        self.blueprints = blueprint_registry.names(self.topology)
        self.episode = 0  # episodes started so far
        self._rng = torch.Generator().manual_seed(seed).get_state()  # this episode's torch RNG
        self._cuda_rng: torch.Tensor | None = None  # its CUDA device's, once it has run there
        self._trainer: Trainer | None = None
        self._tracker = new_tracker()
        self._last: tuple[StepResult, dict[str, SeedStateReport]] | None = None
        self._observation: Observation | None = None
        self._tracker_before = ""  # the tracker's state before the last epoch was observed
        self._built = False  # built by ``build`` and not trained since: ``reset`` trains it
        self.on_validated: Callable[[float], None] | None = None
        """Given to every trainer this episode builds (``Trainer.on_validated``)."""

    # ------------------------------------------------------------------------------ RNG

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run the block on this episode's torch random state (CPU, and its CUDA device's), then
        save it back; the global states are restored afterwards."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.set_rng_state(self._rng)
            if cuda and self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)
            yield
            self._rng = torch.get_rng_state()
            if cuda:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)

    # ------------------------------------------------------------------------------ stepping

    @property
    def trainer(self) -> Trainer:
        """The current episode's trainer."""
        if self._trainer is None:
            raise RuntimeError("call reset() before using the episode")
        return self._trainer

    @property
    def epoch(self) -> int:
        """Epochs trained in the current episode (0 before ``reset``)."""
        return 0 if self._trainer is None else self._trainer.epoch

    @property
    def model(self) -> MorphogeneticModel:
        """The current episode's model."""
        return self.trainer.model

    @property
    def last(self) -> StepResult:
        """The result of the last trained epoch."""
        if self._last is None:
            raise RuntimeError("call reset() before using the episode")
        return self._last[0]

    @property
    def observation(self) -> Observation:
        """What the controller sees now (after the last trained epoch)."""
        if self._observation is None:
            raise RuntimeError("call reset() before using the episode")
        return self._observation

    def _build(self) -> None:
        """A fresh host, trainer and tracker for episode ``self.episode`` (on its own RNG)."""
        whole = episode_seed(self.seed, self.episode)
        # The CPU generator keeps a seed's low 32 bits: reduced to a seed, it draws as before
        # (and the data stream takes seeds only); CUDA's keeps all 64, so it gets the whole one.
        low = low_seed(whole)
        torch.default_generator.manual_seed(low)
        if self.device.type == "cuda":  # only this episode's device, not every GPU
            torch.cuda.default_generators[self.device.index or 0].manual_seed(whole)
        host = self._build_host(self.data).to(self.device)
        model = MorphogeneticModel(host, list(self.slots))
        stream = self._make_stream(low)
        self._trainer = Trainer(
            model, self.data, stream, self.training, self.emit, progress=self.progress
        )
        self._trainer.on_validated = self.on_validated
        self._tracker = self._new_tracker()

    def reset(self) -> Observation:
        """Build a fresh host and trainer (unless ``build`` just did), train the first epoch,
        return the first observation (the episode is already ``done`` if the governor ended it
        in that epoch)."""
        return reset_together([self])[0]

    def build(self) -> None:
        """The first half of ``reset``: the next episode's fresh host, trainer and tracker.
        Called apart, before ``reset``, where building is start-up, not training time (a
        host's first build pays first calls: torch's optimizers imported ``torch._dynamo``,
        1-3 s, before Esper stopped using them)."""
        self.episode += 1
        with self._own_rng():
            self._build()
        self._built, self._last = True, None  # no epoch of it yet: ``step`` needs ``reset``

    def _apply(self, action: Action) -> bool:
        """The first half of ``step``: apply ``action``; whether the model accepted it."""
        if self._last is None or self.trainer.done:
            raise RuntimeError("the episode is over; call reset()")
        with self._own_rng():
            return self.trainer.apply(action)

    def _finish(self, trained: Trained | None) -> StepResult:
        """The second half of ``reset`` and ``step``: the rest of the epoch's step (training
        too, unless done together with other episodes)."""
        with self._own_rng():
            return self.trainer.train_step(trained)

    def _observe(self, result: StepResult) -> Observation:
        self._tracker_before = json.dumps(self._tracker.state_dict())
        reports = dict(self.model.reports())
        self._last = (result, reports)
        signals = self._tracker.update(
            train_loss=result.train_loss,
            train_accuracy=result.train_accuracy,
            val_loss=result.val_loss,
            val_accuracy=result.val_accuracy,
            reports=reports,
        )
        self._observation = Observation(signals, reports, self.blueprints, self.max_epochs)
        return self._observation

    @property
    def done(self) -> bool:
        """The episode is over: its last epoch trained, or the governor panicked."""
        return self.trainer.done

    def step(self, action: Action) -> Transition:
        """Apply ``action``, train the next epoch, and observe."""
        return step_together([self], [action])[0]

    # ------------------------------------------------------------------------------ resume

    def start_state(self) -> dict[str, Any]:
        """What the next ``reset`` depends on: the episode counter and random state, without
        the current episode (``load_state_dict`` takes it; the next ``reset`` then continues the
        sequence exactly, as from ``state_dict``)."""
        cuda = None if self._cuda_rng is None else self._cuda_rng.clone()
        return {"episode": self.episode, "rng": self._rng.clone(), "cuda_rng": cuda}

    def state_dict(self) -> dict[str, Any]:
        """``start_state``; once an episode started also its model, trainer and tracker, and the
        last observation's inputs, so that a resume continues exactly."""
        state = self.start_state()
        if self._trainer is not None and self._last is not None:
            model = capture_state(self.model)
            state["model"] = {"manifest": json.dumps(model.manifest), "weights": model.weights}
            state["trainer"] = self._trainer.state_dict()
            state["tracker"] = self._tracker_before
            state["last"] = json.dumps(_result_state(self._last[0]))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output (a mid-episode state rebuilds the model exactly).

        Raises:
            KeyError, ValueError, TypeError: for a state that does not fit this episode.
        """
        self.episode = int(state["episode"])
        self._trainer, self._last, self._observation = None, None, None
        self._built = False
        if "model" in state:
            with self._own_rng():
                self._build()  # the architecture; weights and random state come from ``state``
        self._rng = state["rng"].clone()
        cuda = state["cuda_rng"]
        self._cuda_rng = None if cuda is None else cuda.clone()
        if "model" not in state:
            return
        saved = ModelState(json.loads(state["model"]["manifest"]), state["model"]["weights"])
        restore_state(self.model, saved)
        self.trainer.load_state_dict(state["trainer"])
        # The tracker state is the one from before the last epoch was observed: observing that
        # epoch again gives the same signals and tracker state as the interrupted run had.
        self._tracker.load_state_dict(json.loads(state["tracker"]))
        last = json.loads(state["last"])
        self._observe(StepResult(**last, panic=None))


def _train_chunks(episodes: Sequence[Episode], chunk: int) -> list[StepResult]:
    """Finish every episode's step, training each ``chunk`` of them as one grouped computation
    where their models allow (the others train on their own random state)."""
    trained: list[Trained | None] = [None] * len(episodes)
    for start in range(0, len(episodes), chunk):
        part = episodes[start : start + chunk]
        if groupable([e.model for e in part]):  # a grouped pass draws no random numbers
            trained[start : start + len(part)] = train_together([e.trainer for e in part])
    return [e._finish(t) for e, t in zip(episodes, trained, strict=True)]


def reset_together(episodes: Sequence[Episode], chunk: int = 1) -> list[Observation]:
    """``reset`` every episode, training their first epochs together in chunks of ``chunk``.

    Each episode's results are those of its own ``reset`` (up to floating-point summation
    order in a grouped chunk): episodes keep their own random state, data and optimizer.

    Raises:
        ValueError: ``chunk`` is not an integer >= 1 (checked before any episode resets).
    """
    check_int("chunk", chunk)
    for episode in episodes:
        if not episode._built:
            episode.build()
        episode._built = False
    results = _train_chunks(episodes, chunk)
    return [e._observe(r) for e, r in zip(episodes, results, strict=True)]


def step_together(
    episodes: Sequence[Episode], actions: Sequence[Action], chunk: int = 1
) -> list[Transition]:
    """``step`` every episode with its action, training the epochs together in chunks of
    ``chunk`` (see ``reset_together``)."""
    check_int("chunk", chunk)
    befores = [e._last for e in episodes]
    accepted = [e._apply(a) for e, a in zip(episodes, actions, strict=True)]
    results = _train_chunks(episodes, chunk)
    transitions = []
    for e, action, ok, before, result in zip(
        episodes, actions, accepted, befores, results, strict=True
    ):
        observation = e._observe(result)
        assert before is not None and e._last is not None
        transitions.append(Transition(action, ok, before, e._last, observation))
    return transitions


def _result_state(result: StepResult) -> dict[str, Any]:
    """A step's measurements as JSON data (the panic is not kept: a resumed trainer knows
    whether it terminated)."""
    return {f.name: getattr(result, f.name) for f in fields(result) if f.name != "panic"}
