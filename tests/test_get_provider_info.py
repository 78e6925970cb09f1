"""The provider's metadata as Airflow reads it: in a fresh interpreter, before Airflow is imported."""

from __future__ import annotations

import json
import subprocess
import sys

# Airflow reads every provider's info while it loads its configuration, which happens on its first
# import: a module that imported Airflow here would be half-initialised when Airflow asks for it.
FIRST_IMPORT = """
import json, sys
from airflow_capillary_audit.get_provider_info import get_provider_info
info = get_provider_info()
print(json.dumps({"info": info, "airflow": sorted(m for m in sys.modules if m.split(".")[0] == "airflow")}))
"""


def test_provider_info_is_read_in_a_fresh_interpreter_without_importing_airflow():
    result = subprocess.run([sys.executable, "-c", FIRST_IMPORT], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    read = json.loads(result.stdout)
    assert read["airflow"] == []
    [connection_type] = read["info"]["connection-types"]
    assert connection_type["connection-type"] == "capillary"
    assert connection_type["hook-class-name"] == "airflow_capillary_audit.hooks.capillary.CapillaryHook"
    assert "requests_per_minute" in connection_type["conn-fields"]


def test_airflow_imported_first_reads_the_same_info():
    # Airflow adds the documentation URL of its own; everything else is what the package says.
    code = (
        "import json, airflow\n"
        "from airflow.providers_manager import ProvidersManager\n"
        "info = ProvidersManager().providers['airflow-capillary-audit'].data\n"
        "info.pop('documentation-url', None)\n"
        "from airflow_capillary_audit.get_provider_info import get_provider_info\n"
        "print(json.dumps(info == get_provider_info()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "true"
