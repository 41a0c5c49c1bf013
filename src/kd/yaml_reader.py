"""YAML exactly as DVC reads params.yaml and dvc.yaml, so what trains is what DVC records."""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any


class YAMLSyntaxError(ValueError):
    """Text that is not valid YAML (or has a duplicate key)."""


def parse_yaml(text: str) -> Any:
    """YAML as DVC parses params.yaml and dvc.yaml (dvc.utils.serialize.parse_yaml:
    ruamel.yaml, typ="safe", YAML 1.2). PyYAML speaks YAML 1.1, where `seed: 010`
    is 8 (octal) while DVC records 10, `flip: yes` is true while DVC records the
    string "yes", and of a duplicate key the last one silently wins."""
    # A stage reads dvc.yaml several times, and ruamel's pure-Python parser
    # takes about 0.2 s for it; callers may mutate what they get, hence the copy.
    return copy.deepcopy(_parse(text))


@lru_cache(maxsize=8)
def _parse(text: str) -> Any:
    from ruamel.yaml import YAML  # ~30 ms, paid only where a file is parsed
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(text)
    except YAMLError as e:
        # ruamel's advice on turning the duplicate-key check off does not apply here.
        msg = str(e).split("\n\nTo suppress this check")[0].replace('in "<unicode string>", ', "at ")
        raise YAMLSyntaxError(msg) from None
