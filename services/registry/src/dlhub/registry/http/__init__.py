"""The REST front door: the aiohttp application, its routes, request parsing and response writing, the
typed contract (``contract``) the OpenAPI document is generated from, and one handler module per resource.

Handler modules never import each other; what they share lives in ``request``, ``response``, ``paths``
and ``contract``.
"""
