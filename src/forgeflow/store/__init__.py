"""Workspace state: the home directory, the SQL store and encrypted secrets."""
