"""The PPO learner and trainer: normalizer discipline, diagnostics, gates, resume."""

from __future__ import annotations

import io
import math
from dataclasses import fields, replace

import pytest
import torch

from esper.leyline.config import override
from esper.leyline.events import PPOUpdate, TelemetryLevel, event_record
from esper.nissa import TelemetryHub
from esper.simic import training
from esper.simic.acting import RoundPolicy
from esper.simic.anomaly import ESCALATION_ROUNDS, Anomaly, detect_anomalies
from esper.simic.build import (
    PolicyCheckpointError,
    build_trainer,
    check_resumable,
    load_policy,
    policy_training,
    trainer_state,
)
from esper.simic.config import TrainingConfig, load_preset
from esper.simic.ppo import PPOLearner, UpdateResult
from esper.simic.rollout import RolloutBatch
from esper.simic.training import PPOTrainer
from esper.simic.vector import VectorEnv
from esper.study.checks import load_data
from standin import PlateauEnv, StandInConfig, standin_trainer


class ListSink:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass

    def named(self, name: str) -> list[dict]:
        return [r for r in self.records if r["event"] == name]


def _standin_trainer(ppo: dict | None = None, n: int = 4, hub: TelemetryHub | None = None):
    config = override(
        TrainingConfig(),
        {"policy": {"hidden": 16, "lstm_hidden": 16}, "ppo": {"n_envs": n, **(ppo or {})}},
    )
    envs = [PlateauEnv(StandInConfig(episode_length=6, plateau_latest=4), seed=i) for i in range(n)]
    hub = hub or TelemetryHub("t", [])
    return standin_trainer(config, envs, hub)


def _capture_batches(trainer: PPOTrainer) -> list[RolloutBatch]:
    batches: list[RolloutBatch] = []
    update = trainer.learner.update

    def spy(batch: RolloutBatch) -> UpdateResult:
        batches.append(batch)
        return update(batch)

    trainer.learner.update = spy  # type: ignore[method-assign]
    return batches


def test_normalizer_updates_once_per_rollout_batch() -> None:
    trainer = _standin_trainer({"ppo_epochs": 4, "minibatches": 2})
    for _ in range(3):
        trainer.run_round()
    assert trainer.normalizer.update_count == 3  # not 3 × 4 passes × 2 minibatches
    assert trainer.normalizer.count == 3 * 4 * 5  # every real step of every env, once


def test_buffer_holds_exactly_the_observations_the_policy_acted_on() -> None:
    trainer = _standin_trainer()
    trainer.run_round()  # statistics now differ from the initial (0, 1)
    seen: list[torch.Tensor] = []
    act = trainer.network.act

    def spy(obs, *args, **kwargs):
        seen.append(obs.clone())
        return act(obs, *args, **kwargs)

    trainer.network.act = spy  # type: ignore[method-assign]
    batches = _capture_batches(trainer)
    trainer.run_round()
    n, steps = 4, 5  # every stand-in episode lasts 5 steps: no padding
    assert all(obs.shape[0] == 1 for obs in seen)  # the policy acts for one environment at a time
    acted = torch.cat(seen).view(steps, n, -1).transpose(0, 1)  # acted step by step: (N, T, D)
    assert torch.equal(batches[0].obs, acted)
    assert trainer.normalizer.update_count == 2  # updated after the round, not during it


