"""Sphinx configuration of the airflow-capillary-audit documentation (``make docs``)."""

from __future__ import annotations

import os
import sys
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Autodoc imports the package, and so Airflow: give it a home of its own, not ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="capillary-docs-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

project = "airflow-capillary-audit"
author = "airflow-capillary-audit developers"
copyright = "airflow-capillary-audit developers; Apache License 2.0"
release = installed_version("airflow-capillary-audit")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples"]
templates_path = ["_templates"]

# Every reference to this package's own names must resolve. Names of other packages (Airflow,
# requests, the standard library) have no inventory here: the build needs no network.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"^(?!airflow_capillary_audit\b).*")]

autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_class_signature = "separated"

myst_heading_anchors = 3

html_theme = "furo"
html_title = f"airflow-capillary-audit {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
pygments_style = "friendly"
