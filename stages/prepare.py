"""Stage prepare: raw data (mirror or download) -> train / val / test uint8 tensors."""
from kd.datasets import DATASETS, check_split, split_train_val
from kd.files import save_torch, staged_dir
from kd.params import resolve_mirror
from kd.paths import RAW, split_file
from kd_runs.stage import stage

with stage("prepare") as run:
    p = run.params.data
    info = DATASETS[p.dataset]
    # Everything is decoded and checked before the new raw data is swapped in
    # and any split written: the JPEG mirror is decoded lazily, so a bad image
    # shows only here, and a failure leaves the old raw data alone.
    with staged_dir(RAW / p.dataset) as tmp:
        raw = info.fetch(resolve_mirror(p.mirror), tmp)
        # max_train applies before indexing: a lazily decoded dataset decodes only what is kept.
        train, val = split_train_val(*raw["train"], p.val_size, p.split_seed, p.max_train)
        x_test, y_test = raw["test"]
        splits = {"train": train, "val": val, "test": (x_test[:], y_test)}
        for split, (x, y) in splits.items():
            check_split(split, x, y, info)
    for split, (x, y) in splits.items():
        save_torch({"x": x, "y": y}, split_file(split))
        print(f"{split}: {len(y)} images, {tuple(x.shape[1:])}")