def test_an_environments_episode_does_not_depend_on_its_neighbours() -> None:
    """The policy acts for each environment alone, from a generator of its own (seeded by the
    round and the environment's index): environment 2 run alone, as a Ray actor's chunk or a
    revived actor would run it, gives the episode it has beside three others, bit for bit."""
    trainer = _standin_trainer()
    trainer.run_round()  # a policy and observation statistics past their initial values
    policy = RoundPolicy(
        round=2,
        seed=trainer.policy_seed,
        network=trainer.network,
        normalizer=trainer.normalizer,
        space=trainer.space,
        slot_telemetry=trainer.telemetry,
        decisions=False,
    )

    def envs(*seeds: int) -> list[PlateauEnv]:
        return [
            PlateauEnv(StandInConfig(episode_length=6, plateau_latest=4), seed=i) for i in seeds
        ]

    cpu, emit = torch.device("cpu"), TelemetryHub("t", []).emit
    together = VectorEnv(envs(0, 1, 2, 3), [cpu] * 4, emit).collect(policy)[2]
    alone = VectorEnv(envs(2), [cpu], emit, indices=[2]).collect(policy)[0]
    for name in ("raw", "obs", "actions", "log_prob", "values", "rewards"):
        assert torch.equal(getattr(together, name), getattr(alone, name)), name
    assert (together.bootstrap, together.terminated) == (alone.bootstrap, alone.terminated)


def test_a_format_2_checkpoint_evaluates_but_does_not_resume() -> None:
    """Format 3 stores no acting generator (each round derives its own): a format-2 run would
    resume with other draws than it started with, so it is refused; its policy still loads."""
    trainer = _standin_trainer()
    trainer.run_round()
    state = trainer_state(trainer)
    check_resumable(state)  # this version's own
    old = {**state, "format": 2}
    with pytest.raises(PolicyCheckpointError, match=r"format 2, .* resumes format 3 only"):
        check_resumable(old)
    controller = load_policy(old, trainer.topology, auto_advance=False)
    weights = controller.network.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in trainer.network.state_dict().items())


@pytest.mark.parametrize("part", ["policy", "normalizer"])
def test_a_policy_with_non_finite_weights_is_refused(part: str) -> None:
    """A NaN policy chose WAIT at every step with no probability or value to show (an eval of
    it finished as if nothing were wrong)."""
    trainer = _standin_trainer()
    trainer.run_round()
    state = trainer_state(trainer)
    load_policy(state, trainer.topology, auto_advance=False)  # finite: loads
    if part == "policy":
        weights = {k: v.clone() for k, v in state["trainer"]["policy"].items()}
        next(iter(weights.values())).view(-1)[0] = float("nan")
    else:
        weights = dict(state["trainer"]["normalizer"])
        weights["var"] = [math.inf, *weights["var"][1:]]
    bad = {**state, "trainer": {**state["trainer"], part: weights}}
    why = r"not finite .* training diverged" if part == "policy" else r"damaged .* must be finite"
    with pytest.raises(PolicyCheckpointError, match=why):
        load_policy(bad, trainer.topology, auto_advance=False)


def test_forced_ratio_explosion_yields_the_diagnostic_and_escalates() -> None:
    sink = ListSink()
    hub = TelemetryHub("t", [sink], TelemetryLevel.NORMAL)
    trainer = _standin_trainer(
        {"lr": 0.5, "ppo_epochs": 8, "target_kl": 1e6, "ratio_explosion": 1.5}, hub=hub
    )
    result = trainer.run_round()
    diagnostic = result.diagnostic
    assert diagnostic is not None
    assert diagnostic.ratio_max > 1.5 and diagnostic.steps > 0
    assert diagnostic.step_indices  # which (env, t) steps exploded: real steps of the round
    assert all(0 <= e < 4 and 0 <= t < 5 for e, t in diagnostic.step_indices)
    assert diagnostic.heads and set(diagnostic.heads) <= set(
        ("op", "slot", "blueprint", "tempo", "alpha_target")
    )
    [event] = sink.named("RatioExplosion")
    assert event["heads"] == list(diagnostic.heads) and event["steps"] == diagnostic.steps
    [anomaly] = sink.named("AnomalyDetected")
    assert "ratio_explosion" in anomaly["kinds"] and anomaly["escalated_to"] == "debug"
    assert hub.level is TelemetryLevel.DEBUG
    assert len(sink.named("PPOHeadStats")) == 5  # debug detail is written while escalated


