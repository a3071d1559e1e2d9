"""Component values and the RFC 9421 signature base (shared by both signature protocols).

Component values (RFC 9421 §2.2): ``@method`` as sent; ``@authority`` = the ``:authority`` (else
``host``) header, lowercased, default port removed; ``@scheme`` lowercased; ``@path`` and
``@query`` (``?`` + raw query, ``?`` alone when there is none) as Envoy forwarded them (after its
path normalization); ``@request-target`` = path + query; ``@target-uri`` = scheme://authority +
request target. Header fields: the value with surrounding whitespace removed; ``host`` falls back
to ``:authority`` (Envoy turns an HTTP/1.1 Host into ``:authority``). Parameters ``sf`` (for
fields known to be structured: the digest, signature and priority fields), ``key`` (a dictionary
member) and ``bs`` are supported; ``req``, ``tr``, ``@query-param`` and ``@status`` are refused as
malformed. Envoy joins repeated header lines with ``,`` rather than RFC 9421's ``, ``, so a covered
field must be sent as a single line.

The ``@signature-params`` line is the canonical RFC 8941 serialization of the parsed inner list
(what every conforming signer produces).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping

from extauthz import sfv
from extauthz.errors import Reason
from extauthz.types import Headers, RequestView

__all__ = ["ComponentError", "derived_value", "sign", "signature_base"]

FIELD_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+\Z")
#: fields whose structured type we know, for the ``sf`` component parameter
_SF_DICTIONARY = frozenset(
    {
        "signature-input", "signature", "accept-signature", "content-digest", "repr-digest",
        "want-content-digest", "want-repr-digest", "priority",
    }
)
_SF_LIST = frozenset({"cache-status", "proxy-status", "accept-ch"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_MALFORMED = Reason.MALFORMED_SIGNATURE


class ComponentError(ValueError):
    """A covered component cannot be derived: unsupported, malformed, or absent."""

    def __init__(self, reason: Reason, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


def _authority(view: RequestView) -> str:
    raw = view.headers.value(":authority") or view.headers.value("host") or view.host
    authority = raw.strip().lower()
    default = _DEFAULT_PORTS.get(view.scheme.lower())
    if default and authority.endswith(":" + default) and not authority.endswith("]"):
        authority = authority[: -len(default) - 1]
    return authority


def request_target(view: RequestView) -> str:
    """Path and query as Envoy forwarded them."""
    path = view.path or "/"
    return f"{path}?{view.raw_query}" if view.raw_query else path


def method(view: RequestView) -> str:
    """The request method as sent."""
    return view.headers.value(":method") or view.method


def field(headers: Headers, name: str) -> str | None:
    """A header field's value without surrounding whitespace (``host``: else ``:authority``)."""
    value = headers.value(name)
    if value is None and name == "host":
        value = headers.value(":authority")
    return None if value is None else value.strip(" \t")


def derived_value(view: RequestView, name: str) -> str:
    """The value of an RFC 9421 derived component (``@method``, ``@path``, ...)."""
    if name == "@method":
        return method(view)
    if name == "@authority":
        return _authority(view)
    if name == "@scheme":
        return view.scheme.lower()
    if name == "@path":
        return view.path or "/"
    if name == "@query":
        return "?" + view.raw_query
    if name == "@request-target":
        return request_target(view)
    if name == "@target-uri":
        return f"{view.scheme.lower()}://{_authority(view)}{request_target(view)}"
    raise ComponentError(_MALFORMED, f"unsupported derived component {name}")


def _validate_field_params(name: str, params: Mapping[str, sfv.BareItem]) -> None:
    """A field component: a valid name, and only ``sf``/``key``/``bs`` as they may be."""
    if not FIELD_NAME.match(name):
        raise ComponentError(_MALFORMED, "invalid component name")
    if set(params) - {"sf", "key", "bs"}:
        raise ComponentError(_MALFORMED, "unsupported component parameter")
    for flag in ("sf", "bs"):
        if flag in params and params[flag] is not True:
            raise ComponentError(_MALFORMED, f"invalid {flag} parameter")
    if "bs" in params and ("sf" in params or "key" in params):
        raise ComponentError(_MALFORMED, "bs cannot be combined with sf or key")


def _byte_sequence(value: str) -> str:
    """``bs``: the field value as an RFC 8941 byte sequence."""
    raw = value.encode("utf-8", "surrogateescape")
    return ":" + base64.b64encode(raw).decode("ascii") + ":"


def _member(name: str, value: str, key: sfv.BareItem) -> str:
    """``key``: one member of a dictionary field, re-serialized."""
    if not isinstance(key, str) or isinstance(key, sfv.Token):
        raise ComponentError(_MALFORMED, "invalid key parameter")
    try:
        members = sfv.parse_dictionary(value)
    except sfv.ParseError:
        raise ComponentError(_MALFORMED, f"{name} is not a dictionary") from None
    if key not in members:
        raise ComponentError(Reason.MISSING_COMPONENT, f"covered {name} member is absent")
    return sfv.serialize_member(members[key])


def _structured(name: str, value: str) -> str:
    """``sf``: a field of known structured type, re-serialized canonically."""
    try:
        if name in _SF_DICTIONARY:
            return sfv.serialize_dictionary(sfv.parse_dictionary(value))
        if name in _SF_LIST:
            return sfv.serialize_list(sfv.parse_list(value))
    except (sfv.ParseError, sfv.SerializeError):
        raise ComponentError(_MALFORMED, f"{name} is not a structured field") from None
    raise ComponentError(_MALFORMED, f"structured type of {name} unknown")


def _field_value(view: RequestView, name: str, params: Mapping[str, sfv.BareItem]) -> str:
    _validate_field_params(name, params)
    value = field(view.headers, name)
    if value is None:
        raise ComponentError(Reason.MISSING_COMPONENT, f"covered header {name} is absent")
    if "bs" in params:
        return _byte_sequence(value)
    if "key" in params:
        return _member(name, value, params["key"])
    if "sf" in params:
        return _structured(name, value)
    return value


def component_value(view: RequestView, component: sfv.Item) -> str:
    """The value of one covered component (a derived one, or a header field)."""
    name = component.value
    if not isinstance(name, str) or isinstance(name, sfv.Token):
        raise ComponentError(_MALFORMED, "component identifiers must be strings")
    if name.startswith("@"):
        if component.params:
            raise ComponentError(_MALFORMED, f"unsupported parameters on {name}")
        return derived_value(view, name)
    return _field_value(view, name, component.params)


def signature_base(view: RequestView, signature_params: sfv.InnerList) -> str:
    """The RFC 9421 §2.5 signature base of ``view`` for the given covered components.

    Raises :class:`ComponentError` when a component is unsupported or a covered header is
    absent. Public so clients and tests can sign requests with exactly the same code.
    """
    lines: list[str] = []
    for component in signature_params.items:
        value = component_value(view, component)
        if "\n" in value or "\r" in value:
            raise ComponentError(_MALFORMED, "component value contains a newline")
        lines.append(f"{sfv.serialize_item(component)}: {value}")
    lines.append(f'"@signature-params": {sfv.serialize_inner_list(signature_params)}')
    return "\n".join(lines)


def sign(secret: bytes, base: str) -> bytes:
    """HMAC-SHA256 of a signature base (or signing string)."""
    return hmac.new(secret, base.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
