"""YAML exactly as DVC reads params.yaml and dvc.yaml, so what trains is what DVC records."""
from __future__ import annotations

from typing import Any


class YAMLSyntaxError(ValueError):
    """Text that is not valid YAML (or has a duplicate key)."""


def parse_yaml(text: str) -> Any:
    """YAML as DVC parses params.yaml and dvc.yaml (dvc.utils.serialize.parse_yaml:
    ruamel.yaml, typ="safe", YAML 1.2). PyYAML speaks YAML 1.1, where `seed: 010`
    is 8 (octal) while DVC records 10, `flip: yes` is true while DVC records the
    string "yes", and of a duplicate key the last one silently wins."""
    from ruamel.yaml import YAML  # ~30 ms, paid only where a file is parsed
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(text)
    except YAMLError as e:
        # ruamel's advice on turning the duplicate-key check off does not apply here.
        msg = str(e).split("\n\nTo suppress this check")[0].replace('in "<unicode string>", ', "at ")
        raise YAMLSyntaxError(msg) from None