def test_escalation_lasts_its_rounds_and_survives_a_resume(monkeypatch) -> None:
    forced = iter([Anomaly(("entropy_collapse",), "forced")])  # round 1 only
    monkeypatch.setattr(training, "detect_anomalies", lambda stats, limit: next(forced, None))
    levels: list[TelemetryLevel] = []
    hub = TelemetryHub("t", [])
    hub.set_level = levels.append  # type: ignore[method-assign]
    trainer = _standin_trainer(hub=hub)
    trainer.run_round()
    trainer.run_round()
    resumed = _standin_trainer(hub=hub)
    resumed.load_state_dict(trainer.state_dict())  # the escalation is the trainer's state
    for _ in range(ESCALATION_ROUNDS):
        resumed.run_round()
    normal, debug = TelemetryLevel.NORMAL, TelemetryLevel.DEBUG
    # round 1 starts at the configured level and escalates on its anomaly (its head statistics
    # are written); rounds 2-4 stay at DEBUG, round 5 is back at the configured level
    assert levels == [normal, debug, debug, debug, debug, normal]


def test_every_ppo_update_field_is_written() -> None:
    sink = ListSink()
    trainer = _standin_trainer(hub=TelemetryHub("t", [sink], TelemetryLevel.MINIMAL))
    trainer.run_round()
    result = trainer.run_round()
    [_, logged] = sink.named("PPOUpdate")
    assert logged == {"t": logged["t"], "run_id": "t", **event_record(result.stats)}
    unmeasured = [name for name, value in logged.items() if value is None]
    assert unmeasured == [], unmeasured  # a healthy round measures every statistic
    assert logged["round"] == 2 and logged["env_steps"] == trainer.learner.env_steps == 2 * 4 * 5
    assert logged["mean_return"] == pytest.approx(sum(result.episode_returns) / 4)
    accuracies = [env.episode_info().final_val_accuracy or math.nan for env in trainer.vec.envs]
    assert logged["mean_final_accuracy"] == pytest.approx(sum(accuracies) / 4)
    assert set(logged) - {"t", "run_id", "event"} == {f.name for f in fields(PPOUpdate)}


def test_head_stats_are_debug_only() -> None:
    sink = ListSink()
    trainer = _standin_trainer(hub=TelemetryHub("t", [sink], TelemetryLevel.NORMAL))
    result = trainer.run_round()
    assert result.anomaly is None
    assert sink.named("PPOUpdate") and not sink.named("PPOHeadStats")


def test_non_finite_update_is_skipped_not_applied() -> None:
    trainer = _standin_trainer()
    batches = _capture_batches(trainer)
    trainer.run_round()
    before = [p.detach().clone() for p in trainer.network.parameters()]
    poisoned = replace(batches[0], returns=torch.full_like(batches[0].returns, math.nan))
    stats = trainer.learner.update(poisoned).stats
    assert stats.skipped_steps == stats.passes * trainer.config.ppo.minibatches
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))
    assert "non_finite" in detect_anomalies(stats, 5.0).kinds  # type: ignore[union-attr]


def test_target_kl_stops_the_passes_early() -> None:
    """The first minibatch measures KL 0 (nothing stepped yet) and steps; the next measures
    more than 1e-12 and stops: one pass took a step (a pass stopped before stepping counted)."""
    trainer = _standin_trainer({"ppo_epochs": 6, "target_kl": 1e-12, "lr": 1e-2})
    trainer.run_round()
    stats = trainer.run_round().stats
    assert stats.early_stopped and stats.passes == 1


