"""Fused counterfactual forward, contributions, exact Shapley values, and seed reports."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import cnn_host, expected_output, grow, host_input, host_target, transformer_host
from esper.kasmina import MorphogeneticModel, per_sample_accuracy, shapley_from_coalitions
from esper.kasmina.errors import GateError
from esper.leyline import GateMode, SeedStage


def neg_loss(output: Tensor, target: Tensor) -> Tensor:
    """A smooth per-sample metric (higher is better), so comparisons need no argmax ties."""
    loss = F.cross_entropy(output.flatten(0, -2), target.flatten(), reduction="none")
    return -loss.view(target.shape[0], -1).mean(dim=1)


def _grown(make, gated: bool = False) -> MorphogeneticModel:
    host = make()
    model = MorphogeneticModel(host, ["early", "mid", "late"])
    cnn = host.kind == "cnn"
    blend = "gated" if gated else "add"
    grow(
        model,
        "early",
        "conv_light" if cnn else "lora",
        SeedStage.BLENDING,
        alpha=0.3,
        blend_mode=blend,
    )
    grow(model, "mid", "attention", SeedStage.HOLDING, alpha=0.7)
    grow(
        model,
        "late",
        "bottleneck" if cnn else "mlp",
        SeedStage.FOSSILIZED,
        alpha=1.0,
        blend_mode=blend,
    )
    return model.eval()


def _fused(model: MorphogeneticModel, x: Tensor, configs: list[dict], path: str) -> Tensor:
    """Either evaluation path; the public method picks by device (tiled only on CUDA)."""
    if path == "public":
        return model.fused_forward(x, configs)
    resolved = [model._resolve(c) for c in configs]
    return model._fused_tiled(x, resolved) if path == "tiled" else model._fused_shared(x, resolved)


@pytest.mark.parametrize("path", ["public", "shared", "tiled"])
@pytest.mark.parametrize("make", [cnn_host, transformer_host], ids=["cnn", "transformer"])
@pytest.mark.parametrize("gated", [False, True])
def test_fused_forward_equals_separate_forwards(make, gated: bool, path: str) -> None:
    model = _grown(make, gated)
    x = host_input(model.host, batch=6)
    configs = [
        {},
        {"early": 0.0},
        {"mid": 0.0, "late": 0.25},
        {"early": 1.0, "mid": 1.0, "late": 0.0},
    ]
    with torch.no_grad():
        fused = _fused(model, x, configs, path)
        assert fused.shape == (len(configs), *model(x).shape)
        for k, config in enumerate(configs):
            torch.testing.assert_close(
                fused[k], expected_output(model, x, config), rtol=1e-5, atol=1e-5
            )
        torch.testing.assert_close(fused[0], model(x), rtol=1e-5, atol=1e-5)


def test_shared_path_is_bit_exact() -> None:
    """On the CPU path each configuration runs the very ops of a plain forward."""
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    grow(model, "early", "conv_light", SeedStage.TRAINING)
    grow(model, "late", "conv_light", SeedStage.HOLDING, alpha=0.5)
    model.eval()
    x = host_input(model.host, batch=8)
    with torch.no_grad():
        fused = model.fused_forward(x, [{}, {"late": 0.0}])
        assert torch.equal(fused[0], model(x))
        model.slot("late").alpha = 0.0  # the same configuration, set on the model itself
        assert torch.equal(fused[1], model(x))


def test_fused_forward_with_identical_configs_runs_once() -> None:
    model = _grown(cnn_host)
    x = host_input(model.host)
    with torch.no_grad():
        fused = model.fused_forward(x, [{}, {"mid": 0.7}])  # 0.7 is mid's current α
    assert torch.equal(fused[0], fused[1])


def test_fused_forward_probes_training_seed() -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    grow(model, "mid", "conv_heavy", SeedStage.TRAINING)
    model.eval()
    x = host_input(model.host)
    with torch.no_grad():
        fused = model.fused_forward(x, [{}, {"mid": 1.0}])
        assert torch.equal(fused[0], model.host(x))
        torch.testing.assert_close(
            fused[1], expected_output(model, x, {"mid": 1.0}), rtol=1e-5, atol=1e-6
        )


def test_fused_forward_rejects_bad_requests() -> None:
    model = _grown(cnn_host)
    x = host_input(model.host)
    model.train()
    with pytest.raises(RuntimeError, match=r"needs model.eval\(\)"):
        model.fused_forward(x, [{}])
    model.eval()
    with pytest.raises(ValueError, match=r"unknown slot 'middle'"):
        model.fused_forward(x, [{"middle": 0.5}])
    with pytest.raises(ValueError, match=r"must be a number in \[0, 1\], got 1.5"):
        model.fused_forward(x, [{"mid": 1.5}])
    # These were taken as 1.0, or ended in AttributeErrors and comparison TypeErrors.
    for alpha in (True, "0.5", None):
        with pytest.raises(ValueError, match=rf"must be a number in \[0, 1\], got {alpha!r}"):
            model.fused_forward(x, [{"mid": alpha}])
    with pytest.raises(TypeError, match=r"a sequence of \{slot: α\} mappings.*got \{'mid': 0.5\}"):
        model.fused_forward(x, {"mid": 0.5})
    with pytest.raises(TypeError, match="a sequence of"):
        model.fused_forward(x, ["mid"])
    generated = model.fused_forward(x, ({"mid": a} for a in (0.0, 1.0)))  # was used up: none
    torch.testing.assert_close(generated, model.fused_forward(x, [{"mid": 0.0}, {"mid": 1.0}]))
    model.prune("early")
    with pytest.raises(ValueError, match="slot 'early' is PRUNED"):
        model.fused_forward(x, [{"early": 0.5}])


def _coalition_value(
    model: MorphogeneticModel, x: Tensor, y: Tensor, members: set[str], players: list[str]
) -> float:
    alphas = {p: (model.slot(p).alpha if p in members else 0.0) for p in players}
    with torch.no_grad():
        return neg_loss(expected_output(model, x, alphas), y).mean().item()


def test_shapley_equals_brute_force_definition() -> None:
    model = _grown(cnn_host)
    x, y = host_input(model.host, batch=16), host_target(model.host, batch=16)
    players = ["early", "mid", "late"]
    # Definition: average marginal contribution over all orderings of the players.
    brute = dict.fromkeys(players, 0.0)
    orderings = list(itertools.permutations(players))
    for order in orderings:
        members: set[str] = set()
        for p in order:
            before = _coalition_value(model, x, y, members, players)
            members.add(p)
            brute[p] += (_coalition_value(model, x, y, members, players) - before) / len(orderings)
    ours = model.shapley_values([(x, y)], metric=neg_loss)
    assert list(ours) == players
    for p in players:
        assert ours[p] == pytest.approx(brute[p], abs=1e-5)
    assert model.reports()["mid"].shapley_value == pytest.approx(brute["mid"], abs=1e-5)


def test_shapley_formula_matches_permutations_on_random_games() -> None:
    rng = random.Random(3)
    for n in range(1, 6):
        values = [rng.uniform(-1, 1) for _ in range(1 << n)]
        phi = shapley_from_coalitions(values, n)
        brute = [0.0] * n
        perms = list(itertools.permutations(range(n)))
        for perm in perms:
            mask = 0
            for i in perm:
                brute[i] += (values[mask | 1 << i] - values[mask]) / len(perms)
                mask |= 1 << i
        assert phi == pytest.approx(brute, abs=1e-12)
        assert sum(phi) == pytest.approx(values[-1] - values[0], abs=1e-12)  # efficiency


def test_shapley_refuses_more_than_four_seeds() -> None:
    host = cnn_host(depth=5, n_points=5, input_size=32)
    names = [s.slot for s in host.injection_points]
    model = MorphogeneticModel(host, names)
    for name in names:
        grow(model, name, "norm", SeedStage.HOLDING, alpha=0.5)
    x, y = host_input(host, 2), host_target(host, 2)
    with pytest.raises(ValueError, match="5 blended seeds exceed MAX_EXACT_SHAPLEY_SEEDS=4"):
        model.shapley_values([(x, y)])


def test_contributions_match_ablation_oracle() -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    grow(model, "early", "conv_light", SeedStage.TRAINING)
    grow(model, "mid", "conv_light", SeedStage.HOLDING, alpha=0.7)
    grow(model, "late", "norm", SeedStage.FOSSILIZED, alpha=1.0)
    batches = [(host_input(model.host, 8), host_target(model.host, 8)) for _ in range(3)]
    model.train()
    result = model.measure_contributions(batches, metric=neg_loss)
    assert model.training, "the model returns to train mode afterwards"
    model.eval()

    def score(alphas: dict[str, float]) -> float:
        with torch.no_grad():
            total = sum(
                neg_loss(expected_output(model, x, alphas), y).sum().item() for x, y in batches
            )
        return total / sum(len(y) for _, y in batches)

    assert list(result) == ["early", "mid", "late"]
    assert result["early"] == pytest.approx(score({"early": 1.0}) - score({}), abs=1e-5)  # probe
    assert result["mid"] == pytest.approx(score({}) - score({"mid": 0.0}), abs=1e-5)
    assert result["late"] == pytest.approx(score({}) - score({"late": 0.0}), abs=1e-5)


def test_accuracy_metric() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert per_sample_accuracy(logits, torch.tensor([0, 1, 1])).tolist() == [100.0, 100.0, 0.0]
    seq = torch.zeros(2, 4, 3)
    seq[..., 1] = 1.0  # always predicts token 1
    target = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert per_sample_accuracy(seq, target).tolist() == [50.0, 100.0]


def test_accuracy_refuses_targets_of_another_shape_and_scores_non_finite_logits_nan() -> None:
    """A ``(B, 1)`` target broadcast against ``(B,)`` predictions into a ``(B, B)`` table: every
    sample of a perfectly predicted batch scored 50. NaN logits scored ``argmax``'s pick (class
    0), so a seed that overflowed the output could be credited with accuracy."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"shaped like the logits .* \(4,\); got \(4, 1\)"):
        per_sample_accuracy(logits, y[:, None])
    # Labels no class can have scored 0 for every model, so a contribution came out 0.
    for bad, message in [
        (torch.tensor([0, 1, 2, 1]), r"class indices in \[0, 2\), got 0 to 2"),
        (torch.tensor([0, -1, 0, 1]), r"class indices in \[0, 2\), got -1 to 1"),
        (y.float(), "class indices \\(an integer tensor\\), got torch.float32"),
        (y.bool(), "class indices \\(an integer tensor\\), got torch.bool"),
    ]:
        with pytest.raises(ValueError, match=message):
            per_sample_accuracy(logits, bad)
    logits[1, 0] = float("nan")
    logits[2, 1] = float("inf")
    scores = per_sample_accuracy(logits, y)
    assert scores[0] == 100.0 and scores[3] == 100.0
    assert scores[1].isnan() and scores[2].isnan()
    seq = torch.zeros(2, 4, 3)
    seq[0, 2, 0] = float("nan")  # one token of the first sequence
    assert per_sample_accuracy(seq, torch.zeros(2, 4, dtype=torch.long)).isnan().tolist() == [
        True,
        False,
    ]


