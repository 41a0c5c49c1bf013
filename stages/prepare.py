"""Stage prepare: raw data (mirror, download or your image folder) -> train / val / test
uint8 tensors, and what a model needs to know of them (data/prepared/meta.json)."""
from kd.datasets import DATASETS, FOLDER, ImageSpec, builtin_spec, check_split, split_train_val
from kd.files import save_torch, scratch_dir, staged_dir, write_json
from kd.image_folder import channel_stats, read_folder
from kd.params import resolve_input, resolve_mirror
from kd.paths import PREPARED_META, RAW, split_file
from kd_pipeline.stage import stage

with stage("prepare") as run, scratch_dir(PREPARED_META.parent.parent) as scratch:
    p = run.params.data
    # Everything is decoded and checked before the new raw data is swapped in
    # and any split written: a bad image shows here, and leaves the old data alone.
    with staged_dir(RAW / p.dataset) as tmp:
        if p.dataset == FOLDER:
            # Decoded into files in `scratch`: a set larger than RAM is prepared from the page cache.
            found = read_folder(resolve_input(p.path), p.image_size, val_size=p.val_size, test_size=p.test_size,
                                seed=p.split_seed, max_train=p.max_train, scratch=scratch)
            splits = found["splits"]
            # Normalisation from the training split only: nothing of val or test leaks into it.
            spec = ImageSpec(tuple(found["classes"]), (3, p.image_size, p.image_size), *map(tuple, channel_stats(
                splits["train"][0])))
            print(f"decoded {found['images']} images in {found['seconds']:.1f}s "
                  f"({found['images'] / found['seconds']:.0f} images/s); classes {list(spec.classes)}; "
                  f"splits from {'the folder' if 'all' not in found['layout'] else 'a stratified, seeded split'}")
            write_json(tmp / "source.json", {"source": str(p.path), "layout": found["layout"]})
        else:
            raw = DATASETS[p.dataset].fetch(resolve_mirror(p.mirror), tmp)
            # max_train applies before indexing: a lazily decoded dataset decodes only what is kept.
            train, val = split_train_val(*raw["train"], p.val_size, p.split_seed, p.max_train)
            x_test, y_test = raw["test"]
            splits = {"train": train, "val": val, "test": (x_test[:], y_test)}
            spec = builtin_spec(p.dataset)
        for split, (x, y) in splits.items():
            check_split(split, x, y, spec, empty_ok=split == "val" and p.val_size == 0)
    for split, (x, y) in splits.items():
        # torch.save writes a view's whole storage: a split sliced from all the images would hold them all.
        x = x.clone() if x.untyped_storage().nbytes() > x.nbytes else x
        save_torch({"x": x, "y": y}, split_file(split), stream=True)
        print(f"{split}: {len(y)} images, {tuple(x.shape[1:])}")
    write_json(PREPARED_META, {**spec.to_json(), "dataset": p.dataset,
                               "images": {split: len(y) for split, (_, y) in splits.items()}})
