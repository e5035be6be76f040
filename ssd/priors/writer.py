"""The prior-config writer: a YAML config file whose `priors:` section holds a prior set in shape
form. Used for every prior set the library produces (`ssd-priors optimize`,
`train.auto_priors`, the export of learned priors), so they all read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ssd.config import ConfigError, PriorsConfig, load_config, merge_values, parse_overrides
from ssd.priors.generator import shape_entry, split_entry

Entry = tuple[float, ...]  # a shape-form entry: (w, h) or (w, h, dx, dy)

_RATIO_KEYS = ("min_sizes", "max_sizes", "aspect_ratios", "shapes")


def rounded_entry(entry: Sequence[float], ndigits: int = 2) -> Entry:
    """A shape-form entry with w, h rounded to `ndigits` (0.01 px by default; offsets kept to
    1e-6 of a step)."""
    (w, h), (dx, dy) = split_entry(entry)
    return shape_entry((round(w, ndigits), round(h, ndigits)), (round(dx, 6), round(dy, 6)))


def priors_section(
    priors: PriorsConfig,
    base_section: Mapping[str, Any] | None = None,
    *,
    ndigits: int | None = 2,
    keep_ratio_keys: bool = False,
) -> dict[str, Any]:
    """The YAML `priors:` mapping of a shape-form config: the base section's other keys
    (image_size, feature maps, steps, clip, learnable ...) plus `shapes`, ratio-form keys dropped
    unless `keep_ratio_keys` (they are unused once `shapes` is set). `ndigits`: w, h rounded to
    that many digits (None: written exactly)."""
    if priors.shapes is None:
        raise ValueError("priors_section needs a shape-form PriorsConfig (shapes set)")
    dropped = () if keep_ratio_keys else _RATIO_KEYS  # a kept `shapes` key keeps its place
    out = {k: v for k, v in dict(base_section or {}).items() if k not in dropped}
    out["shapes"] = [
        [list(shape_entry(*split_entry(e)) if ndigits is None else rounded_entry(e, ndigits)) for e in level]
        for level in priors.shapes
    ]
    return out


class _ConfigDumper(yaml.SafeDumper):
    """Block style, except lists of scalars (a shape [w, h], a class list) stay on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: Any) -> yaml.Node:
    flow = all(not isinstance(v, (list, tuple, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)
_ConfigDumper.add_representer(tuple, _represent_list)


def _read_values(base: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, Mapping):
        return dict(base)
    p = Path(base)
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from exc
    return dict(loaded or {})


def write_priors_config(
    base: str | Path | Mapping[str, Any] | None,
    priors: PriorsConfig,
    out_path: str | Path,
    *,
    overrides: Sequence[str] = (),
    updates: Mapping[str, Any] | None = None,
    header: str = "",
    ndigits: int | None = 2,
    keep_ratio_keys: bool = False,
) -> Path:
    """Write `out_path`: the base config (a YAML path, or its values as a mapping) plus
    `overrides` (`key.path=value`) and `updates` (a nested mapping), with its `priors:` section
    replaced by the shape form of `priors` (w, h rounded to `ndigits`; None writes them exactly;
    `keep_ratio_keys`: see `priors_section`).
    The file is loaded back with `ssd.load_config` before returning (raises ConfigError if it
    does not load)."""
    values = merge_values(_read_values(base), parse_overrides(overrides))
    values = merge_values(values, updates or {})
    section = values.get("priors")
    values["priors"] = priors_section(priors, section, ndigits=ndigits, keep_ratio_keys=keep_ratio_keys)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" if line else "#" for line in header.strip().splitlines()] if header else []
    text = yaml.dump(values, Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True, width=100)
    out.write_text(("\n".join(lines) + "\n" if lines else "") + text, encoding="utf-8")
    load_config(out)  # fail here, not at training time
    return out
