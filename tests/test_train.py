import pytest
import torch

from kd.checkpoint import new_model
from kd.device import resolve_precision
from kd.losses import LOSSES
from kd.params import TrainParams
from kd.loop import DivergedError, TensorBatches, fit
from kd.resume import ResumeState

CPU = torch.device("cpu")


def cfg(**kw):
    base = dict(arch="mlp800", epochs=3, batch_size=32, lr=0.05, dropout=0.2, jitter=1)
    return TrainParams(**{**base, **kw})


def run(toy_images, c, resume=None, stop_after=None):
    torch.manual_seed(0)
    x, y = toy_images
    model = new_model(c.arch, "mnist", dropout=c.dropout)

    def on_epoch(row):
        if stop_after and row["epoch"] == stop_after:
            raise KeyboardInterrupt  # stands in for a crash after the epoch's checkpoint

    history = fit(model, TensorBatches(x, y, c.batch_size, seed=0, jitter=c.jitter), (x[:50], y[:50]),
                  LOSSES["ce"], c, device=CPU, precision=resolve_precision(c.precision, CPU), resume=resume,
                  on_epoch=on_epoch)
    return model, history


def test_training_learns_the_toy_task(toy_images):
    _, history = run(toy_images, cfg(epochs=4))
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.9


def test_resumed_run_ends_identical_to_an_uninterrupted_one(toy_images, tmp_path):
    c = cfg(epochs=3)
    full, full_hist = run(toy_images, c)
    state = ResumeState("t", "k", root=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(toy_images, c, resume=state, stop_after=2)
    assert state.path.exists()
    resumed, hist = run(toy_images, c, resume=state)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["val_acc"] for h in hist] == [h["val_acc"] for h in full_hist]


def test_divergence_names_epoch_and_batch_and_writes_no_state(toy_images, tmp_path):
    state = ResumeState("t", "k", root=tmp_path)
    with pytest.raises(DivergedError, match=r"loss is (nan|inf) at epoch 1, batch \d+"):
        run(toy_images, cfg(lr=1e30, optimizer="sgd"), resume=state)
    assert not state.path.exists()


def test_max_norm_bounds_every_hidden_unit_and_leaves_the_classifier(toy_images):
    def norms(model):
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        return [layer.weight.norm(dim=1) for layer in layers]

    free, _ = run(toy_images, cfg(epochs=1, lr=0.5))
    assert min(n.max().item() for n in norms(free)) > 0.3  # so the bound below binds on every layer
    bound, history = run(toy_images, cfg(epochs=1, lr=0.5, max_norm=0.3))
    *hidden, out = norms(bound)
    assert all(n.max().item() <= 0.3 + 1e-5 for n in hidden)
    assert out.max().item() > 0.3  # the output layer is not a hidden unit
    assert history[-1]["val_acc"] > 0.5


def test_without_a_validation_split_val_metrics_are_none(toy_images):
    x, y = toy_images
    c = cfg(epochs=1)
    model = new_model(c.arch, "mnist", dropout=c.dropout)
    history = fit(model, TensorBatches(x, y, c.batch_size, seed=0), (x[:0], y[:0]), LOSSES["ce"], c,
                  device=CPU, precision="fp32")
    assert history[0]["val_acc"] is None and history[0]["val_loss"] is None
    assert history[0]["train_acc"] > 0
