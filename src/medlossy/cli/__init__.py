"""The ``medlossy`` command line."""
