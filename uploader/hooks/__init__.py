"""Blocking hooks: the application's say before an upload exists and before it is
terminated (``pre-create``, ``pre-terminate``)."""
