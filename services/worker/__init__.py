"""The worker service: runs servables in a pool of executor processes for the broker's ``servable/*`` tasks."""
