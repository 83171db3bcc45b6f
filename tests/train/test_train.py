import numpy as np
import pytest
import torch

from diffattr.config import validate_config
from diffattr.data import load_digits
from diffattr.data.space import to_model_space
from diffattr.diffusion import Schedule
from diffattr.models import build_unet
from diffattr.train import TrainingDiverged, loop, model_spec, train


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    raw = load_digits(["1", "7"])
    return to_model_space(raw.images[:64])


def cfg(**kw):
    return validate_config({"experiment": "t", "train": {"batch_size": 16, "lr": 2e-3, "ema_decay": 0.9, **kw}})["train"]


def test_loss_falls(digits):
    _, hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(), seed=0, steps=150, progress=False)
    losses = np.array([h[1] for h in hist])
    assert len(hist) == 150
    assert losses[-30:].mean() < 0.6 * losses[:10].mean(), (losses[:10].mean(), losses[-30:].mean())


def test_kill_and_resume_equals_uninterrupted(digits, tmp_path):
    c = cfg(checkpoint_every=4)
    ref, ref_hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=5, steps=10, progress=False)

    class Killed(Exception):
        pass

    def kill_at_7(step, loss):
        if step == 7:
            raise Killed

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=5, steps=10, checkpoint=ckpt, on_step=kill_at_7, progress=False)
    assert torch.load(ckpt, weights_only=True)["step"] == 4  # plain tensors and values: no code runs on load
    steps_run = []
    resumed, hist = train(
        build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=5, steps=10, checkpoint=ckpt,
        on_step=lambda s, _: steps_run.append(s), progress=False,
    )
    assert steps_run == [5, 6, 7, 8, 9, 10]  # resumed, not restarted
    assert hist == ref_hist
    for (n, p), q in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    # a checkpoint made with other arguments is ignored (restart, not a wrong resume)
    _, other = train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=6, steps=10, checkpoint=ckpt, progress=False)
    assert other[0][0] == 1


class _Killed(Exception):
    pass


def _kill_at(n):
    def on_step(step, loss):
        if step == n:
            raise _Killed
    return on_step


def test_stale_checkpoint_after_the_data_changed_is_discarded(digits, tmp_path, caplog):
    """Regression: killed at step 4 of 10 on digits 1/7; the config switches to two other classes (same count);
    the rerun must start from step 1 (old weights not resumed) and equal an uninterrupted run on the new data."""
    c = cfg(checkpoint_every=2)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(_Killed):
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=5, steps=10, checkpoint=ckpt,
              on_step=_kill_at(5), progress=False)
    assert ckpt.is_file()
    other = to_model_space(load_digits(["2", "3"]).images[:64])
    assert other.shape == digits.shape
    steps_run = []
    got, hist = train(build_unet("unet_tiny"), other, Schedule.linear(), c, seed=5, steps=10, checkpoint=ckpt,
                      on_step=lambda s, _: steps_run.append(s), progress=False)
    assert steps_run[0] == 1 and "discarded checkpoint" in caplog.text
    ref, ref_hist = train(build_unet("unet_tiny"), other, Schedule.linear(), c, seed=5, steps=10, progress=False)
    assert hist == ref_hist
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("change", ["schedule", "model", "optimizer"])
def test_checkpoint_for_another_schedule_or_model_is_discarded(digits, tmp_path, change, monkeypatch):
    c = cfg(checkpoint_every=2)
    if change == "optimizer":  # a checkpoint of the optimizer implementation before (a Python loop, not fused)
        monkeypatch.setattr(loop, "OPTIMIZER", "AdamW")
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(_Killed):
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=1, steps=6, checkpoint=ckpt,
              on_step=_kill_at(3), progress=False)
    monkeypatch.undo()
    schedule = Schedule.linear(500) if change == "schedule" else Schedule.linear()
    model = build_unet("unet_tiny", dropout=0.0) if change == "model" else build_unet("unet_tiny")
    steps_run = []
    train(model, digits, schedule, c, seed=1, steps=6, checkpoint=ckpt, on_step=lambda s, _: steps_run.append(s),
          progress=False)
    assert steps_run == [1, 2, 3, 4, 5, 6]


