"""Declarative templates: build JSON (AuthZEN subject/resource/..., lookup URLs and bodies)
from the request, compiled once at load.

A template is literal JSON in which:

* a string that is exactly one reference, ``"{{ identity.claims.roles }}"``, becomes that value
  with its type (a list stays a list; an absent value becomes ``null``);
* a string with references inside text, ``"doc:{{ params.doc_id }}"``, becomes text (an absent
  value there is an error: the rule fails rather than asking about ``"doc:"``);
* a mapping ``{cel: "expression"}`` becomes the value of the CEL expression (any type).

References are dotted paths over the same variables CEL sees (:mod:`extauthz.authz.cel`):
``request`` (method, path, host, scheme, source, headers, query), ``identity`` (subject, method,
methods, consumer, scopes, claims), ``route`` (name), ``params`` and ``metadata`` (the route's
lookups). Unknown roots are configuration errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_REF = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
ROOTS = frozenset({"request", "identity", "route", "params", "metadata"})


class TemplateError(ValueError):
    """A template that cannot be compiled (configuration time)."""


class RenderError(Exception):
    """A template could not be rendered for this request (a missing value, a CEL error)."""


def lookup_path(data: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``data`` (None when absent)."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


#: a compiled template: (variables, encode) -> JSON value. ``encode`` transforms text
#: substituted into a string (percent-encoding for URLs); whole values are never encoded.
Render = Callable[[Mapping[str, Any], Callable[[str], str]], Any]


def _plain_text(value: Any, path: str) -> str:
    if value is None:
        raise RenderError(f"{path} is absent")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise RenderError(f"{path} is not a scalar")


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template and the variables it uses."""

    render_fn: Render
    #: the roots and costly members it reads (decides what the variables must hold)
    names: frozenset[str]

    def render(self, data: Mapping[str, Any], encode: Callable[[str], str] = str) -> Any:
        """The JSON value for one request; raises :class:`RenderError`."""
        return self.render_fn(data, encode)


def compile_template(spec: Any, where: str = "") -> Template:
    """Compile ``spec``; :class:`TemplateError` names the path inside it that is wrong."""
    names: set[str] = set()
    fn = _compile(spec, where, names)
    return Template(fn, frozenset(names))


def _note(path: str, names: set[str], where: str) -> None:
    root = path.split(".", 1)[0]
    if root not in ROOTS:
        raise TemplateError(f"{where}: unknown variable {root!r} in '{{{{ {path} }}}}' "
                            f"(known: {', '.join(sorted(ROOTS))})")
    names.add(root)
    names.update(p for p in path.split(".")[1:2] if p in ("headers", "query", "claims"))


def _compile(spec: Any, where: str, names: set[str]) -> Render:
    if isinstance(spec, str):
        return _compile_string(spec, where, names)
    if isinstance(spec, Mapping):
        if set(spec) == {"cel"}:
            return _compile_cel(spec["cel"], where, names)
        items = [(str(k), _compile(v, f"{where}.{k}", names)) for k, v in spec.items()]
        return lambda data, enc: {k: f(data, enc) for k, f in items}
    if isinstance(spec, list):
        parts = [_compile(v, f"{where}[{i}]", names) for i, v in enumerate(spec)]
        return lambda data, enc: [f(data, enc) for f in parts]
    if spec is None or isinstance(spec, bool | int | float):
        return lambda data, enc: spec
    raise TemplateError(f"{where}: unsupported value {type(spec).__name__}")


def _compile_string(text: str, where: str, names: set[str]) -> Render:
    refs = list(_REF.finditer(text))
    if not refs:
        if "{{" in text or "}}" in text:
            raise TemplateError(f"{where}: malformed reference in {text!r}")
        return lambda data, enc: text
    for m in refs:
        _note(m.group(1), names, where)
    whole = refs[0]
    if len(refs) == 1 and whole.start() == 0 and whole.end() == len(text):
        path = whole.group(1)
        return lambda data, enc: lookup_path(data, path)
    pieces: list[str | tuple[str]] = []
    position = 0
    for m in refs:
        pieces.append(text[position:m.start()])
        pieces.append((m.group(1),))
        position = m.end()
    pieces.append(text[position:])
    if any(isinstance(p, str) and ("{{" in p or "}}" in p) for p in pieces):
        raise TemplateError(f"{where}: malformed reference in {text!r}")

    def render(data: Mapping[str, Any], enc: Callable[[str], str]) -> str:
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
            else:
                out.append(enc(_plain_text(lookup_path(data, piece[0]), piece[0])))
        return "".join(out)

    return render


def _compile_cel(source: Any, where: str, names: set[str]) -> Render:
    from extauthz.authz.cel import CelCompileError, compile_value

    if not isinstance(source, str) or not source:
        raise TemplateError(f"{where}.cel: an expression (a non-empty string)")
    try:
        program = compile_value(source)
    except CelCompileError as exc:
        raise TemplateError(f"{where}.cel: {exc}") from None
    names.update(program.names)

    def render(data: Mapping[str, Any], enc: Callable[[str], str]) -> Any:
        from extauthz.authz.cel import CelEvalError

        try:
            return program.evaluate_value(data)
        except CelEvalError as exc:
            raise RenderError(f"CEL: {exc}") from None

    return render