def test_approx_kl_and_clip_fraction_are_the_updated_policys() -> None:
    """Both are recomputed here from the updated network on the whole batch (Schulman's k3
    estimator; the clip range): the logged means of the minibatches, each measured before its
    own step from the first (always 0) on, understated the update about 4x (an audit)."""
    trainer = _standin_trainer({"ppo_epochs": 4, "minibatches": 2, "lr": 3e-3})
    batches = _capture_batches(trainer)
    trainer.run_round()
    stats = trainer.run_round().stats
    batch, net = batches[-1], trainer.network
    with torch.no_grad():
        ev = net.evaluate(batch.obs, batch.masks, batch.actions, batch.state, batch.episode_start)
    r = (ev.log_prob - batch.log_prob)[batch.valid].double().exp()
    kl = float(((r - 1) - r.log()).mean())
    clipped = float(((r - 1).abs() > trainer.config.ppo.clip_ratio).double().mean())
    assert stats.approx_kl == pytest.approx(kl, rel=1e-4) and kl > 0
    assert stats.clip_fraction == pytest.approx(clipped, abs=1e-6) and clipped > 0


def test_entropy_weight_anneals_in_environment_steps() -> None:
    config = override(
        TrainingConfig(),
        {"ppo": {"entropy_coef": 0.1, "entropy_coef_final": 0.0, "entropy_anneal_steps": 100}},
    )
    trainer = _standin_trainer()
    learner = PPOLearner(trainer.network, config.ppo, False, torch.Generator())
    assert learner.entropy_coef() == pytest.approx(0.1)
    learner.env_steps = 50
    assert learner.entropy_coef() == pytest.approx(0.05)
    learner.env_steps = 1000
    assert learner.entropy_coef() == 0.0


@pytest.mark.parametrize("normalize", [True, False])
def test_advantages_are_normalized_only_when_asked(normalize: bool) -> None:
    trainer = _standin_trainer({"normalize_advantages": normalize, "ppo_epochs": 1})
    batches = _capture_batches(trainer)
    seen: list[torch.Tensor] = []
    loss = trainer.learner._minibatch_loss

    def spy(mb, adv, entropy_coef):
        seen.append(adv[mb.valid])
        return loss(mb, adv, entropy_coef)

    trainer.learner._minibatch_loss = spy  # type: ignore[method-assign]
    trainer.run_round()
    raw = batches[0].advantages[batches[0].valid].double()
    expected = (raw - raw.mean()) / raw.std(unbiased=False) if normalize else raw
    # one minibatch holding every environment, in a shuffled order: compare as multisets
    got = seen[0].double().sort().values
    torch.testing.assert_close(got, expected.sort().values, rtol=1e-5, atol=1e-6)
    assert abs(raw.mean().item()) > 1e-3  # raw advantages are not centred: the two cases differ


def test_anomaly_kinds() -> None:
    trainer = _standin_trainer()
    healthy = trainer.run_round().stats
    assert detect_anomalies(healthy, 5.0) is None
    cases = {
        "ratio_explosion": {"ratio_max": 9.0},
        "ratio_collapse": {"ratio_min": 0.01},
        "entropy_collapse": {"entropy": 0.001},
        "value_collapse": {"value_std": 0.0, "return_std": 1.0},
        "non_finite": {"skipped_steps": 2},
    }
    for kind, change in cases.items():
        anomaly = detect_anomalies(replace(healthy, **change), 5.0)
        assert anomaly is not None and anomaly.kinds == (kind,), kind
    for name in ("ratio_max", "ratio_min", "entropy", "value_std"):  # NaN failed every test
        anomaly = detect_anomalies(replace(healthy, **{name: math.nan}), 5.0)
        assert anomaly is not None and anomaly.kinds == ("non_finite",), name
        assert anomaly.detail == f"{name} NaN"
    # The numbers in the detail tell the ratio from its threshold ("max ratio 1 > 1.0001").
    close = detect_anomalies(replace(healthy, ratio_max=1.0002, ratio_min=1.0), 1.0001)
    assert close is not None and close.kinds == ("ratio_explosion",)
    assert close.detail.startswith("max ratio 1.0002 > 1.0001")
    low = detect_anomalies(replace(healthy, ratio_max=1.0, ratio_min=0.5), 1.5)
    assert low is not None and low.detail.startswith("min ratio 0.5 < 0.666667")
    # The limit as set: "max ratio 1.001 > 1" named a limit of 1.0001 as 1.
    far = detect_anomalies(replace(healthy, ratio_max=1.001, ratio_min=0.997), 1.0001)
    assert far is not None and far.detail == "max ratio 1.001 > 1.0001; min ratio 0.997 < 0.9999"
    # A value between the limit and its 6-digit form: the limit gets the digits to tell them.
    near = detect_anomalies(replace(healthy, ratio_max=1.0, ratio_min=0.999900005), 1.0001)
    assert near is not None and near.detail == "min ratio 0.9999 < 0.99990001"
    for threshold in (0.0, 1.0, math.nan, -1.0):  # 0 divided by zero, -1 always fired
        with pytest.raises(ValueError, match=r"ratio_explosion must be a number in \(1\.0, "):
            detect_anomalies(healthy, threshold)