class _Payload:
    """Unpickling this would run code (touch a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["pickled_object", "truncated"])
def test_unreadable_checkpoint_is_moved_aside_and_runs_no_code(digits, tmp_path, caplog, kind):
    c = cfg(checkpoint_every=2)
    ckpt, marker = tmp_path / "ckpt.pt", tmp_path / "code_ran"
    with pytest.raises(_Killed):
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=2, steps=6, checkpoint=ckpt,
              on_step=_kill_at(3), progress=False)
    if kind == "pickled_object":
        state = torch.load(ckpt, weights_only=True)
        torch.save({**state, "extra": _Payload(marker)}, ckpt)
    else:
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    steps_run = []
    train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=2, steps=6, checkpoint=ckpt,
          on_step=lambda s, _: steps_run.append(s), progress=False)
    assert steps_run[0] == 1 and not marker.exists()
    assert (tmp_path / "ckpt.pt.unreadable").is_file() and "is unreadable" in caplog.text


def test_same_seed_same_model_other_seed_differs(digits):
    a, _ = train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(), seed=1, steps=3, progress=False)
    b, _ = train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(), seed=1, steps=3, progress=False)
    c, _ = train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(), seed=2, steps=3, progress=False)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_non_finite_loss_names_the_step(digits):
    bad = digits.clone()
    bad[:] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"non-finite training loss nan at step 1/5 .*train.lr=0.002 .*train.precision=fp32"):
        train(build_unet("unet_tiny"), bad, Schedule.linear(), cfg(), seed=0, steps=5, progress=False)


def test_model_spec():
    c = cfg(steps=100, subset_steps=50, seed=3)
    seeds = np.array([[11, 12], [21, 22]])
    assert model_spec("full", c, None).steps == 100 and model_spec("full", c, None).seed == 3
    s = model_spec("subset1_seed0", c, seeds)
    assert (s.subset, s.seed_index, s.seed, s.steps) == (1, 0, 21, 50)
    with pytest.raises(ValueError, match="outside the subsets file"):
        model_spec("subset2_seed0", c, seeds)
    with pytest.raises(ValueError, match="invalid model id"):
        model_spec("subset_1", c, seeds)
    d = model_spec("downweight1_seed1", c, seeds)  # all data, subset 1's seed 1, the full model's steps
    assert (d.subset, d.seed_index, d.seed, d.steps, d.downweighted) == (1, 1, 22, 100, True)
    assert not s.downweighted


def _params(model):
    return torch.cat([p.flatten() for p in model.parameters()])


def test_unit_weights_equal_no_weights_and_zero_weight_examples_do_not_matter(digits):
    """Per-example loss weights (paper Figs. 13/14): weight 1 everywhere is the plain loss, bit for bit; an example
    of weight 0 has no influence on the run, whatever its image."""
    plain, plain_hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(), seed=4, steps=4, progress=False)
    ones, ones_hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(), seed=4, steps=4, progress=False,
                            weights=torch.ones(len(digits)))
    assert ones_hist == plain_hist and torch.equal(_params(plain), _params(ones))
    w = torch.ones(len(digits))
    w[::2] = 0.0
    a, _ = train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(), seed=4, steps=4, progress=False, weights=w)
    other = digits.clone()
    other[::2] = -other[::2]  # change only the weight-0 images
    b, _ = train(build_unet("unet_tiny"), other, Schedule.linear(), cfg(), seed=4, steps=4, progress=False, weights=w)
    torch.testing.assert_close(_params(a), _params(b), rtol=0, atol=0)
    assert not torch.equal(_params(a), _params(ones))
    half, _ = train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(), seed=4, steps=4, progress=False,
                    weights=torch.where(w > 0, 1.0, 0.5))
    assert not torch.equal(_params(half), _params(a)) and not torch.equal(_params(half), _params(ones))


def test_weighted_run_resumes_only_with_the_same_weights(digits, tmp_path):
    c = cfg(checkpoint_every=2)
    w = torch.where(torch.arange(len(digits)) % 2 == 0, 1.0, 0.5)
    ref, ref_hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=7, steps=6, progress=False,
                          weights=w)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(_Killed):
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=7, steps=6, checkpoint=ckpt,
              on_step=_kill_at(5), progress=False, weights=w)
    steps_run = []
    resumed, hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=7, steps=6, checkpoint=ckpt,
                          on_step=lambda s, _: steps_run.append(s), progress=False, weights=w)
    assert steps_run == [5, 6] and hist == ref_hist and torch.equal(_params(ref), _params(resumed))
    # the checkpoint of a run with other weights is not resumed
    ckpt.unlink()  # (the finished run leaves its last checkpoint)
    with pytest.raises(_Killed):
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=7, steps=6, checkpoint=ckpt,
              on_step=_kill_at(3), progress=False, weights=w)
    steps_run.clear()
    train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=7, steps=6, checkpoint=ckpt,
          on_step=lambda s, _: steps_run.append(s), progress=False, weights=torch.ones(len(digits)))
    assert steps_run[0] == 1


def test_bf16_compiled_training_learns(digits):
    """bf16 autocast and torch.compile together (the GPU recipe) still learn. torch.compile runs with its
    ``aot_eager`` backend on a CPU (the same graph capture and AOT autograd as inductor, without minutes of C++
    compilation on two cores); ``tests/test_gpu.py`` runs inductor on a GPU."""
    options = cfg(precision="bf16", compile="aot_eager", lr=3e-3)
    _, hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), options, seed=0, steps=80, progress=False)
    losses = np.array([h[1] for h in hist])
    assert losses[-20:].mean() < 0.7 * losses[:10].mean(), (losses[:10].mean(), losses[-20:].mean())


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"compile": "aot_eager"},
                                     {"precision": "bf16", "compile": "aot_eager"}],
                         ids=["bf16", "compile", "bf16+compile"])
def test_bf16_and_compiled_training_resume_exactly(digits, tmp_path, options):
    """A bf16 or compiled run killed after a checkpoint resumes to exactly the weights of an uninterrupted one."""
    c = cfg(checkpoint_every=4, **options)
    ref, ref_hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=5, steps=8, progress=False)

    def kill_at_6(step, loss):
        if step == 6:
            raise _Killed

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(_Killed):
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=5, steps=8, checkpoint=ckpt,
              on_step=kill_at_6, progress=False)
    resumed, hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=5, steps=8, checkpoint=ckpt,
                          progress=False)
    assert hist == ref_hist
    for (n, p), q in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def test_cuda_graph_training_marks_every_step_and_compiles_in_that_mode(digits, monkeypatch):
    """train.compile: reduce-overhead compiles the U-Net in torch.compile's CUDA-graph mode and tells the graph
    trees where each step begins (a replay reuses its output buffers). On a CPU the mode would be minutes of C++
    compilation without graphs, so torch.compile is recorded here and the model runs eagerly; tests/test_gpu.py
    trains with the graphs on a GPU."""
    calls, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(compile="reduce-overhead"), seed=0, steps=5,
          progress=False)
    assert calls == [{"mode": "reduce-overhead"}] and len(marks) == 5
    calls.clear()
    marks.clear()
    train(build_unet("unet_tiny"), digits, Schedule.linear(), cfg(compile=True), seed=0, steps=5, progress=False)
    assert calls == [{"backend": "inductor"}] and marks == []


def test_compile_option_must_be_a_backend_or_mode():
    with pytest.raises(ValueError, match="compile"):
        cfg(compile="max-autotune-no-such-mode")


def test_losses_read_in_batches_give_the_same_run_and_name_the_first_bad_step(digits, tmp_path, monkeypatch):
    """On a GPU the loop reads the losses every SETTLE_EVERY steps (and at checkpoints) instead of every step, so
    that the device queue runs ahead: the same history, weights and checkpoint as reading them every step, and a
    non-finite loss is reported at its own step, not where it was read. Run here by treating the CPU as async."""
    c = cfg(checkpoint_every=100)
    ref, ref_hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=2, steps=10, progress=False)
    w = torch.ones(len(digits))
    w[5] = float("nan")  # the loss turns non-finite at the first step whose batch draws example 5
    with pytest.raises(TrainingDiverged) as every_step:
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=2, steps=40, progress=False, weights=w)

    monkeypatch.setattr(loop, "_async_device", lambda device: True)
    monkeypatch.setattr(loop, "SETTLE_EVERY", 4)
    ckpt = tmp_path / "ckpt.pt"
    got, hist = train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=2, steps=10, checkpoint=ckpt,
                      progress=False)
    assert hist == ref_hist and torch.load(ckpt, weights_only=True)["history"] == ref_hist
    for (n, p), q in zip(ref.state_dict().items(), got.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    step = int(str(every_step.value).split(" at step ")[1].split("/")[0])
    monkeypatch.setattr(loop, "SETTLE_EVERY", step + 3)  # read 3 steps after the bad one (or at the end, step 40)
    with pytest.raises(TrainingDiverged) as batched:
        train(build_unet("unet_tiny"), digits, Schedule.linear(), c, seed=2, steps=40, progress=False, weights=w)
    assert 1 < step < 40 and str(batched.value) == str(every_step.value)
