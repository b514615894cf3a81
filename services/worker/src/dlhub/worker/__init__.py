"""The worker service: runs servables in a pool of executor processes for ``servable/*`` tasks."""
