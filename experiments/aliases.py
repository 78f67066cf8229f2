"""Deprecated setting names on the command line (with a warning) and in stored configs.

The renames themselves are listed once, in :data:`protocol.groups.RENAMED_GROUPS`
(``reliability`` -> ``aggregation``) and :data:`protocol.groups.RENAMED_VALUES`
(``model.name``: ``logreg`` -> ``softmax``). :func:`upgrade_argv` rewrites Hydra overrides
before Hydra parses them (``python -m experiments.run``, sweeps included), so
``reliability=krum``, ``reliability.scorer=fltrust``, ``+reliability.decay=0.8`` and
``model=logreg`` keep working, each with a message naming the new form;
:func:`upgrade_config` does the same, silently, to a run's stored
``config.yaml`` when it is resumed. Flat run configs (checkpoints) are upgraded by
:func:`protocol.settings.upgrade_run_config`, and ``RunSettings`` itself renames values.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from protocol.groups import RENAMED_GROUPS, RENAMED_VALUES

_OVERRIDE = re.compile(r"(?P<prefix>\+\+|\+|~)?(?P<key>[A-Za-z_][\w.@/-]*)(?P<rest>=.*)?", re.S)
_FLAGS_WITH_VALUE = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
    | {"--config-dir", "-cd", "--experimental-rerun"}
)


def _rename_value(value: str, old: str, new: str) -> str:
    """``value`` with the word ``old`` replaced (also inside ``a,b`` and ``choice(a,b)``)."""
    return re.sub(rf"(?<![\w.-]){re.escape(old)}(?![\w.-])", new, value)


def upgrade_override(override: str) -> str:
    """One Hydra override under the current names (unchanged when it uses none deprecated)."""
    match = _OVERRIDE.fullmatch(override)
    if match is None:
        return override
    prefix, key, rest = match.group("prefix") or "", match.group("key"), match.group("rest") or ""
    head, sep, tail = _split_head(key)
    if head in RENAMED_GROUPS:
        key = RENAMED_GROUPS[head] + sep + tail
    for setting, renamed in RENAMED_VALUES.items():
        if key not in (setting, setting.split(".")[0]) or not rest:
            continue
        for old, new in renamed.items():
            rest = "=" + _rename_value(rest[1:], old, new)
    return prefix + key + rest


def _split_head(key: str) -> tuple[str, str, str]:
    """``reliability.scorer`` -> ``("reliability", ".", "scorer")``; ``model`` -> ``("model",)``."""
    parts = re.split(r"([.@])", key, maxsplit=1)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (key, "", "")


def upgrade_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` (``sys.argv``: program first) with every override under the current names.

    Each deprecated override is reported on stderr, naming its replacement.
    """
    args = list(argv[:1])
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("-") or argv[i - 1] in _FLAGS_WITH_VALUE:
            args.append(arg)
            continue
        upgraded = upgrade_override(arg)
        if upgraded != arg:
            print(f"warning: {arg} is deprecated: use {upgraded}", file=sys.stderr, flush=True)
        args.append(upgraded)
    return args


def upgrade_config(config: Mapping[Any, Any]) -> dict[Any, Any]:
    """A stored composed config (a run's ``config.yaml``) under the current names, silently.

    A run started before a rename stays resumable: its ``reliability:`` is the
    ``aggregation:`` it would have today, its ``model.name: logreg`` is ``softmax``.
    """
    out = dict(config)
    for old, new in RENAMED_GROUPS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    for setting, renamed in RENAMED_VALUES.items():
        group, _, name = setting.rpartition(".")
        node = out.get(group)
        if isinstance(node, dict) and isinstance(node.get(name), str) and node[name] in renamed:
            out[group] = node | {name: renamed[node[name]]}
    return out
