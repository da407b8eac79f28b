"""The one-command local run: an embedded Redis-protocol broker and local worker processes."""
