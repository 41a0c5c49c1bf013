"""Model checkpoints that rebuild themselves: arch, what the data looks like, weights."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kd.datasets import ImageSpec, builtin_spec
from kd.errors import UserError
from kd.files import load_torch, save_torch
from kd.locked_inputs import check_input
from kd.models import build_model, head


class InitWeightsError(UserError, ValueError):
    """teacher.init is missing, not plain weights, or for another architecture."""


def new_model(arch: str, spec: ImageSpec | str, **kwargs) -> nn.Module:
    """`arch` for data described by `spec` (or by a built-in dataset's name)."""
    spec = builtin_spec(spec) if isinstance(spec, str) else spec
    return build_model(arch, num_classes=spec.num_classes, in_shape=spec.shape, mean=spec.mean,
                       std=spec.std, **kwargs)


def save_model(path: str | Path, model: nn.Module, *, arch: str, dataset: str, spec: ImageSpec | None = None,
               **kwargs) -> None:
    spec = spec or builtin_spec(dataset)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"arch": arch, "dataset": dataset, "spec": spec.to_json(), "kwargs": kwargs,
                "state_dict": state}, path)


def checkpoint_spec(ckpt: dict) -> ImageSpec:
    # Checkpoints from before specs were kept: only the built-in datasets existed.
    return ImageSpec.from_json(ckpt["spec"]) if "spec" in ckpt else builtin_spec(ckpt["dataset"])


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    check_input(path)
    ckpt = load_torch(path)
    model = new_model(ckpt["arch"], checkpoint_spec(ckpt), **ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def _plain_state_dict(blob, path: Path) -> dict[str, torch.Tensor]:
    """The weights of a file: a state dict (torchvision's downloads, `torch.save(model.state_dict())`),
    or one of this pipeline's checkpoints; DDP's `module.` prefix dropped."""
    if isinstance(blob, dict) and "state_dict" in blob and isinstance(blob["state_dict"], dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise InitWeightsError(f"teacher.init: {path} is not a state dict (a mapping of names to tensors)")
    if all(k.startswith("1.") or k in ("0.mean", "0.std") for k in blob):  # our Sequential(Normalize, body)
        blob = {k[2:]: v for k, v in blob.items() if k.startswith("1.")}
    return {k.removeprefix("module."): v for k, v in blob.items()}


def load_init(model: nn.Module, path: str | Path, arch: str) -> str | None:
    """Load teacher.init into `model`'s body (after its Normalize). A classifier head whose
    class count differs is left new; returns a sentence saying so, or None."""
    path = Path(path)
    if not path.is_file():
        raise InitWeightsError(f"teacher.init: {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle of code, a truncated file, not a torch file at all
        raise InitWeightsError(f"teacher.init: {path} is not a plain weights file: torch.load(weights_only=True) "
                               f"refused it ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    weights = _plain_state_dict(blob, path)
    body = model[1]
    own = body.state_dict()
    layer = head(body)
    head_keys = {k for k in own if k.rsplit(".", 1)[0] == layer}
    replaced = []
    for k in [*own, *(k for k in weights if k not in own)]:  # the model's order: the first difference
        if k not in weights:
            raise InitWeightsError(f"teacher.init: {path} does not fit {arch}: it has no {k!r}")
        if k not in own:
            raise InitWeightsError(f"teacher.init: {path} does not fit {arch}: unexpected key {k!r}")
        if weights[k].shape != own[k].shape:
            if k in head_keys and weights[k].shape[1:] == own[k].shape[1:]:
                replaced.append(k)
                continue
            raise InitWeightsError(f"teacher.init: {path} does not fit {arch}: {k!r} has shape "
                                   f"{list(weights[k].shape)} in the file, {list(own[k].shape)} in the model")
    body.load_state_dict({k: (own[k] if k in replaced else v) for k, v in weights.items()})
    if not replaced:
        return None
    was = weights[replaced[0]].shape[0]
    return (f"teacher.init: the head {layer!r} has {was} classes in {path}, the data has {own[replaced[0]].shape[0]}: "
            "replaced by a new one, trained from scratch")
