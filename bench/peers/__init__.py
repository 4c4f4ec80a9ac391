"""Other servers that bench/load.py compares Gazer with, each in a venv of its own under var/bench-venvs."""
