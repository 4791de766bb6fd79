"""Integrations with the gateways and SDKs that sit where the spend happens.

Each is an optional extra: ``pip install 'finops[litellm]'`` for :mod:`finops.integrations.litellm`.
"""