def test_an_update_refuses_fewer_environments_than_minibatches() -> None:
    """An empty minibatch's NaN loss was counted as a skipped non-finite step."""
    trainer = _standin_trainer({"minibatches": 4})
    batches = _capture_batches(trainer)
    trainer.run_round()
    three = batches[0].select(torch.arange(3))
    with pytest.raises(ValueError, match=r"batch of 3 environments .* ppo.minibatches = 4"):
        trainer.learner.update(three)


def test_a_loaded_learner_shares_no_optimizer_state_with_its_source() -> None:
    """torch's optimizer kept the given moment tensors: two learners updated each other's."""
    trainer = _standin_trainer()
    batches = _capture_batches(trainer)
    trainer.run_round()
    source = trainer.learner.state_dict()
    twin = _standin_trainer()
    twin.learner.load_state_dict(source)
    kept = {k: v.clone() for k, v in twin.learner.optimizer.state_dict()["state"][0].items()}
    trainer.learner.update(batches[0])  # moves the source's moments
    after = twin.learner.optimizer.state_dict()["state"][0]
    assert all(torch.equal(kept[k], after[k]) for k in kept)


def _tiny_trainer(hub: TelemetryHub) -> PPOTrainer:
    config = load_preset("tiny").resolved()
    trainer, _ = build_trainer(config, hub, load_data(config.env))
    return trainer


def test_resume_continues_exactly() -> None:
    straight = _tiny_trainer(TelemetryHub("a", []))
    straight.run_round()
    straight_second = straight.run_round()

    first = _tiny_trainer(TelemetryHub("b", []))
    first.run_round()
    buffer = io.BytesIO()  # a checkpoint's state.pt, as the run record writes it
    torch.save(trainer_state(first), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert policy_training(state) == first.config.env
    resumed = _tiny_trainer(TelemetryHub("c", []))
    resumed.load_state_dict(state["trainer"])
    resumed_second = resumed.run_round()

    assert resumed_second.episode_returns == straight_second.episode_returns
    assert resumed_second.stats.policy_loss == straight_second.stats.policy_loss
    for a, b in zip(straight.network.parameters(), resumed.network.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight.normalizer.mean, resumed.normalizer.mean)
    assert straight.learner.env_steps == resumed.learner.env_steps


def test_every_minibatch_count_is_honoured() -> None:
    trainer = _standin_trainer({"minibatches": 4, "ppo_epochs": 1, "target_kl": 1e6}, n=5)
    calls = []
    evaluate = trainer.network.evaluate

    def spy(obs, *args, **kwargs):
        calls.append(obs.shape[0])
        return evaluate(obs, *args, **kwargs)

    trainer.network.evaluate = spy  # type: ignore[method-assign]
    trainer.run_round()
    # between the passes over all 5 before and after the update: 5 envs in 4 groups
    assert calls[0] == calls[-1] == 5 and sorted(calls[1:-1]) == [1, 1, 1, 2]
