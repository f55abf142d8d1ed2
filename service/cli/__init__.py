"""The ``facegate`` command: ``main`` builds the parser; one module per command group."""
