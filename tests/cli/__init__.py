"""Tests of ``studypub/cli``: one module per command module, each command as a user runs it."""
