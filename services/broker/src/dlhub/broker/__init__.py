"""The broker: routes tasks from clients to registered handlers by topic, with heartbeats and deadlines."""
