"""``HostTraining.auto_advance``: the engine advances every seed whose next gate passes.

Real episodes of the synthetic task with a scripted controller that only germinates; Kasmina's
gates decide each move (a refusal leaves the seed as it was and draws no random numbers); a
policy's and the random controller's ADVANCE is masked out; ``esper eval --policy`` takes the
setting from the PPO run; a resume cannot change it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch

from conftest import observation
from conftest import seed_report as rep
from esper.cli.main import main
from esper.kasmina import capture_state
from esper.leyline import Action, Op, SeedStage, Topology
from esper.leyline import thresholds as T
from esper.leyline.config import HostTraining
from esper.leyline.events import ActionTaken, EpochCompleted, Event, SeedTransition
from esper.leyline.lifecycle import first_blending_epoch, never_blends
from esper.simic.build import load_policy, policy_training
from esper.simic.env import task_episode
from esper.study.checks import load_data
from esper.study.plan import growth_config, plan
from esper.study.run import read_policy
from esper.study.spec import ppo_config, read_study
from esper.tamiyo import ActionSpace, RandomController
from esper.tasks import resolve_training
from esper.tolaria.engine import Trainer
from esper.tolaria.episode import Episode

SLOT = "mid"
GERMINATE = Action(Op.GERMINATE, slot=SLOT, blueprint="norm", reason="script")
RELAXED = {  # G2's quality thresholds out of the way: a few tiny epochs cannot clear them
    "G2_MIN_PROBE_IMPROVEMENT": -math.inf,
    "GRADIENT_RATIO_HEALTHY_MIN": 0.0,
    "GRADIENT_RATIO_HEALTHY_MAX": math.inf,
}
TINY = ["--batches-per-epoch", "2", "--val-samples", "128"]


@pytest.fixture
def relaxed() -> Iterator[None]:
    with mock.patch.multiple(T, **RELAXED):
        yield


def _episode(auto_advance: bool, epochs: int, events: list[Event]) -> Episode:
    training = resolve_training(
        HostTraining(
            "synthetic",
            epochs=epochs,
            batches_per_epoch=2,
            val_samples=128,
            threads=1,
            auto_advance=auto_advance,
        )
    )
    return task_episode(training, load_data(training), 0, torch.device("cpu"), events.append)


def _germinate_then_wait(episode: Episode) -> list[SeedStage]:
    """Germinate in ``SLOT`` at the first decision, then WAIT: the slot's stage after each
    step."""
    episode.reset()
    stages = []
    action = GERMINATE
    while not episode.done:
        stages.append(episode.step(action).observation.reports[SLOT].stage)
        action = Action(Op.WAIT, reason="script")
    return stages


def _no_randomness(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Check that every ``advance_ready`` call leaves torch's and Python's random states as it
    found them; returns a list that counts the calls."""
    calls: list[int] = []
    real = Trainer.advance_ready

    def checked(self: Trainer) -> None:
        before, py_before = torch.get_rng_state(), random.getstate()
        real(self)
        assert torch.equal(torch.get_rng_state(), before), "auto-advance drew torch randomness"
        assert random.getstate() == py_before, "auto-advance drew Python randomness"
        calls.append(1)

    monkeypatch.setattr(Trainer, "advance_ready", checked)
    return calls


# ------------------------------------------------------------------ the engine


def test_a_seed_germinated_by_the_controller_advances_through_every_gate(
    relaxed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Event] = []
    calls = _no_randomness(monkeypatch)
    stages = _germinate_then_wait(_episode(True, 12, events))
    # Decision k follows epoch k. G1 passes at once: the seed trains from the germinating step.
    # G2 needs G2_MIN_TRAINING_EPOCHS in TRAINING (refused at decisions 2 and 3: the seed stays);
    # G3 needs α at its target (the default tempo: 5 epochs of BLENDING).
    training = 1 + T.G2_MIN_TRAINING_EPOCHS
    holding = training + max(T.DEFAULT_BLEND_TEMPO, T.G3_MIN_BLENDING_EPOCHS)
    expected = (
        [SeedStage.TRAINING] * (training - 1)
        + [SeedStage.BLENDING] * (holding - training)
        + [SeedStage.HOLDING] * (12 - holding)
    )
    assert stages == expected
    moves = [e for e in events if isinstance(e, SeedTransition)]
    assert [(m.epoch, m.from_stage, m.to_stage, m.reason) for m in moves] == [
        (1, "DORMANT", "GERMINATED", "germinate norm"),
        (1, "GERMINATED", "TRAINING", "auto-advance (G1)"),
        (training, "TRAINING", "BLENDING", "auto-advance (G2)"),
        (holding, "BLENDING", "HOLDING", "auto-advance (G3)"),
    ]
    actions = [e for e in events if isinstance(e, ActionTaken)]
    assert [a.op for a in actions] == ["GERMINATE"] + ["WAIT"] * 10  # only the controller's
    assert len(calls) == 11  # once per decision, each without drawing random numbers


