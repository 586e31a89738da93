"""The abuse suite: a real ``kiln serve`` process, real sockets, misbehaving clients."""
