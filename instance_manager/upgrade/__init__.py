"""Online upgrade of the instance manager: builds (build.py) and their installation (install.py)."""
