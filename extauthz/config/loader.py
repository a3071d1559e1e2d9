"""Read configuration files from disk and validate them, reporting every problem at once.

The main file may ``include`` files and directories of fragment files (each may add
authenticators, consumers and routes). Every problem is reported with the file it is in (for
included files) and its path inside that file, e.g. ``routes[2].authn[0].jwt.issuer: required``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from extauthz.config.schema import ConfigFile, FragmentFile
from extauthz.errors import ConfigError, ConfigIssue

#: Refuse absurdly large configuration files instead of reading them into memory.
MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Fragment:
    """One validated included file and the name it is reported under."""

    source: str
    data: FragmentFile


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """The validated main file, its fragments, and a digest of every byte that was read."""

    path: Path
    main: ConfigFile
    fragments: tuple[Fragment, ...]
    digest: str
    #: every file and included directory that was read (what hot reload watches)
    files: tuple[Path, ...] = ()


def render_location(loc: Sequence[int | str]) -> str:
    """Render a pydantic error location as ``routes[2].authn[0].jwt.issuer``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "":  # an empty key would vanish from the location: quote it
            out += '[""]'
        else:
            out += f".{part}" if out else str(part)
    return out


#: pydantic's error types in the project's words (the rest: pydantic's message, reworded below)
_PLAIN: dict[str, str] = {
    "missing": "is required",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
}

#: pydantic's sentence openings -> ours ("Input should be a valid URL" -> "must be a valid URL")
_REWORD = (("Input should be ", "must be "), ("Input should have ", "must have "),
           ("List should have ", "must have "), ("String should have ", "must have "),
           ("String should match ", "must match "), ("Value should have ", "must have "),
           ("Dictionary should have ", "must have "))


def _unwrap(annotation: Any, index: bool) -> Any:
    """The type inside ``X | None`` (and, for an index step, inside ``list[X]``/``dict[K, X]``)."""
    for _ in range(4):
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        single_union = origin in (typing.Union, types.UnionType) and len(args) == 1
        if single_union or origin is typing.Annotated:
            annotation = args[0]
        elif index and origin in (list, tuple, dict) and args:
            annotation, index = args[-1], False
        else:
            break
    return annotation


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class the (mapping) location ``loc`` points into, or None if it cannot tell."""
    current: Any = root
    pending_index = False
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type)
                                         and issubclass(current, BaseModel)):
            if isinstance(part, int) or pending_index:
                current = _unwrap(current, index=True)
                pending_index = False
                continue
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation, index=False)
        pending_index = typing.get_origin(current) is dict
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unknown_key(root: type[BaseModel] | None, loc: Sequence[int | str]) -> str:
    """``unknown key``, with the closest known key or, for an authenticator, the known kinds."""
    key = str(loc[-1]) if loc else ""
    model = _model_at(root, loc[:-1]) if root is not None else None
    if model is None:
        return "unknown key"
    known = [name for name in model.model_fields if name != "ref"]
    if model.__name__ == "AuthnSpec":
        return (f"unknown authenticator kind `{key}`; known kinds: {', '.join(known)} "
                "(or the name of an entry of `authenticators`)")
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean `{close[0]}`?"
    return f"unknown key (known: {', '.join(model.model_fields)})"


def _message(error: dict[str, Any], root: type[BaseModel] | None = None) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return _unknown_key(root, error.get("loc", ()))
    if kind in _PLAIN:
        return _PLAIN[kind]
    msg = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    for theirs, ours in _REWORD:
        if msg.startswith(theirs):
            return ours + msg[len(theirs):]
    return msg


def issues_from_validation(exc: ValidationError, prefix: str = "",
                           model: type[BaseModel] | None = None) -> list[ConfigIssue]:
    """Turn a pydantic ValidationError into ConfigIssues, prefixed with ``prefix`` (a file).

    ``model`` (the validated class) lets an unknown key name the closest known one.
    """
    issues = []
    for error in exc.errors(include_url=False, include_input=False):
        where = render_location(error["loc"])
        if prefix:
            where = f"{prefix}: {where}" if where else prefix
        issues.append(ConfigIssue(where, _message(dict(error), model)))
    return issues


#: PyYAML's safe loader on libyaml when the wheel has it (the PyPI wheels do): same constructors
#: and resolvers as ``yaml.SafeLoader``, ~15x faster and with far less garbage — 100 000 API keys
#: took 28 s and left a fragmented 660 MiB heap with the pure-Python parser
#: (docs/performance.md, scaling sweep).
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path, label: str, issues: list[ConfigIssue], hasher: Any) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            issues.append(ConfigIssue(label, f"file is larger than {MAX_FILE_BYTES} bytes"))
            return None
        raw = path.read_bytes()
    except OSError as exc:
        issues.append(ConfigIssue(label, f"cannot read file: {exc.strerror or exc}"))
        return None
    hasher.update(label.encode() + b"\0" + raw + b"\0")
    try:
        data = yaml.load(raw, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader, see above)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        tab_line = _tab_line(raw, mark.line if mark else None)
        if tab_line is not None:
            issues.append(ConfigIssue(label, f"tab characters are not allowed in YAML "
                                             f"(line {tab_line}); indent with spaces"))
            return None
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        issues.append(ConfigIssue(label, f"not valid YAML{where}"))
        return None
    except RecursionError:
        issues.append(ConfigIssue(label, "not valid YAML (nested too deeply)"))
        return None
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors: an integer over 4300 digits, an impossible date, ...
        issues.append(ConfigIssue(label, f"not valid YAML (a value cannot be read: {exc})"))
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        issues.append(ConfigIssue(label, "the top level must be a mapping"))
        return None
    foreign = _foreign_resource(data)
    if foreign is not None:
        issues.append(ConfigIssue(label, foreign))
        return None
    return data


def _tab_line(raw: bytes, error_line: int | None) -> int | None:
    """The 1-based line of the tab that made YAML fail: on the error's line, else the first tab
    in a line's indentation (a tab inside a quoted value is legal YAML and is not blamed)."""
    lines = raw.split(b"\n")
    if error_line is not None and error_line < len(lines) and b"\t" in lines[error_line]:
        return error_line + 1
    for number, line in enumerate(lines, 1):
        if b"\t" in line[: len(line) - len(line.lstrip(b" \t"))]:
            return number
    return None


