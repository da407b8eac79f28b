"""The `embedq` command: parsing (main.py) and what it prints (output.py)."""
