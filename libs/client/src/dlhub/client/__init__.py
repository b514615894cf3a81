"""DLHub Python SDK and CLI.

>>> from dlhub.client import DLHubClient
>>> client = DLHubClient()              # DLHUB_URL / DLHUB_TOKEN or $DLHUB_HOME/client.json
>>> client.run("alice/iris_rf", [[5.1, 3.5, 1.4, 0.2]])
"""

from dlhub.client.sdk import DLHubClient, TaskFailed, TaskHandle

__all__ = ["DLHubClient", "TaskFailed", "TaskHandle"]
