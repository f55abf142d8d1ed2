"""Offline passes over a whole data directory, run with the server stopped: data-key
rotation, revocable-template re-issue, integrity checks."""
