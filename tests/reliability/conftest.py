"""The reliability tests' stand-in: its partial-rate faults draw from a seeded RNG."""

from __future__ import annotations

import pytest

from airflow_capillary_audit.sandbox import CapillaryStandIn
from tests.helpers import LOGIN, PASSWORD, org_dataset

FAULT_SEED = 20261125


@pytest.fixture
def api():
    """Start a stand-in whose partial-rate faults draw from a seeded RNG, so runs repeat."""
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=org_dataset(seed=7), seed=FAULT_SEED) as server:
        yield server
