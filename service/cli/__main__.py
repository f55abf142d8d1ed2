"""``python -m service.cli``: the ``facegate`` command."""

from service.cli.main import main

raise SystemExit(main())
