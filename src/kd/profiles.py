"""Profiles: params.yaml for another dataset or scale, written as what differs from the defaults.

    make profile P=cifar10-cpu                        # params.yaml = defaults + profiles/cifar10-cpu.yaml
    make profile P=default                            # back to the defaults (MNIST)
    PYTHONPATH=src python -m kd.profiles cifar10-cpu --dvc-args   # the same as `dvc exp run -S` arguments

The defaults live in one file, profiles/default.yaml (the documented MNIST params; the
committed params.yaml is that profile applied). Every other profile lists only the keys it
changes, nested as in params.yaml. Applying one always starts from the defaults, never from
the params.yaml it replaces, so applying profile B after profile A gives B, not A + B.

The written params.yaml is validated by the strict schema (kd.params.load_params) before it
replaces the old one, atomically: a bad profile leaves params.yaml as it was.
"""
from __future__ import annotations

import argparse
import io
import shlex
import sys
from pathlib import Path
from typing import Any

from kd.errors import UserError
# parse_yaml through kd.params (YAML as DVC reads it): wherever that module lives, params.py uses it.
from kd.params import _KEYS, PARAMS_FILE, ParamsError, YAMLSyntaxError, load_params, parse_yaml

PROFILES_DIR = "profiles"
DEFAULT = "default"


class ProfileError(UserError, ValueError):
    """A profile that does not exist, does not parse, or names a key params.yaml does not have."""


def profile_path(profile: str | Path, root: Path | None = None) -> Path:
    """A profile's file: a name (`cifar10-cpu`) or a path (`profiles/cifar10-cpu.yaml`)."""
    root = Path.cwd() if root is None else Path(root)
    p = Path(profile)
    if p.suffix not in (".yaml", ".yml"):
        p = Path(PROFILES_DIR) / f"{profile}.yaml"
    return p if p.is_absolute() else root / p


def _defaults_path(path: Path) -> Path:
    """The defaults beside a profile: <its folder>/default.yaml."""
    return path.parent / f"{DEFAULT}.yaml"


