"""The fault suite (see test_fault_recovery.py): ``tests.faults``, a package of its own with its
own conftest, beside the folders that mirror ``studypub/``."""
