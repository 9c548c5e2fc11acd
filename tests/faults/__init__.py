"""The fault suite (see test_fault_recovery.py). A package, so that its conftest is
``faults.conftest`` and never shadows ``tests/conftest.py``, which other tests import."""
