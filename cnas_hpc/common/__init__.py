"""The ground floor's pure helpers: user errors, storage URLs, stored attribute names, objectives.

Nothing here imports another part of cnas-hpc (see ARCHITECTURE.md): every floor above may use it.
"""
