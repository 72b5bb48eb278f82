"""The fidelity app (floor 3): measure how well the label-free score ranks cells like accuracy."""