def test_a_seed_that_overflows_the_output_is_not_credited_and_g5_refuses_it() -> None:
    """Finite weights of 1e20 made the output NaN; the contribution read 100 and the strict G5
    gate fossilized the seed."""
    model = MorphogeneticModel(cnn_host(), ["mid"])
    grow(model, "mid", "conv_heavy", SeedStage.HOLDING, alpha=1.0)
    with torch.no_grad():
        for p in model.seed_parameters("mid"):
            p.fill_(1e20)
    x, y = host_input(model.host, 16), host_target(model.host, 16)
    assert math.isnan(model.measure_contributions([(x, y)])["mid"])
    model.gate_mode = GateMode.STRICT
    with pytest.raises(GateError, match="G5"):
        model.fossilize("mid")


@pytest.mark.parametrize(
    "case, match",
    [
        ("column", r"shaped like the logits"),
        ("short", r"one target row per input .* inputs \(8, .*targets \(3,\)"),
        ("empty", r"at least one sample"),
        ("scalar metric", r"one score per sample, shape \(16,\) .* got \(\)"),
    ],
)
def test_measuring_on_bad_batches_or_with_a_bad_metric_names_the_shapes(case, match) -> None:
    """These ended in torch's view/broadcast errors (or a NaN contribution for an empty batch)."""
    model = MorphogeneticModel(cnn_host(), ["mid"])
    grow(model, "mid", "conv_light", SeedStage.BLENDING)
    x, y = host_input(model.host, 8), host_target(model.host, 8)
    metric = per_sample_accuracy
    if case == "column":
        y = y[:, None]
    elif case == "short":
        y = y[:3]
    elif case == "empty":
        x, y = x[:0], y[:0]
    else:
        metric = lambda out, target: -F.cross_entropy(out, target)  # noqa: E731
    with pytest.raises(ValueError, match=match):
        model.measure_contributions([(x, y)], metric=metric)


