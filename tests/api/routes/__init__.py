"""One test module per router of ``studypub/api/routes``."""
