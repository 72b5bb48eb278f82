"""The evaluation app (floor 3): train planned cells from scratch (or probe them), record them."""
