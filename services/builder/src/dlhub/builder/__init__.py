"""Builder service: installs uploaded packages as immutable versions of the servable store."""