def test_reports_are_none_until_measured_then_populated() -> None:
    model = MorphogeneticModel(cnn_host(), ["late", "early", "mid"])  # any order in...
    grow(model, "mid", "conv_light", SeedStage.TRAINING)
    grow(model, "late", "norm", SeedStage.HOLDING, alpha=0.5)
    reports = model.reports()
    assert list(reports) == ["early", "mid", "late"]  # ...ordered_slots order out
    for name in ("mid", "late"):
        r = reports[name]
        assert r.counterfactual_contribution is None
        assert r.seed_gradient_norm_ratio is None and r.gradient_healthy is None
        assert r.shapley_value is None
    assert reports["early"].seed_param_count == 0 and reports["early"].blueprint is None

    x, y = host_input(model.host, 8), host_target(model.host, 8)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    model.record_gradient_stats()
    model.measure_contributions([(x, y)])
    reports = model.reports()
    for name in ("mid", "late"):
        r = reports[name]
        assert r.counterfactual_contribution is not None
        assert r.seed_gradient_norm_ratio is not None and r.seed_gradient_norm_ratio > 0
        assert r.gradient_healthy is True
        assert r.seed_param_count == sum(p.numel() for p in model.seed_parameters(name))
        assert r.host_param_count == sum(p.numel() for p in model.host.parameters())

    # The ratio is the per-parameter RMS gradient ratio, computed here independently.
    host_params = list(model.host.parameters())
    seed_params = model.seed_parameters("mid")

    def rms(params) -> float:
        return math.sqrt(
            sum(p.grad.pow(2).sum().item() for p in params) / sum(p.numel() for p in params)
        )

    assert reports["mid"].seed_gradient_norm_ratio == pytest.approx(
        rms(seed_params) / rms(host_params), rel=1e-5
    )

    # Measurements describe the current stage only: a transition clears them.
    model.gate_mode = model.gate_mode.PERMISSIVE
    model.advance("mid")
    assert model.reports()["mid"].counterfactual_contribution is None
    assert model.reports()["mid"].seed_gradient_norm_ratio is None


