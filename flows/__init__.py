"""Prefect flows: they only compose tasks (see tasks/), never hold logic of their own."""
