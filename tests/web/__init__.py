"""Tests of ``studypub/web``: the viewer page in a real browser."""
