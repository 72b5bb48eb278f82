"""The search app (floor 3): the worker loop, rank 0's study handle, one trial, its observers."""
