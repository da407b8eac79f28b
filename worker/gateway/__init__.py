"""The HTTP gateway: OpenAI- and TEI-compatible embeddings, async jobs and search, onto embedq's queues.

Nothing is imported here, so that ``embedq --help`` does not load the web stack; the app is
``worker.gateway.app.create_app`` and the command ``worker.gateway.serve.run_serve``.
"""
