"""Read configuration files from disk and validate them, reporting every problem at once.

The main file may ``include`` files and directories of fragment files (each may add
authenticators, consumers and routes). Every problem is reported with the file it is in (for
included files) and its path inside that file, e.g. ``routes[2].authn[0].jwt.issuer: required``.
"""

from __future__ import annotations

import hashlib
import os
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


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    msg = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def issues_from_validation(exc: ValidationError, prefix: str = "") -> list[ConfigIssue]:
    """Turn a pydantic ValidationError into ConfigIssues, prefixed with ``prefix`` (a file)."""
    issues = []
    for error in exc.errors(include_url=False, include_input=False):
        where = render_location(error["loc"])
        if prefix:
            where = f"{prefix}: {where}" if where else prefix
        issues.append(ConfigIssue(where, _message(dict(error))))
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
    return data


def _validate(model: type[BaseModel], data: Any, prefix: str, issues: list[ConfigIssue]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues.extend(issues_from_validation(exc, prefix))
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
