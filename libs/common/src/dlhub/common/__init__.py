"""Shared building blocks of every DLHub service: messages, codec, config, logging, errors, IDs."""
