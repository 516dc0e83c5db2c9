"""`meshctl`, the control plane's command line (see cli/main.py)."""
