"""The version switches: every name the package takes from Airflow resolves, and no other."""

from __future__ import annotations

import pytest

from airflow_capillary_audit import _compat


@pytest.mark.parametrize("name", ["BaseHook", "BaseOperator", "ObjectStoragePath", "has_fs", "mask_secret"])
def test_every_exported_name_resolves(name):
    assert callable(getattr(_compat, name))


def test_any_other_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match=r"^module 'airflow_capillary_audit._compat' has no attribute 'nothing'$"):
        _compat.nothing  # noqa: B018
