"""Hypothesis budgets for the parser property tests and the ``Check`` fuzz run.

Two profiles, chosen with ``HYPOTHESIS_PROFILE``:

``ci`` (default)  few examples per property, no deadline, derandomized: the whole
                  ``tests/unit/test_properties_*.py`` set runs in well under 30 s on 2 cores and
                  a red run is reproducible
``long``          ``LONG_FACTOR`` times the examples, random seeds, for a local deep run:
                  ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/unit -k properties``

A property states its CI budget with :func:`budget`; the profile scales it.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
LONG_FACTOR = 50

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def budget(examples: int, **extra: Any) -> settings:
    """Settings for one property: ``examples`` in CI, ``LONG_FACTOR`` times that with ``long``."""
    profile = "long" if PROFILE == "long" else "ci"
    factor = LONG_FACTOR if profile == "long" else 1
    return settings(settings.get_profile(profile), max_examples=examples * factor, **extra)
