"""The contract producers and workers share: names (tasks, queues, Redis keys), messages, the text check."""
