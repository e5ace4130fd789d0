"""Unit tests: the engine, training, the command line on local files and the runbook against
the catalog. No AWS at all (no moto)."""
