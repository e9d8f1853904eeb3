"""CUDA placement: seeds follow the host's device. Marked ``gpu``; skips cleanly without CUDA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from conftest import cnn_host, grow, host_input
from esper.kasmina import MorphogeneticModel, load_model, save_model
from esper.leyline import Action, Op, SeedStage

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _full_float32() -> Iterator[None]:
    """cuDNN convolutions round their inputs to TF32 (10-bit mantissas) by default, ~1e-3
    relative: comparisons with the CPU at 1e-4 need full float32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_model_on_cuda_matches_cpu(tmp_path) -> None:
    model = MorphogeneticModel(cnn_host(), ["early", "mid", "late"])
    grow(model, "mid", "conv_heavy", SeedStage.HOLDING, alpha=0.5)
    model.eval()
    x = host_input(model.host)
    cpu_out = model(x)
    gpu = model.to("cuda")
    grow(gpu, "early", "norm", SeedStage.TRAINING)  # germinated after the move: lands on CUDA
    assert all(p.device.type == "cuda" for p in gpu.seed_parameters("early"))
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu_out, rtol=1e-4, atol=1e-5)
        fused = gpu.fused_forward(x.cuda(), [{}, {"mid": 0.0}])
    torch.testing.assert_close(fused[0].cpu(), cpu_out, rtol=1e-4, atol=1e-5)
    loaded = load_model(save_model(gpu, tmp_path / "m.pt"), map_location="cuda").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x.cuda()), gpu(x.cuda()), rtol=0, atol=0)


def test_grouped_environments_on_cuda_match_sequential(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched path on CUDA: scripted episodes alone and as one grouped chunk agree."""
    from test_grouped import _data, compare_grouped

    compare_grouped(_data(torch.float32), 1e-3, monkeypatch, torch.device("cuda"))


def test_cuda_epoch_loop_does_not_synchronise() -> None:
    """No host synchronisation inside the epoch loop: torch raises on any synchronising call."""
    from esper.tolaria.engine import train_together
    from test_grouped import _data, _episodes

    episodes = _episodes(_data(torch.float32), [], torch.device("cuda"))
    for e in episodes:
        e.build()
    trainers = [e.trainer for e in episodes]
    trainers[0].apply(Action(Op.GERMINATE, slot="mid", blueprint="conv_light"))
    trainers[0].apply(Action(Op.ADVANCE, slot="mid"))  # a TRAINING seed in the grouped pass
    for t in trainers:
        t.stream.next_batch()  # the pass's order moves to the device here, once per pass
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        from esper.tolaria import engine

        original = engine._Tally.result  # the epoch's end reads its totals: allowed there
        engine._Tally.result = lambda self, model, seconds: None  # type: ignore[method-assign]
        try:
            train_together(trainers)
        finally:
            engine._Tally.result = original  # type: ignore[method-assign]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_augmented_batches_across_passes_do_not_synchronise() -> None:
    """A new pass's order and each batch's crop offsets and flips reach the GPU through pinned
    memory, without making the host wait."""
    from esper.data.stream import BatchStream

    x = torch.randn(40, 3, 8, 8, device="cuda")
    stream = BatchStream(x, torch.arange(40, device="cuda"), 16, seed=0, augment=True)
    cpu = BatchStream(x.cpu(), torch.arange(40), 16, seed=0, augment=True)
    expected = [cpu.next_batch() for _ in range(7)]
    first = stream.next_batch()  # CUDA's lazy set-up happens outside the checked part
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [first] + [stream.next_batch() for _ in range(6)]  # three passes of 3 batches
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for (xb, yb), (xc, yc) in zip(batches, expected, strict=True):
        torch.testing.assert_close(xb.cpu(), xc)  # the same batches as on the CPU
        assert torch.equal(yb.cpu(), yc)


def test_policy_step_on_cuda_synchronises_only_to_copy_its_choice() -> None:
    """An acting step on the GPU, its inputs' copy included, runs under torch's sync-debug
    "error" mode; its choices are the CPU's (greedy, the same weights) and valid."""
    import random

    from esper.simic.acting import to_device
    from esper.tamiyo import ActionMasks, encode_observation
    from test_tamiyo_policy import SPACE, check_valid, random_obs, randomized_network

    rng = random.Random(11)
    observations = [random_obs(rng) for _ in range(16)]
    masks = ActionMasks.stack([SPACE.masks(o) for o in observations])
    x = torch.stack([encode_observation(o, True) for o in observations])
    net = randomized_network(seed=1)
    with torch.no_grad():
        expected = net.act(x, masks, net.initial_state(16), deterministic=True).actions
        gpu, cuda = net.cuda(), torch.device("cuda")
        state = gpu.initial_state(16, cuda)
        gpu.act(*to_device(x, masks, cuda), state)  # lazy set-up happens outside the checked part
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            greedy = gpu.act(*to_device(x, masks, cuda), state, deterministic=True)
            sampled = gpu.act(*to_device(x, masks, cuda), state, generator=None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(greedy.actions.cpu(), expected)
    check_valid(sampled.actions.cpu(), masks)
