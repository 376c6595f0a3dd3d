"""Accounts keep Django's User; roles are groups (see roles.py)."""