def test_the_first_epoch_a_seed_can_blend_in_is_what_the_notes_say(relaxed: None) -> None:
    """``first_blending_epoch`` (esper ppo's and eval's note on episodes too short to blend)
    against the engine: germinate at the first decision, then ADVANCE at every one (without
    auto-advance) or WAIT (with it), G2's quality thresholds out of the way."""
    for auto_advance in (True, False):
        episode = _episode(auto_advance, 9, [])
        episode.reset()
        stages, action = [], GERMINATE
        while not episode.done:  # decision k follows epoch k: its step trains epoch k + 1
            stages.append(episode.step(action).observation.reports[SLOT].stage)
            wait = Action(Op.WAIT, reason="script")
            action = wait if auto_advance else Action(Op.ADVANCE, slot=SLOT, reason="script")
        assert stages.index(SeedStage.BLENDING) + 2 == first_blending_epoch(auto_advance)
    assert never_blends(first_blending_epoch(False), False) is None
    note = never_blends(5, False)
    assert note is not None and note.startswith("episodes of 5 epochs are too short for any")
    assert never_blends(5, True) is None  # epoch 5 can blend, with auto-advance


def test_without_auto_advance_the_seed_stays_germinated(relaxed: None) -> None:
    events: list[Event] = []
    assert _germinate_then_wait(_episode(False, 5, events)) == [SeedStage.GERMINATED] * 4
    moves = [e.reason for e in events if isinstance(e, SeedTransition)]
    assert moves == ["germinate norm"]


def test_a_refusing_gate_leaves_the_seed_unchanged() -> None:
    """A seed in TRAINING for fewer than G2_MIN_TRAINING_EPOCHS: G2 refuses, nothing changes
    (stage, α plan, measurements, weights, optimizer, random state) and nothing is logged."""
    events: list[Event] = []
    episode = _episode(True, 4, events)
    episode.reset()
    episode.step(GERMINATE)  # -> GERMINATED -> TRAINING (G1), then one epoch of training
    trainer, slot = episode.trainer, episode.model.slot(SLOT)
    assert slot.stage is SeedStage.TRAINING and slot.epochs_in_stage < T.G2_MIN_TRAINING_EPOCHS
    before = capture_state(episode.model)
    groups = trainer.optimizer.group_names()
    rng = torch.get_rng_state()
    logged = len(events)
    trainer.advance_ready()
    after = capture_state(episode.model)
    assert after.manifest == before.manifest and slot.stage is SeedStage.TRAINING
    assert after.weights.keys() == before.weights.keys()
    assert all(torch.equal(after.weights[k], w) for k, w in before.weights.items())
    assert trainer.optimizer.group_names() == groups
    assert torch.equal(torch.get_rng_state(), rng)
    assert len(events) == logged


def test_auto_advance_changes_nothing_before_a_seed_blends(monkeypatch) -> None:
    """In TRAINING a seed leaves the output unchanged, so until BLENDING an auto-advanced run
    measures exactly what a run whose seed waits in GERMINATED measures: the advances draw no
    random numbers and leave the data order alone."""

    def losses(auto_advance: bool) -> list[tuple[float, float]]:
        events: list[Event] = []
        episode = _episode(auto_advance, 4, events)  # strict gates: G2 cannot pass by epoch 4
        _germinate_then_wait(episode)
        return [(e.train_loss, e.val_loss) for e in events if isinstance(e, EpochCompleted)]

    calls = _no_randomness(monkeypatch)
    assert losses(True) == losses(False)
    assert len(calls) == 3


# ------------------------------------------------------------------ masks