def _foreign_resource(data: dict[Any, Any]) -> str | None:
    """A hint when the file is a Kubernetes resource (an Authorino AuthConfig above all)."""
    api_version, kind = str(data.get("apiVersion", "")), str(data.get("kind", ""))
    if not api_version and not kind:
        return None
    if api_version.startswith("authorino.kuadrant.io/") or kind == "AuthConfig":
        return (f"this is an Authorino {kind or 'resource'} ({api_version}), not an extauthz "
                "configuration: extauthz reads a plain YAML file (no apiVersion/kind); "
                "docs/configuration.md 'Coming from Authorino' maps AuthConfig fields to "
                "authenticators, routes and rules")
    return (f"this is a Kubernetes resource ({api_version} {kind}), not an extauthz "
            "configuration: put the configuration file itself in a ConfigMap and pass its path "
            "with --config (docs/kubernetes.md)")


def _validate(model: type[BaseModel], data: Any, prefix: str, issues: list[ConfigIssue]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues.extend(issues_from_validation(exc, prefix, model))
        return None


def _expand_includes(base: Path, entries: list[str], issues: list[ConfigIssue]) -> list[Path]:
    files: list[Path] = []
    for index, entry in enumerate(entries):
        target = Path(os.path.normpath(base / entry))
        try:
            if target.is_dir():
                found = sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml"))
                files.extend(found)
            elif target.is_file():
                files.append(target)
            else:
                issues.append(
                    ConfigIssue(f"include[{index}]", f"no such file or directory: {entry}"))
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte, no permission, ...
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "invalid path"
            issues.append(ConfigIssue(f"include[{index}]", f"cannot read: {reason}"))
    return files


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate the configuration at ``path`` and everything it includes.

    Raises :class:`ConfigError` listing every problem found.
    """
    # Absolute but *not* symlink-resolved: Kubernetes mounts are symlinks into a timestamped
    # directory, and relative includes must resolve against the path the operator wrote.
    main_path = Path(os.path.normpath(Path(path).absolute()))
    issues: list[ConfigIssue] = []
    hasher = hashlib.sha256()
    raw = _read_yaml(main_path, "", issues, hasher)
    if raw is None:
        # Say which file could not be read: the empty label would read as a bare message.
        raise ConfigError([ConfigIssue(str(path), i.message) for i in issues], files=(main_path,))
    main = _validate(ConfigFile, raw, "", issues)
    fragments: list[Fragment] = []
    include = raw.get("include") if isinstance(raw.get("include"), list) else []
    base = main_path.parent
    included = _expand_includes(base, [str(e) for e in include], issues)
    for file in included:
        label = _relative_label(file, base)
        data = _read_yaml(file, label, issues, hasher)
        if data is None:
            continue
        fragment = _validate(FragmentFile, data, label, issues)
        if fragment is not None:
            fragments.append(Fragment(label, fragment))
    watched = [main_path, *included]
    # Include directories (a new fragment file changes them) and, after a refused attempt,
    # includes that do not exist yet (their creation is then noticed).
    watched.extend(Path(os.path.normpath(base / str(e))) for e in include
                   if issues or (base / str(e)).is_dir())
    if issues or main is None:
        raise ConfigError(issues, files=tuple(dict.fromkeys(watched)))
    return LoadedConfig(main_path, main, tuple(fragments), hasher.hexdigest(), tuple(watched))


def _relative_label(file: Path, base: Path) -> str:
    try:
        return str(file.relative_to(base))
    except ValueError:
        return str(file)
