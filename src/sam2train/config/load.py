"""Loading a config: YAML with `base:` composition, dotted `key=value` overrides, validation at load.

`load_config(path, overrides)` is the only entry point. It checks every key against the dataclasses (an unknown key
is an error naming it and the closest valid key), lets OmegaConf convert and type-check values, and then runs the
`__post_init__` checks of each section (impossible values are errors naming the key).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sam2train.config.recipes import recipe_names, shipped_recipe
from sam2train.config.sections import Config, closest
from sam2train.errors import ConfigError


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        ftype = f.default_factory() if callable(f.default_factory) else None  # type: ignore[misc]
        if is_dataclass(ftype):
            keys.extend(_valid_keys(type(ftype), key + "."))
    return keys


VALID_KEYS: tuple[str, ...] = tuple(_valid_keys(Config))


def _check_keys(tree: dict, source: str, prefix: str = "") -> None:
    """Raise on the first key that is not a Config field, naming it and the closest valid key."""
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if full not in VALID_KEYS:
            while isinstance(value, dict) and value:  # name the whole dotted key a user wrote
                key, value = next(iter(value.items()))
                full = f"{full}.{key}"
            raise ConfigError(f"{source}: unknown config key '{full}'.{closest(full, VALID_KEYS)}")
        if isinstance(value, dict) and any(k.startswith(full + ".") for k in VALID_KEYS):
            _check_keys(value, source, full + ".")


def resolve_config_path(name: str | Path, relative_to: Path | None = None, what: str = "config file") -> Path:
    """The YAML file a `--config` value or a `base:` entry names: a path (relative to the folder
    `relative_to`, else to the working directory) when that file exists, else a shipped recipe by name
    (`davis` or `davis.yaml`, see `config.recipes`). ConfigError naming the value and the shipped recipes
    otherwise."""
    path = Path(name).expanduser()
    if relative_to is not None:
        path = relative_to / path
    if path.is_file():
        return path
    shipped = shipped_recipe(str(name))
    if shipped is not None:
        return shipped
    hint = closest(Path(str(name)).stem, recipe_names())
    raise ConfigError(f"{what} not found: {path} (shipped recipes: {', '.join(recipe_names())}).{hint}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[dict, str]]:
    """The YAML at `path` preceded by its `base:` chain: each a path relative to the file, or the name of a
    shipped recipe (`base: davis`)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    bases = tree.pop("base", None) or []
    out: list[tuple[dict, str]] = []
    for base in [bases] if isinstance(bases, str) else bases:
        found = resolve_config_path(str(base), path.parent, what=f"{path}: base '{base}'")
        out.extend(_read_yaml(found, seen + (path,)))
    out.append((tree, str(path)))
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    value = yaml.safe_load(raw) if raw.strip() else None
    return key, value


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _merge(base: Any, layer: dict, source: str) -> Any:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).split("\n")[0]
        raise ConfigError(f"{source}: config key '{key}': {msg}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from dataclass defaults, the YAML chain at `path` (a file, or a shipped recipe's
    name such as `davis`) and `key=value` overrides.

    Raises ConfigError naming the file and the key for unknown keys, wrong types and impossible values.
    """
    cfg = OmegaConf.structured(Config)
    layers = _read_yaml(resolve_config_path(path)) if path is not None else []
    for item in overrides:
        key, value = _parse_override(item)
        layers.append((_nest(key, value), f"override '{item}'"))
    for tree, source in layers:
        _check_keys(tree, source)
        cfg = _merge(cfg, tree, source)
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {str(exc).splitlines()[0]}") from None


def config_from_dict(tree: dict) -> Config:
    """A Config from a plain nested dict (e.g. the one stored in a checkpoint), validated like a YAML file."""
    _check_keys(tree, "checkpoint config")
    cfg = _merge(OmegaConf.structured(Config), tree, "checkpoint config")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def to_dict(cfg: Config) -> dict:
    """The resolved config as a plain dict (for checkpoints, hparams and YAML)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
