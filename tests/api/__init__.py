"""Tests of ``studypub/api``: the HTTP app, its routes (``routes/``), outages, the schema."""
