"""The registry: DLHub's REST API (publication, discovery, runs) in front of the broker."""
