"""The test suite: a package, so that its folders mirror ``studypub/`` and import their plain
helpers as ``tests.support.<module>``."""
