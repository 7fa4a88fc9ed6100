"""Shared pytest setup: hardware markers skip cleanly where the hardware is absent."""

import jax
import pytest


def pytest_collection_modifyitems(config, items):
  backend = jax.default_backend()
  for item in items:
    if 'gpu' in item.keywords and backend != 'gpu':
      item.add_marker(pytest.mark.skip(reason=f'needs a GPU; this backend is {backend}'))
    if 'tpu' in item.keywords and backend != 'tpu':
      item.add_marker(pytest.mark.skip(reason=f'needs a TPU; this backend is {backend}'))