def test_the_action_space_masks_advance_iff_auto_advance() -> None:
    live = observation(
        [rep("early", SeedStage.GERMINATED), rep("mid", SeedStage.TRAINING, epochs=4)]
    )
    manual, auto = ActionSpace(Topology.CNN), ActionSpace(Topology.CNN, auto_advance=True)
    assert manual.head_sizes == auto.head_sizes  # the op stays in the head
    advance = manual.ops.index(Op.ADVANCE)
    off, on = manual.masks(live), auto.masks(live)
    assert off.op[advance] and off.slot[advance].any()
    assert not on.op[advance] and not on.slot[advance].any()
    others = [k for k in range(len(manual.ops)) if k != advance]
    assert torch.equal(off.op[others], on.op[others])
    assert torch.equal(off.slot[others], on.slot[others])

    controller = RandomController(Topology.CNN, seed=0, auto_advance=True)
    drawn = {controller.decide(live).op for _ in range(200)}
    assert Op.ADVANCE not in drawn and Op.GERMINATE in drawn


# ------------------------------------------------------------------ commands


def test_eval_of_an_auto_advance_policy_runs_with_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ppo = tmp_path / "ppo"
    argv = ["ppo", "--preset", "tiny", "--ppo.rounds", "1", "--auto-advance", "--out", str(ppo)]
    assert main(argv) == 0
    assert json.loads((ppo / "config.json").read_text())["env"]["auto_advance"] is True
    decisions = _events(ppo, "PolicyDecision")
    assert decisions and all("ADVANCE" not in d["valid_ops"] for d in decisions)
    assert not [a for a in _events(ppo, "ActionTaken") if a["op"] == "ADVANCE"]

    capsys.readouterr()
    out = tmp_path / "eval"
    held_out = ["--seed", "5"]  # not a training environment's seed (refused)
    assert (
        main(["eval", "--policy", str(ppo), "--epochs", "3", *TINY, *held_out, "--out", str(out)])
        == 0
    )
    assert json.loads((out / "config.json").read_text())["training"]["auto_advance"] is True
    err = capsys.readouterr().err
    assert "auto_advance = true" in err
    assert "note: episodes of 3 epochs are too short for any seed to blend in (with auto-adv" in err
    assert err.count("note:") == 1
    state = read_policy(ppo).state
    assert policy_training(state).auto_advance is True
    controller = load_policy(state, Topology.CNN, auto_advance=True)
    live = observation([rep("mid", SeedStage.TRAINING, epochs=4)])
    assert not controller.space.masks(live).op[controller.space.ops.index(Op.ADVANCE)]

    # Overridden: it runs as told, and says the policy trained otherwise.
    out = tmp_path / "manual"
    args = ["eval", "--policy", str(ppo), "--no-auto-advance", "--epochs", "2", *TINY, *held_out]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["training"]["auto_advance"] is False
    err = capsys.readouterr().err
    assert "auto_advance = false" in err
    assert "note: the policy trained with auto_advance = true" in err


def _events(run: Path, kind: str) -> list[dict]:
    lines = (run / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_a_resume_refuses_to_change_it(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = ["random", "--task", "synthetic", "--epochs", "3", "--auto-advance", *TINY]
    assert main([*args, "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["training"]["auto_advance"] is True
    capsys.readouterr()
    for command in ("random", "ppo"):
        assert main([command, "--resume", str(run), "--no-auto-advance"]) == 2
        assert "drop --no-auto-advance" in capsys.readouterr().err
    static = ["static", "--task", "synthetic", "--auto-advance", "--out", str(tmp_path / "s")]
    assert main(static) == 2
    assert "a static run grows nothing; drop --[no-]auto-advance (training.auto_advance" in (
        capsys.readouterr().err
    )


def test_a_study_budget_turns_it_on_for_every_arm(tmp_path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(
        'out = "out"\ntasks = ["synthetic"]\nseeds = 2\n'
        "[budget]\nepochs = 4\nauto_advance = true\n"
        '[[arms]]\nname = "random"\ncontroller = "random"\n'
        '[[arms]]\nname = "ppo"\ncontroller = "ppo"\npreset = "tiny"\ntraining_seeds = [100]\n'
    )
    spec, _ = read_study(path)
    growth = [t for t in plan(spec) if t.arm == "random"]
    assert all(growth_config(spec, t)[1].training.auto_advance for t in growth)
    assert ppo_config(spec, spec.arm("ppo"), "synthetic", 100).env.auto_advance
