"""Wrappers of the private torch and nequip functions nequip-moe needs.

nequip and torch have no public equivalent of these; each wrapper names the version it was
checked on, and ``tests/test_compat.py`` fails loudly when an upgrade changes one. Nothing
else in ``nequip_moe`` reaches into a private name of another package.

- ``torch_api``: light (torch only), imported by packaged graph modules
- ``nequip_api``: nequip's training and workflow internals (heavy imports)
"""
