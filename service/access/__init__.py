"""Who may call what: API keys (the keys file) and the principal of the current call."""
