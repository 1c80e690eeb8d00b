"""Stores: where results, provenance, failures and run logs live (see ``docs/stores.md``)."""

from orca.stores.base import Store, StoreOptions, live_rows
from orca.stores.delta import DeltaStore, default_store
from orca.stores.memory import MemoryStore

__all__ = ["DeltaStore", "MemoryStore", "Store", "StoreOptions", "default_store", "live_rows"]
