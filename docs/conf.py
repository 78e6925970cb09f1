"""Sphinx configuration of the airflow-capillary-audit documentation (``make docs``)."""

from __future__ import annotations

import os
from importlib.metadata import version as installed_version
from pathlib import Path

# Autodoc imports the package (installed in .venv), and so Airflow: give it a home in the build
# folder, not ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", str(Path(__file__).resolve().parent / "_build" / "airflow-home"))
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
nitpick_ignore_regex = [
    (r"py:.*", r"(datetime|collections|typing|requests|tenacity|airflow)\..*"),
    # Types of other packages named in annotations by their bare names (imported for type checking).
    (r"py:class", r"(OperatorLineage|ObjectStoragePath|Connection|PokeReturnValue)"),
    # Private names of this package (a TypeVar in a signature) have no page, by design.
    (r"py:.*", r"airflow_capillary_audit\.(\w+\.)*_\w+"),
]

autosummary_generate = True
# Each name is documented once, in the module that defines it: a module's __all__ also lists names it
# re-exports (operators.audit_logs re-exports the table load), which would be documented twice.
autosummary_ignore_module_all = True
autodoc_default_options = {
    "members": True,
    "ignore-module-all": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_class_signature = "separated"

myst_heading_anchors = 3
# Source pages for this package only: a default such as time.monotonic would list the stdlib module.
viewcode_follow_imported_members = False

html_theme = "furo"
html_title = f"airflow-capillary-audit {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
pygments_style = "friendly"
