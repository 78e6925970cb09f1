"""The repository's scripts; a package so that ``python -m scripts.system_test`` runs from the root."""