def test_gradient_ratio_is_a_moving_average() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    grow(model, "mid", "conv_light", SeedStage.TRAINING)
    slot = model.slot("mid")
    slot.record_gradient_ratio(1.0)
    slot.record_gradient_ratio(2.0)
    assert slot.gradient_ratio == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)


def test_measure_with_no_running_seed_is_empty() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    x, y = host_input(model.host), host_target(model.host)
    assert model.measure_contributions([(x, y)]) == {}
    assert model.shapley_values([(x, y)]) == {}


def test_diverged_training_seed_does_not_poison_measurements() -> None:
    """A TRAINING seed cannot affect the output, so its non-finite output must not leak."""
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    grow(model, "early", "conv_light", SeedStage.HOLDING, alpha=0.5)
    grow(model, "mid", "conv_light", SeedStage.TRAINING)
    with torch.no_grad():
        for p in model.seed_parameters("mid"):
            p.fill_(float("inf"))
    model.eval()
    x, y = host_input(model.host, 8), host_target(model.host, 8)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
        fused = model.fused_forward(x, [{}, {"early": 0.0}, {"mid": 1.0}])
    assert torch.isfinite(fused[:2]).all()
    torch.testing.assert_close(fused[0], model(x), rtol=1e-5, atol=1e-6)
    result = model.measure_contributions([(x, y)], metric=neg_loss)
    assert math.isfinite(result["early"])
    assert math.isnan(result["mid"])  # the probe is honestly unmeasurable, not 0


def test_per_sample_zero_alpha_is_identity_for_non_finite_seed() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    grow(model, "mid", "conv_light", SeedStage.HOLDING, alpha=0.5)
    with torch.no_grad():
        for p in model.seed_parameters("mid"):
            p.fill_(float("nan"))
    slot = model.slot("mid")
    h = torch.randn(4, *slot.spec.shape)
    out = slot(h, torch.tensor([0.0, 0.5, 0.0, 1.0]))
    assert torch.equal(out[0], h[0]) and torch.equal(out[2], h[2])
    assert torch.isnan(out[1]).all()


def test_gradient_ratio_ignores_parameters_without_gradients() -> None:
    model = MorphogeneticModel(cnn_host(), ["mid"])
    grow(model, "mid", "conv_light", SeedStage.TRAINING, blend_mode="gated")
    for name, p in model.host.named_parameters():
        p.requires_grad_(name.startswith("head."))  # a mostly frozen host
    x, y = host_input(model.host, 8), host_target(model.host, 8)
    F.cross_entropy(model(x), y).backward()
    model.record_gradient_stats()

    def rms(params) -> float:
        grads = [p.grad for p in params if p.grad is not None]
        return math.sqrt(sum(g.pow(2).sum().item() for g in grads) / sum(g.numel() for g in grads))

    assert model.slot("mid").gate.linear.weight.grad is None  # the gate is idle in TRAINING
    expected = rms(model.seed_parameters("mid")) / rms(list(model.host.parameters()))
    assert model.reports()["mid"].seed_gradient_norm_ratio == pytest.approx(expected, rel=1e-5)
