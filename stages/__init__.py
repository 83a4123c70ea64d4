"""The stage scripts of dvc.yaml, run as `python -m stages.<name>` from the repository root."""
