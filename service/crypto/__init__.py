"""Keys and ciphers for data at rest: data keys, sealed templates and snapshots, revocable
template transforms, the service secret. No storage and no transport here."""