def _read(path: Path) -> dict:
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))  # as DVC reads params.yaml
    except FileNotFoundError:
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ProfileError(f"{path}: no such profile (profiles: {', '.join(choices) or 'none'})") from None
    except (YAMLSyntaxError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping of params keys to values")
    return raw


def _flat(node: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def delta(profile: str | Path, root: Path | None = None) -> dict[str, Any]:
    """What a profile changes, as dotted keys (`{'teacher.epochs': 80, ...}`); the defaults: {}.

    Every key must be one of params.yaml's (the schema's): a typo stops with the key named."""
    path = profile_path(profile, root)
    if path.stem == DEFAULT:
        return {}
    changes = _flat(_read(path))
    unknown = [k for k in changes if k not in _KEYS]
    if unknown:
        raise ProfileError(f"{path}: unknown params key(s) {', '.join(unknown)} (typo?); "
                           f"a profile may set only keys of {PARAMS_FILE}")
    groups = [k for k in changes if any(key.startswith(f"{k}.") for key in _KEYS)]
    if groups:  # `teacher: null` or `teacher: {}` would drop the whole section
        raise ProfileError(f"{path}: {', '.join(groups)} holds params keys; set them one by one")
    return changes


def defaults(profile: str | Path = DEFAULT, root: Path | None = None) -> dict:
    return _read(_defaults_path(profile_path(profile, root)))


def load_profile(profile: str | Path, root: Path | None = None) -> dict:
    """The whole params a profile stands for: the defaults with its changes applied, as a
    nested dict, as DVC would read the params.yaml that `apply` writes."""
    params = defaults(profile, root)
    for key, value in delta(profile, root).items():
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    return params


def render(profile: str | Path, root: Path | None = None) -> str:
    """The text of params.yaml for a profile: the defaults file with the profile's values (and
    the profile's own comments on them), headed by the profile's leading comment."""
    path = profile_path(profile, root)
    default_file = _defaults_path(path)
    changes = delta(path)
    text = default_file.read_text(encoding="utf-8")
    how = (f"# Written by `make profile P={path.stem}`: {default_file.parent.name}/{default_file.name}"
           + (f" with {path.parent.name}/{path.name} applied" if changes else "")
           + f".\n# Experiments change it (dvc exp run -S key=value); `make profile P={DEFAULT}` restores the defaults.\n")
    if not changes:
        return how + text
    yaml = _yaml()
    doc, own = yaml.load(text), yaml.load(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        *parents, last = key.split(".")
        node, theirs = doc, own
        for part in parents:
            node, theirs = node[part], theirs[part]
        node[last] = value
        _set_comment(node, last, _comment(theirs, last))
    for section in {key.split(".")[0] for key in changes if "." in key}:
        # A section's remark in the defaults (`teacher:  # Hinton et al.: 784-1200-1200-10`)
        # describes the defaults' values: the profile's own remark, or none, replaces it.
        _set_comment(doc, section, _comment(own, section))
    out = io.StringIO()
    yaml.dump(doc, out)
    header = _leading_comments(path.read_text(encoding="utf-8"))
    body = out.getvalue()
    # The defaults' own header describes the defaults; the profile's replaces it.
    body = body[len(_leading_comments(text)):] if body.startswith(_leading_comments(text)) else body
    return how + header + body


def _leading_comments(text: str) -> str:
    lines = text.splitlines(keepends=True)
    n = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "".join(lines[:n])


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: keeps the comments and the layout of the defaults file
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _comment(node, key) -> str | None:
    token = node.ca.items.get(key, [None] * 4)[2] if hasattr(node, "ca") else None
    return token.value.split("\n", 1)[0].strip() if token is not None else None


def _set_comment(node, key, comment: str | None) -> None:
    """Replace the end-of-line comment of `key` (a default's remark would be wrong for the
    profile's value), keeping the blank lines and comment lines that follow it."""
    items = node.ca.items.get(key)
    token = items[2] if items else None
    if token is not None:
        rest = token.value.split("\n", 1)[1] if "\n" in token.value else ""
        token.value = (f"{comment}\n" if comment else "\n") + rest
        if not comment:
            token.start_mark.column = 0  # no padding before a bare newline
    elif comment:  # aligned with the other remarks of its section
        columns = [t[2].start_mark.column for t in node.ca.items.values() if t and len(t) > 2 and t[2]]
        node.yaml_add_eol_comment(comment, key, column=max(columns, default=len(key) + 4))


def apply(profile: str | Path, root: Path | None = None, out: str | Path = PARAMS_FILE) -> Path:
    """Write `out` (params.yaml) for a profile, validated by the schema first, atomically."""
    root = Path.cwd() if root is None else Path(root)
    target = Path(out) if Path(out).is_absolute() else root / out
    text = render(profile, root)
    tmp = target.with_name(f".{target.name}.profile.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        if parse_yaml(text) != load_profile(profile, root):  # the text says what the profile means
            raise ProfileError(f"{profile}: the written params differ from the profile's (a bug)")
        load_params(tmp)  # the strict schema, as every stage checks it
        tmp.replace(target)
    except ParamsError as e:
        raise ProfileError(f"profile {profile} gives invalid params; {target.name} left as it was:\n"
                           + str(e).split("\n", 1)[-1]) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def dvc_args(profile: str | Path, root: Path | None = None, params_file: str | Path = PARAMS_FILE) -> list[str]:
    """`-S key=value` arguments that turn the current params.yaml into the profile, for `dvc exp run`."""
    import yaml  # PyYAML's flow style spells values as DVC's -S parses them

    root = Path.cwd() if root is None else Path(root)
    current = _flat(parse_yaml((root / params_file).read_text(encoding="utf-8")))
    wanted = _flat(load_profile(profile, root))
    out = []
    for key, value in wanted.items():
        if current.get(key, object()) != value:
            spelled = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
            out += ["-S", f"{key}={spelled}"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="a name under profiles/ (cifar10-cpu, cifar10-gpu, mnist-hinton, default) or a path")
    ap.add_argument("--dvc-args", action="store_true",
                    help="write nothing; print the `-S key=value` arguments of `dvc exp run` that turn "
                         "params.yaml into the profile (shell-quoted)")
    args = ap.parse_args(argv)
    try:
        if args.dvc_args:
            print(shlex.join(dvc_args(args.profile)))
            return 0
        changes = delta(args.profile)
        target = apply(args.profile)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{target.name}: profile {Path(args.profile).stem}" +
          (f", {len(changes)} keys changed from the defaults" if changes else " (the defaults)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
