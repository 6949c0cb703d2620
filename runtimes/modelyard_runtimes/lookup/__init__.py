"""The lookup runtime: ``implementation: modelyard_runtimes.lookup.LookupRuntime``."""

from modelyard_runtimes.lookup.runtime import LookupOptions, LookupRuntime, NoPredictions

__all__ = ["LookupOptions", "LookupRuntime", "NoPredictions"]
